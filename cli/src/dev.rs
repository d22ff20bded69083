//! `dynamoctl dev up`: a local cluster of real `dynamo-node` processes on 127.0.0.1, each with
//! its own RocksDB data directory under one folder, in the foreground. Ctrl-C or SIGTERM stops
//! every node cleanly; starting again with the same folder brings the same data back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dynamo_api::config::{ClusterConfig, EngineKind, NodeConfig};
use dynamo_local::{LaunchError, NodeProcess};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Arguments of `dynamoctl dev up`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevUpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Number of zones the nodes are spread over (default: min(nodes, 3)).
    #[arg(long)]
    pub zones: Option<usize>,
    /// Folder for every node's configuration, data and log.
    #[arg(long, default_value = "dynamo-dev")]
    pub data_dir: PathBuf,
    /// Client port of the first node; node i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7070)]
    pub base_port: u16,
    /// The dynamo-node binary (default: next to dynamoctl, then $PATH).
    #[arg(long, env = "DYNAMO_NODE_BIN")]
    pub node_bin: Option<PathBuf>,
}

/// What a dev folder was created with; a restart must match it, since the ring depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DevState {
    nodes: usize,
    zones: usize,
    base_port: u16,
    secret: String,
}

/// The configuration of every node of a dev cluster. Pure, so it is tested without processes.
pub fn plan(
    nodes: usize,
    zones: usize,
    base_port: u16,
    dir: &Path,
    secret: &str,
) -> Result<Vec<NodeConfig>, String> {
    if nodes == 0 || nodes > 32 {
        return Err(format!("--nodes {nodes} is outside 1..=32"));
    }
    if zones == 0 || zones > nodes {
        return Err(format!("--zones {zones} must be in 1..={nodes} (the number of nodes)"));
    }
    if base_port as usize + nodes > 65535 {
        return Err(format!("--base-port {base_port} leaves no room for {nodes} ports"));
    }
    let n = nodes.min(3);
    let q = if n >= 3 { 2 } else { 1 };
    let zone = |i: usize| format!("zone-{}", (b'a' + (i % zones) as u8) as char);
    let seeds: Vec<String> =
        (0..nodes).map(|i| format!("127.0.0.1:{}", base_port as usize + i)).collect();
    let configs: Vec<NodeConfig> = (0..nodes)
        .map(|i| {
            let id = format!("node-{}", i + 1);
            NodeConfig {
                listen: seeds[i].clone(),
                zone: zone(i),
                data_dir: Some(dir.join(&id).join("data")),
                engine: EngineKind::Rocksdb,
                cluster: ClusterConfig {
                    name: "dev".into(),
                    secret: secret.into(),
                    n: Some(n),
                    r: Some(q),
                    w: Some(q),
                    ..ClusterConfig::default()
                },
                seeds: seeds.clone(),
                id,
                ..NodeConfig::default()
            }
        })
        .collect();
    for c in &configs {
        c.validate()
            .map_err(|e| format!("generated an invalid configuration for {}: {e}", c.id))?;
    }
    Ok(configs)
}

fn load_or_create_state(args: &DevUpArgs, zones: usize) -> Result<DevState, String> {
    let path = args.data_dir.join("dev.toml");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let state: DevState =
            toml::from_str(&text).map_err(|e| format!("{} is corrupt: {e}", path.display()))?;
        if state.nodes != args.nodes || state.zones != zones || state.base_port != args.base_port {
            return Err(format!(
                "{} holds a cluster of {} nodes in {} zones on port {}: start it with the same \
                 --nodes/--zones/--base-port, or use another --data-dir",
                args.data_dir.display(),
                state.nodes,
                state.zones,
                state.base_port
            ));
        }
        return Ok(state);
    }
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
    let state = DevState {
        nodes: args.nodes,
        zones,
        base_port: args.base_port,
        secret: hex::encode(rand::random::<[u8; 16]>()),
    };
    let text = toml::to_string(&state).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(state)
}

/// Runs `dynamoctl dev up`.
pub async fn up(args: DevUpArgs) -> Result<(), String> {
    let zones = args.zones.unwrap_or(args.nodes.min(3));
    let state = load_or_create_state(&args, zones)?;
    let configs = plan(args.nodes, zones, args.base_port, &args.data_dir, &state.secret)?;
    let bin = dynamo_local::node_binary(args.node_bin.clone()).map_err(|e| e.to_string())?;
    let shutdown = crate::shutdown_on_signals();

    let mut running = Vec::new();
    for config in &configs {
        let mut node = NodeProcess::prepare(config, &args.data_dir.join(&config.id))
            .map_err(|e| e.to_string())?;
        node.start(&bin).map_err(|e| e.to_string())?;
        running.push(node);
    }
    let result = tokio::select! {
        _ = shutdown.cancelled() => Err(LaunchError::Interrupted),
        r = wait_until_formed(&mut running) => r,
    }
    .map_err(|e| e.to_string());
    if result.is_ok() {
        let q = configs[0].quorum();
        println!(
            "dev cluster up: {} nodes in {zones} zone(s), N={} R={} W={}, data in {}",
            configs.len(),
            q.n,
            q.r,
            q.w,
            args.data_dir.display()
        );
        for (c, r) in configs.iter().zip(&running) {
            println!("  {:<8} {:<7} {:<16} log {}", c.id, c.zone, c.listen, r.log.display());
        }
        println!("try: dynamoctl put hello world && dynamoctl get hello && dynamoctl status");
        println!("press Ctrl-C to stop the cluster");
        supervise(&mut running, &shutdown).await;
    }
    let mut stopped = 0;
    for node in running.iter_mut().filter(|n| n.is_started()) {
        if !node.stop(Duration::from_secs(10)).await {
            eprintln!("{} did not stop within 10 s; killed it", node.id);
        }
        stopped += 1;
    }
    if stopped > 0 {
        println!("stopped {stopped} node(s)");
    }
    result
}

/// Waits until every node serves, then until they share one ring with every node in it.
async fn wait_until_formed(running: &mut [NodeProcess]) -> Result<(), LaunchError> {
    for node in running.iter_mut() {
        node.wait_serving(Duration::from_secs(60)).await?;
    }
    dynamo_local::wait_for_one_ring(running, running.len(), Duration::from_secs(60)).await
}

/// Waits for the shutdown signal, reporting nodes that exit on their own meanwhile.
async fn supervise(running: &mut Vec<NodeProcess>, shutdown: &CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                running.retain_mut(|node| match node.exited() {
                    Some(status) => {
                        eprintln!("warning: {} exited ({status}); see {}", node.id, node.log.display());
                        false
                    }
                    None => true,
                });
                if running.is_empty() {
                    eprintln!("every node has exited");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_get_n3_r2_w2_over_three_zones() {
        let configs = plan(3, 3, 7070, Path::new("/tmp/d"), "s").unwrap();
        assert_eq!(configs.len(), 3);
        assert_eq!(configs[0].listen, "127.0.0.1:7070");
        assert_eq!(configs[2].listen, "127.0.0.1:7072");
        let zones: Vec<_> = configs.iter().map(|c| c.zone.as_str()).collect();
        assert_eq!(zones, ["zone-a", "zone-b", "zone-c"]);
        let q = configs[1].quorum();
        assert_eq!((q.n, q.r, q.w), (3, 2, 2));
        assert_eq!(configs[1].data_dir.as_deref(), Some(Path::new("/tmp/d/node-2/data")));
        assert!(configs.iter().all(|c| c.seeds.len() == 3 && c.cluster.secret == "s"));
    }

    #[test]
    fn small_clusters_and_bad_arguments() {
        let q = plan(1, 1, 7070, Path::new("/d"), "s").unwrap()[0].quorum();
        assert_eq!((q.n, q.r, q.w), (1, 1, 1));
        let q = plan(5, 2, 7070, Path::new("/d"), "s").unwrap()[4].quorum();
        assert_eq!((q.n, q.r, q.w), (3, 2, 2));
        assert!(plan(0, 1, 7070, Path::new("/d"), "s").unwrap_err().contains("--nodes"));
        assert!(plan(2, 3, 7070, Path::new("/d"), "s").unwrap_err().contains("--zones"));
        assert!(plan(3, 3, 65534, Path::new("/d"), "s").unwrap_err().contains("--base-port"));
    }
}
