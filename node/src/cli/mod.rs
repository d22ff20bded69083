//! `dynamoctl`: the command-line client. Reads (`get`, `status`, `ring`) print text for people
//! or `-o json` for programs; write commands print the new context on one line.

pub mod bench;
pub mod dev;
pub mod output;

use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::client::Client;

/// Command-line interface of dynamoctl.
#[derive(Debug, Parser)]
#[command(name = "dynamoctl", version, about = "Talk to a Dynamo cluster")]
pub struct Cli {
    /// A node's client endpoint, HOST:PORT.
    #[arg(long, global = true, env = "DYNAMO_ENDPOINT", default_value = "127.0.0.1:7070")]
    pub endpoint: String,
    /// How long to wait for an answer, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of read commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a value; prints the new context.
    Put {
        key: String,
        value: String,
        /// Context from a previous get or put of this key (base64); omit for a blind write,
        /// which becomes a sibling of whatever the key holds.
        #[arg(long, default_value = "")]
        context: String,
        /// Write quorum for this request (1..=N).
        #[arg(long)]
        w: Option<u32>,
    },
    /// Read every concurrent value of a key and its context.
    Get {
        key: String,
        /// Read quorum for this request (1..=N).
        #[arg(long)]
        r: Option<u32>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Delete what a context covers (use the context of a get).
    Delete {
        key: String,
        #[arg(long, default_value = "")]
        context: String,
        #[arg(long)]
        w: Option<u32>,
    },
    /// Every node with its zone, address and reachability, as the endpoint node sees it.
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Partitions per node.
    Ring {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Decommission a node: it streams its partitions to their new owners, then reports "left"
    /// and can be stopped.
    Decommission {
        /// The node to remove (default: the endpoint node).
        node: Option<String>,
        /// Remove the node even if it does not answer (crashed, its machine lost): the other
        /// nodes take its partitions over from the surviving replicas. Writes that only it held
        /// are lost (none with W >= 2). A node that answers is decommissioned normally anyway.
        #[arg(long)]
        force: bool,
        /// Wait until the node has left, showing progress.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        wait_timeout_s: u64,
    },
    /// Run anti-entropy now between the endpoint node and the other replicas of its partitions.
    Repair {
        /// Only this partition (default: every partition the node replicates).
        #[arg(long)]
        partition: Option<u32>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Load generator: YCSB-style workloads; throughput, latency percentiles and errors.
    Bench(bench::BenchArgs),
    /// Local development cluster.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start a local cluster of real dynamo-node processes in the foreground; Ctrl-C stops it.
    Up(dev::DevUpArgs),
}

/// Polls the cluster until `node` reports "left", drawing a progress bar of the partitions
/// still to move.
async fn wait_until_left(client: &Client, node: &str, limit: Duration) -> Result<(), String> {
    use std::io::Write as _;
    let deadline = tokio::time::Instant::now() + limit;
    let mut most = 0u32;
    loop {
        let status = client.status().await.map_err(|e| e.to_string())?;
        let state = status
            .nodes
            .iter()
            .find(|n| n.id == node)
            .map(|n| n.membership.clone())
            .unwrap_or_default();
        if state == "left" {
            eprintln!();
            println!("{node}: left; it holds no partitions any more and can be stopped");
            return Ok(());
        }
        most = most.max(status.pending_partitions);
        let done = most - status.pending_partitions.min(most);
        eprint!("\r{}", output::progress_bar(done, most, &format!("{node} {state}")));
        let _ = std::io::stderr().flush();
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{node} has not left after {} s; it is {state}", limit.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Decodes a context given on the command line.
pub fn decode_context(context: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD.decode(context.trim()).map_err(|e| {
        format!("--context is not valid base64 ({e}): pass the context printed by get or put")
    })
}

/// Encodes a context for the command line.
pub fn encode_context(context: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(context)
}

/// Entry point of the dynamoctl binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // bench runs on one thread: it then costs about half the CPU per request (no cross-thread
    // wake-ups, no contention on the HTTP/2 connection's lock) and leaves the rest of the
    // machine to the cluster it measures.
    let runtime = if matches!(cli.command, Command::Bench(_)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    let client = || Client::new(&cli.endpoint, timeout).map_err(|e| e.to_string());
    match cli.command {
        Command::Put { key, value, context, w } => {
            let context = decode_context(&context)?;
            let out = client()?
                .put(key.as_bytes(), value.into_bytes(), context, w)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", encode_context(&out.context));
        }
        Command::Get { key, r, output } => {
            let out = client()?.get(key.as_bytes(), r).await.map_err(|e| e.to_string())?;
            print!("{}", output::get(&key, &out, output));
        }
        Command::Delete { key, context, w } => {
            let context = decode_context(&context)?;
            let out =
                client()?.delete(key.as_bytes(), context, w).await.map_err(|e| e.to_string())?;
            println!("{}", encode_context(&out.context));
        }
        Command::Status { output } => {
            let out = client()?.status().await.map_err(|e| e.to_string())?;
            print!("{}", output::status(&out, output));
        }
        Command::Ring { output } => {
            let out = client()?.ring().await.map_err(|e| e.to_string())?;
            print!("{}", output::ring(&out, output));
        }
        Command::Decommission { node, force, wait, wait_timeout_s } => {
            let client = client()?;
            let out = client
                .decommission(node.as_deref().unwrap_or(""), force)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}: {}", out.node_id, out.state);
            if wait {
                wait_until_left(&client, &out.node_id, Duration::from_secs(wait_timeout_s)).await?;
            }
        }
        Command::Repair { partition, output } => {
            let out = client()?.repair(partition).await.map_err(|e| e.to_string())?;
            print!("{}", output::repair(&out, output));
        }
        Command::Bench(args) => bench::run(args, &cli.endpoint, timeout).await?,
        Command::Dev { command: DevCommand::Up(args) } => dev::up(args).await?,
    }
    Ok(())
}
