//! `dynamoctl`: the command-line client. Reads (`get`, `status`, `ring`) print text for people
//! or `-o json` for programs; write commands print the new context on one line. One module per
//! command group: `data` (put, get, delete), `admin` (status, ring, decommission, repair),
//! `bench` (load generator), `dev` (local clusters), `top` (live view from the nodes' metrics),
//! `token` (bearer tokens); `connect` holds the endpoint and credential flags every command
//! shares; `output` formats answers.

mod admin;
mod backup;
mod bench;
mod connect;
mod data;
mod dev;
mod output;
mod token;
mod top;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

/// Command-line interface of dynamoctl.
#[derive(Debug, Parser)]
#[command(name = "dynamoctl", version, about = "Talk to a Dynamo cluster")]
pub struct Cli {
    #[command(flatten)]
    pub connect: connect::ConnectArgs,
    /// How long to wait for an answer, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Route put, get, delete and bench requests to the key's replicas: fetch the ring from
    /// the endpoint, compute each key's preference list and send each request to the first
    /// replica that answers (falling back to the endpoint). false: send every request to the
    /// endpoint, which forwards a put to a replica itself.
    #[arg(
        long,
        global = true,
        env = "DYNAMO_PARTITION_AWARE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "true|false"
    )]
    pub partition_aware: bool,
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
    Put(data::PutArgs),
    /// Read every concurrent value of a key and its context.
    Get(data::GetArgs),
    /// Delete what a context covers (use the context of a get).
    Delete(data::DeleteArgs),
    /// Every node with its zone, addresses and reachability, as the admin node sees it.
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
    Decommission(admin::DecommissionArgs),
    /// Run anti-entropy now between the admin node and the other replicas of its partitions.
    Repair {
        /// Only this partition (default: every partition the node replicates).
        #[arg(long)]
        partition: Option<u32>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Cluster backups to a directory or S3-compatible storage, and restores.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Load generator: YCSB-style workloads; throughput, latency percentiles and errors.
    Bench(bench::BenchArgs),
    /// Local development cluster.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// A live view of every node from its metrics: requests per second and p99 by operation,
    /// errors, hints, transfers, disk; `-o json` measures once.
    Top(top::TopArgs),
    /// Bearer tokens: create one, or hash one for the tokens file.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start a local cluster of real dynamo-node processes in the foreground; Ctrl-C stops it.
    Up(dev::DevUpArgs),
    /// Issue a node certificate from a dev cluster's CA (for a node joining it by hand); prints
    /// the dynamo-node flags that use it.
    Cert(dev::DevCertArgs),
}

fn main() -> ExitCode {
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
    let connect = &cli.connect;
    let client = || connect.endpoint_client(timeout);
    let data_client = || data::client(connect, timeout, cli.partition_aware);
    match cli.command {
        Command::Put(args) => data::put(&data_client().await?, args).await,
        Command::Get(args) => data::get(&data_client().await?, args).await,
        Command::Delete(args) => data::delete(&data_client().await?, args).await,
        Command::Status { output } => admin::status(&client()?, output).await,
        Command::Ring { output } => admin::ring(&client()?, output).await,
        Command::Decommission(args) => admin::decommission(&client()?, args).await,
        Command::Repair { partition, output } => admin::repair(&client()?, partition, output).await,
        Command::Backup { command } => {
            let client = connect.endpoint_client(command.timeout(timeout))?;
            backup::run(&client, command).await
        }
        Command::Bench(args) => bench::run(args, connect, timeout, cli.partition_aware).await,
        Command::Dev { command: DevCommand::Up(args) } => {
            dev::up(dev::DevUpArgs { insecure: connect.insecure, ..args }).await
        }
        Command::Dev { command: DevCommand::Cert(args) } => dev::cert(args),
        Command::Top(args) => top::run(&client()?, args).await,
        Command::Token { command } => token::run(command),
    }
}

/// A token cancelled on SIGINT or SIGTERM: the one shutdown signal every task watches.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    // Detached on purpose: lives for the whole process; its only job is to cancel the token.
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}
