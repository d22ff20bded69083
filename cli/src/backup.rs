//! `backup create | list | delete | restore`: cluster backups to a directory or S3-compatible
//! storage. The nodes do the work (each checkpoints and uploads its own data, or reads the
//! backup and keeps what it replicates); dynamoctl asks the admin node and reports.

use std::time::Duration;

use dynamo_client::{BackupInfo, Client, NodeRestore};
use serde_json::json;

use crate::Format;

/// Where backups are: a URL every node can reach.
#[derive(Debug, Clone, clap::Args)]
pub struct Location {
    /// file:///absolute/path (a directory every node mounts at that path) or
    /// s3://bucket/prefix (credentials, region and endpoint from the nodes' AWS_* variables).
    #[arg(long = "to", visible_alias = "from", env = "DYNAMO_BACKUP_DESTINATION")]
    pub destination: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Back up every node: a checkpoint each (writes go on), uploading only the files the
    /// destination does not hold yet; prints the backup's id, files and bytes.
    Create {
        #[command(flatten)]
        location: Location,
        /// The backup's id (default: the start time, e.g. 20261202T153000Z).
        #[arg(long)]
        id: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 6 * 3600)]
        timeout_s: u64,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// The complete backups at a destination, oldest first.
    List {
        #[command(flatten)]
        location: Location,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Delete a backup and the files no other backup uses.
    Delete {
        #[command(flatten)]
        location: Location,
        /// The backup's id (`backup list` shows them).
        #[arg(long)]
        backup: String,
    },
    /// Restore a backup into this cluster (a new one, of any size, settled: `status` shows no
    /// pending partitions): every node keeps the keys it replicates under this cluster's ring.
    Restore {
        #[command(flatten)]
        location: Location,
        /// The backup's id (`backup list` shows them).
        #[arg(long)]
        backup: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 6 * 3600)]
        timeout_s: u64,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
}

impl BackupCommand {
    /// How long the command may wait for the admin node.
    pub fn timeout(&self, default: Duration) -> Duration {
        match self {
            BackupCommand::Create { timeout_s, .. } | BackupCommand::Restore { timeout_s, .. } => {
                Duration::from_secs(*timeout_s)
            }
            _ => default,
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn info_json(b: &BackupInfo) -> serde_json::Value {
    let nodes: Vec<_> = b
        .nodes
        .iter()
        .map(|n| {
            json!({ "node": n.node_id, "files": n.files, "bytes": n.bytes_total,
                    "bytes_uploaded": n.bytes_uploaded })
        })
        .collect();
    json!({
        "id": b.backup_id, "cluster": b.cluster, "started_at": b.started_at,
        "finished_at": b.finished_at, "bytes": b.bytes_total(),
        "bytes_uploaded": b.bytes_uploaded(), "nodes": nodes,
    })
}

fn info_text(b: &BackupInfo) -> String {
    let mut s = format!(
        "backup {}: {} nodes, {} ({} uploaded), {} to {}\n",
        b.backup_id,
        b.nodes.len(),
        mib(b.bytes_total()),
        mib(b.bytes_uploaded()),
        b.started_at,
        b.finished_at
    );
    for n in &b.nodes {
        s.push_str(&format!(
            "  {}: {} files, {} ({} uploaded)\n",
            n.node_id,
            n.files,
            mib(n.bytes_total),
            mib(n.bytes_uploaded)
        ));
    }
    s
}

fn restore_text(nodes: &[NodeRestore]) -> String {
    let mut s = String::new();
    for n in nodes {
        s.push_str(&format!(
            "{}: merged {} of the {} versions read (one per backed-up replica of each key)\n",
            n.node_id, n.keys_kept, n.keys_read
        ));
    }
    s
}

pub async fn run(client: &Client, command: BackupCommand) -> Result<(), String> {
    let e = |e: dynamo_client::ClientError| e.to_string();
    match command {
        BackupCommand::Create { location, id, output, .. } => {
            eprintln!("backing up every node to {} ...", location.destination);
            let b = client.backup(&location.destination, id.as_deref()).await.map_err(e)?;
            match output {
                Format::Json => println!("{}", info_json(&b)),
                Format::Text => print!("{}", info_text(&b)),
            }
        }
        BackupCommand::List { location, output } => {
            let list = client.backups(&location.destination).await.map_err(e)?;
            match output {
                Format::Json => {
                    println!("{}", json!(list.iter().map(info_json).collect::<Vec<_>>()))
                }
                Format::Text if list.is_empty() => {
                    println!("no complete backup at {}", location.destination)
                }
                Format::Text => list.iter().for_each(|b| print!("{}", info_text(b))),
            }
        }
        BackupCommand::Delete { location, backup } => {
            let (objects, bytes) =
                client.delete_backup(&location.destination, &backup).await.map_err(e)?;
            println!("deleted backup {backup}: {objects} objects, {} freed", mib(bytes));
        }
        BackupCommand::Restore { location, backup, output, .. } => {
            eprintln!("restoring backup {backup} from {} ...", location.destination);
            let nodes = client.restore(&location.destination, &backup).await.map_err(e)?;
            match output {
                Format::Json => {
                    let nodes: Vec<_> = nodes
                        .iter()
                        .map(|n| {
                            json!({ "node": n.node_id, "keys_read": n.keys_read,
                                         "keys_kept": n.keys_kept })
                        })
                        .collect();
                    println!("{}", json!({ "backup": backup, "nodes": nodes }));
                }
                Format::Text => print!("{}", restore_text(&nodes)),
            }
        }
    }
    Ok(())
}
