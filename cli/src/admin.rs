//! `status`, `ring`, `decommission`, `repair`: the operations commands.

use std::io::Write as _;
use std::time::Duration;

use dynamo_client::Client;

use crate::{output, Format};

/// Arguments of `decommission`.
#[derive(Debug, clap::Args)]
pub struct DecommissionArgs {
    /// The node to remove (default: the endpoint node).
    pub node: Option<String>,
    /// Remove the node even if it does not answer (crashed, its machine lost): the other
    /// nodes take its partitions over from the surviving replicas. Writes that only it held
    /// are lost (none with W >= 2). A node that answers is decommissioned normally anyway.
    #[arg(long)]
    pub force: bool,
    /// Wait until the node has left, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub wait_timeout_s: u64,
}

pub async fn status(client: &Client, format: Format) -> Result<(), String> {
    let out = client.status().await.map_err(|e| e.to_string())?;
    print!("{}", output::status(&out, format));
    Ok(())
}

pub async fn ring(client: &Client, format: Format) -> Result<(), String> {
    let out = client.ring().await.map_err(|e| e.to_string())?;
    print!("{}", output::ring(&out, format));
    Ok(())
}

pub async fn repair(client: &Client, partition: Option<u32>, format: Format) -> Result<(), String> {
    let out = client.repair(partition).await.map_err(|e| e.to_string())?;
    print!("{}", output::repair(&out, format));
    Ok(())
}

pub async fn decommission(client: &Client, args: DecommissionArgs) -> Result<(), String> {
    let out = client
        .decommission(args.node.as_deref().unwrap_or(""), args.force)
        .await
        .map_err(|e| e.to_string())?;
    println!("{}: {}", out.node_id, out.state);
    if !args.wait {
        return Ok(());
    }
    // A progress bar of the partitions still to move, redrawn on each status.
    let node = out.node_id;
    let mut most = 0u32;
    let draw = |status: &dynamo_client::ClusterStatus| {
        let state = status.membership_of(&node).map_or("absent", |s| s.as_str());
        most = most.max(status.pending_partitions);
        let done = most - status.pending_partitions.min(most);
        eprint!("\r{}", output::progress_bar(done, most, &format!("{node} {state}")));
        let _ = std::io::stderr().flush();
    };
    let result =
        client.wait_until_left(&node, Duration::from_secs(args.wait_timeout_s), draw).await;
    eprintln!();
    result.map_err(|e| e.to_string())?;
    println!("{node}: left; it holds no partitions any more and can be stopped");
    Ok(())
}
