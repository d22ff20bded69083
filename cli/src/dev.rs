//! `dynamoctl dev up`: a local cluster of real `dynamo-node` processes on 127.0.0.1, each with
//! its own RocksDB data directory under one folder, in the foreground. Ctrl-C or SIGTERM stops
//! every node cleanly; starting again with the same folder brings the same data back.
//!
//! The cluster is secured as a production one is: the folder's `tls/` holds a cluster CA, a
//! certificate per node, an admin token and the nodes' tokens file (all kept across restarts,
//! node certificates re-issued), and the nodes run with TLS, the tokens file and a random
//! cluster secret. `dev up` prints the one `export` line that points `dynamoctl` at the cluster
//! with the admin token. `--insecure` runs `--dev --insecure` plaintext nodes instead.
//!
//! Ports: node i (from 0) serves clients on `base-port + i`, its peer port (internode and
//! admin) on `base-port + nodes + i` and plaintext health on `base-port + 2 * nodes + i`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dynamo_api::config::{ClusterConfig, EngineKind, NodeConfig};
use dynamo_api::security::{Credentials, Role};
use dynamo_local::pki::{self, LocalPki};
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
    /// Client port of the first node; node i (from 1) serves clients on base-port + i - 1,
    /// its peer port on base-port + nodes + i - 1, health on base-port + 2 * nodes + i - 1,
    /// metrics on base-port + 3 * nodes + i - 1.
    #[arg(long, default_value_t = 7070)]
    pub base_port: u16,
    /// The dynamo-node binary (default: next to dynamoctl, then $PATH).
    #[arg(long, env = "DYNAMO_NODE_BIN")]
    pub node_bin: Option<PathBuf>,
    /// Set from the global `--insecure` (the command line only, never DYNAMO_INSECURE): run
    /// plaintext nodes without authentication (`dynamo-node --dev --insecure`); anyone who
    /// reaches the ports can read, write and administer the cluster.
    #[arg(skip)]
    pub insecure: bool,
}

/// The name of the token `dev up` creates and prints (role admin).
const ADMIN_TOKEN: &str = "admin";

/// The folder under the data directory holding the CA, certificates and tokens.
const TLS_DIR: &str = "tls";

/// Arguments of `dynamoctl dev cert`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevCertArgs {
    /// The new node's id (the certificate's name).
    pub id: String,
    /// The dev cluster's folder (as given to `dev up`).
    #[arg(long, default_value = "dynamo-dev")]
    pub data_dir: PathBuf,
    /// IP addresses the node serves on besides 127.0.0.1.
    #[arg(long, value_delimiter = ',')]
    pub ip: Vec<std::net::IpAddr>,
}

/// Runs `dynamoctl dev cert`: issues a node certificate from a dev cluster's CA and prints the
/// `dynamo-node` flags that use it (TLS files and the tokens file), for a node joining it.
pub fn cert(args: DevCertArgs) -> Result<(), String> {
    let tls_dir = args.data_dir.join(TLS_DIR);
    if !tls_dir.join(pki::CA_CERT_FILE).exists() {
        return Err(format!(
            "{} holds no dev cluster CA: start the cluster with `dynamoctl dev up --data-dir {}` \
             first",
            tls_dir.display(),
            args.data_dir.display()
        ));
    }
    let tls_dir = std::fs::canonicalize(&tls_dir)
        .map_err(|e| format!("cannot resolve {}: {e}", tls_dir.display()))?;
    let pki = LocalPki::open_or_create(&tls_dir, "dev").map_err(|e| e.to_string())?;
    let tls = pki.issue_node(&args.id, &args.ip).map_err(|e| e.to_string())?;
    let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
    println!(
        "--tls-ca-cert {} --tls-cert {} --tls-key {} --tokens-file {}",
        path(tls.ca_cert),
        path(tls.cert),
        path(tls.key),
        pki.tokens_path().display()
    );
    Ok(())
}

/// What a dev folder was created with; a restart must match it, since the ring depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DevState {
    nodes: usize,
    zones: usize,
    base_port: u16,
    secret: String,
}

/// The configuration of every node of a dev cluster: TLS with the material in `tls_dir`
/// (certificates named by [`pki::node_tls`], the tokens file [`pki::tokens_path`]), or, with
/// `None`, `--dev --insecure` plaintext. Pure, so it is tested without processes.
pub fn plan(
    nodes: usize,
    zones: usize,
    base_port: u16,
    dir: &Path,
    secret: &str,
    tls_dir: Option<&Path>,
) -> Result<Vec<NodeConfig>, String> {
    if nodes == 0 || nodes > 32 {
        return Err(format!("--nodes {nodes} is outside 1..=32"));
    }
    if zones == 0 || zones > nodes {
        return Err(format!("--zones {zones} must be in 1..={nodes} (the number of nodes)"));
    }
    if base_port as usize + 4 * nodes > 65536 {
        return Err(format!(
            "--base-port {base_port} leaves no room for {} ports (4 per node)",
            4 * nodes
        ));
    }
    let n = nodes.min(3);
    let q = if n >= 3 { 2 } else { 1 };
    let zone = |i: usize| format!("zone-{}", (b'a' + (i % zones) as u8) as char);
    let port =
        |block: usize, i: usize| format!("127.0.0.1:{}", base_port as usize + block * nodes + i);
    // Nodes find each other through their peer ports.
    let seeds: Vec<String> = (0..nodes).map(|i| port(1, i)).collect();
    let configs: Vec<NodeConfig> = (0..nodes)
        .map(|i| {
            let id = format!("node-{}", i + 1);
            NodeConfig {
                listen: port(0, i),
                peer_listen: port(1, i),
                health_listen: port(2, i),
                metrics_listen: port(3, i),
                tls: tls_dir.map(|d| pki::node_tls(d, &id)).unwrap_or_default(),
                tokens_file: tls_dir.map(pki::tokens_path),
                dev: tls_dir.is_none(),
                insecure: tls_dir.is_none(),
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
    // Absolute paths: the nodes and the printed export line must not depend on a directory.
    let data_dir = std::fs::canonicalize(&args.data_dir)
        .map_err(|e| format!("cannot resolve {}: {e}", args.data_dir.display()))?;
    let tls_dir = data_dir.join(TLS_DIR);
    let security = (!args.insecure).then_some(tls_dir.as_path());
    let configs = plan(args.nodes, zones, args.base_port, &data_dir, &state.secret, security)?;
    let bin = dynamo_local::node_binary(args.node_bin.clone()).map_err(|e| e.to_string())?;
    let (credentials, token) = if args.insecure {
        (Credentials::insecure(), None)
    } else {
        let pki = LocalPki::open_or_create(&tls_dir, "dev").map_err(|e| e.to_string())?;
        for config in &configs {
            let ips: Vec<std::net::IpAddr> = [&config.listen, &config.peer_listen]
                .iter()
                .filter_map(|a| a.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
                .collect();
            pki.issue_node(&config.id, &ips).map_err(|e| e.to_string())?;
        }
        let token = pki.token(ADMIN_TOKEN, Role::Admin).map_err(|e| e.to_string())?;
        (pki.token_credentials(&token), Some(token))
    };
    let shutdown = crate::shutdown_on_signals();

    let mut running = Vec::new();
    for config in &configs {
        let mut node =
            NodeProcess::prepare(config, &data_dir.join(&config.id), credentials.clone())
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
            "dev cluster up: {} nodes in {zones} zone(s), N={} R={} W={}, {}, data in {}",
            configs.len(),
            q.n,
            q.r,
            q.w,
            if args.insecure { "PLAINTEXT" } else { "TLS" },
            data_dir.display()
        );
        println!("  {:<8} {:<7} {:<16} {:<16} log", "NODE", "ZONE", "CLIENT", "PEER/ADMIN");
        for (c, r) in configs.iter().zip(&running) {
            println!(
                "  {:<8} {:<7} {:<16} {:<16} {}",
                c.id,
                c.zone,
                c.listen,
                c.peer_listen,
                r.log.display()
            );
        }
        if args.insecure {
            println!(
                "WARNING: --insecure: the nodes speak plaintext and check no credential; anyone \
                 who reaches these ports can read, write and administer the cluster"
            );
        } else {
            println!(
                "TLS material (CA, node certificates, the admin token, the tokens file) is in \
                 {}; more tokens: `dynamoctl token create`",
                tls_dir.display()
            );
        }
        println!("point dynamoctl at the cluster (admin credentials) with:");
        println!("{}", export_line(&configs[0], &tls_dir, token.as_deref()));
        println!("then: dynamoctl put hello world && dynamoctl get hello && dynamoctl status");
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

/// The shell line that points `dynamoctl` at node `first` of the cluster: TLS with the CA in
/// `tls_dir` and `token`, or (without a token) plaintext, unsetting credentials a previous
/// line may have set.
pub fn export_line(first: &NodeConfig, tls_dir: &Path, token: Option<&str>) -> String {
    let addresses =
        format!("DYNAMO_ENDPOINT={} DYNAMO_ADMIN_ADDR={}", first.listen, first.peer_listen);
    match token {
        Some(token) => format!(
            "export {addresses} DYNAMO_CA_CERT={} DYNAMO_TOKEN={token}",
            tls_dir.join(pki::CA_CERT_FILE).display()
        ),
        None => format!(
            "unset DYNAMO_CA_CERT DYNAMO_CERT DYNAMO_KEY DYNAMO_TOKEN; export {addresses} \
             DYNAMO_INSECURE=true"
        ),
    }
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
        let tls = Path::new("/tmp/d/tls");
        let configs = plan(3, 3, 7070, Path::new("/tmp/d"), "s", Some(tls)).unwrap();
        assert_eq!(configs.len(), 3);
        assert_eq!(configs[0].listen, "127.0.0.1:7070");
        assert_eq!(configs[2].listen, "127.0.0.1:7072");
        assert_eq!(configs[0].peer_listen, "127.0.0.1:7073");
        assert_eq!(configs[2].health_listen, "127.0.0.1:7078");
        assert_eq!(configs[2].metrics_listen, "127.0.0.1:7081");
        assert_eq!(configs[1].seeds, ["127.0.0.1:7073", "127.0.0.1:7074", "127.0.0.1:7075"]);
        // TLS: production settings, validated as such (no development mode).
        assert!(configs.iter().all(|c| !c.dev && !c.insecure));
        assert_eq!(configs[1].tls.cert.as_deref(), Some(Path::new("/tmp/d/tls/node-2.crt")));
        assert_eq!(configs[1].tls.ca_cert.as_deref(), Some(Path::new("/tmp/d/tls/ca.crt")));
        assert_eq!(configs[1].tokens_file.as_deref(), Some(Path::new("/tmp/d/tls/tokens")));
        let line = export_line(&configs[0], tls, Some("t0k"));
        assert_eq!(
            line,
            "export DYNAMO_ENDPOINT=127.0.0.1:7070 DYNAMO_ADMIN_ADDR=127.0.0.1:7073 \
             DYNAMO_CA_CERT=/tmp/d/tls/ca.crt DYNAMO_TOKEN=t0k"
        );
        let insecure = plan(3, 3, 7070, Path::new("/tmp/d"), "s", None).unwrap();
        assert!(insecure.iter().all(|c| c.dev && c.insecure && c.tls.cert.is_none()));
        let line = export_line(&insecure[0], tls, None);
        assert!(line.contains("DYNAMO_INSECURE=true") && line.starts_with("unset "), "{line}");
        let zones: Vec<_> = configs.iter().map(|c| c.zone.as_str()).collect();
        assert_eq!(zones, ["zone-a", "zone-b", "zone-c"]);
        let q = configs[1].quorum();
        assert_eq!((q.n, q.r, q.w), (3, 2, 2));
        assert_eq!(configs[1].data_dir.as_deref(), Some(Path::new("/tmp/d/node-2/data")));
        assert!(configs.iter().all(|c| c.seeds.len() == 3 && c.cluster.secret == "s"));
    }

    #[test]
    fn small_clusters_and_bad_arguments() {
        let q = plan(1, 1, 7070, Path::new("/d"), "s", None).unwrap()[0].quorum();
        assert_eq!((q.n, q.r, q.w), (1, 1, 1));
        let q = plan(5, 2, 7070, Path::new("/d"), "s", None).unwrap()[4].quorum();
        assert_eq!((q.n, q.r, q.w), (3, 2, 2));
        assert!(plan(0, 1, 7070, Path::new("/d"), "s", None).unwrap_err().contains("--nodes"));
        assert!(plan(2, 3, 7070, Path::new("/d"), "s", None).unwrap_err().contains("--zones"));
        assert!(plan(3, 3, 65530, Path::new("/d"), "s", None).unwrap_err().contains("--base-port"));
    }
}
