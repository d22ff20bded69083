//! `dynamo-node`: one storage node. See `dynamo-node --help`.

use std::process::ExitCode;

use clap::Parser;
use dynamo_node::config::{NodeArgs, NodeConfig};

fn main() -> ExitCode {
    let args = NodeArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match NodeConfig::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dynamo-node: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // Long storage work (partition scans) leaves its worker thread for one of at most 64
    // blocking threads (`storage::blocking`), so requests, gossip and health keep their threads.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dynamo-node: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = dynamo_node::server::shutdown_on_signals();
        dynamo_node::server::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dynamo-node: {e}");
            ExitCode::FAILURE
        }
    }
}
