//! `dynamo-node` configuration: one TOML file and/or flags (flags win), documented in
//! `dynamo-node --help`, validated once at start-up with errors that name the setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::contract::env;
use crate::ring::{Member, NodeId, Ring};

/// Command-line flags of `dynamo-node`. Every flag overrides the same setting of `--config`.
#[derive(Debug, Default, Parser)]
#[command(name = "dynamo-node", version, about = "A Dynamo storage node")]
pub struct NodeArgs {
    /// TOML configuration file; flags override its settings.
    #[arg(long, env = env::CONFIG)]
    pub config: Option<PathBuf>,
    /// This node's unique, stable id (letters, digits, '.', '_', '-').
    #[arg(long, env = env::ID)]
    pub id: Option<String>,
    /// Address to serve the client API on, HOST:PORT. Default 127.0.0.1:7070.
    #[arg(long, env = env::LISTEN)]
    pub listen: Option<String>,
    /// Address clients use to reach this node's client API; default: --listen.
    #[arg(long, env = env::ADVERTISE)]
    pub advertise: Option<String>,
    /// Address to serve the internode and admin APIs on (mutual TLS), HOST:PORT. Default
    /// 127.0.0.1:7071.
    #[arg(long, env = env::PEER_LISTEN)]
    pub peer_listen: Option<String>,
    /// Address other nodes and admins use to reach this node's peer port; default: the host of
    /// --advertise with the port of --peer-listen.
    #[arg(long, env = env::PEER_ADVERTISE)]
    pub peer_advertise: Option<String>,
    /// Address to serve plaintext gRPC health on (probes; nothing else), HOST:PORT. Default
    /// 127.0.0.1:7072.
    #[arg(long, env = env::HEALTH_LISTEN)]
    pub health_listen: Option<String>,
    /// Address to serve Prometheus metrics on (plain HTTP, `GET /metrics`), HOST:PORT. Default
    /// 0.0.0.0:9090.
    #[arg(long, env = env::METRICS_LISTEN)]
    pub metrics_listen: Option<String>,
    /// PEM file of the cluster's CA certificate: peers and client certificates must be issued
    /// by it. Required unless --dev --insecure.
    #[arg(long, env = env::TLS_CA_CERT)]
    pub tls_ca_cert: Option<PathBuf>,
    /// PEM file of this node's certificate (role peer, issued by the cluster CA, naming the
    /// addresses it is reached at). Required unless --dev --insecure.
    #[arg(long, env = env::TLS_CERT)]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of this node's private key. Required unless --dev --insecure.
    #[arg(long, env = env::TLS_KEY)]
    pub tls_key: Option<PathBuf>,
    /// File of accepted bearer tokens, one `<role> <name> sha256:<hex>` per line (hashes, not
    /// tokens). Without it only client certificates authenticate clients.
    #[arg(long, env = env::TOKENS_FILE)]
    pub tokens_file: Option<PathBuf>,
    /// Development mode: allows a missing cluster secret (a built-in one is used) and, with
    /// --insecure, plaintext. Never in production.
    #[arg(long, env = env::DEV, num_args = 0..=1, default_missing_value = "true")]
    pub dev: Option<bool>,
    /// Serve and call in plaintext with no authentication. Refused unless --dev.
    #[arg(long, env = env::INSECURE, num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// Zone (data center) of this node; preference lists spread replicas over zones. Default "default".
    #[arg(long, env = env::ZONE)]
    pub zone: Option<String>,
    /// Relative capacity: a node of weight 2 owns twice the partitions of a node of weight 1. Default 1.
    #[arg(long, env = env::WEIGHT)]
    pub weight: Option<u32>,
    /// Directory for the RocksDB data; created if missing. Required with --engine rocksdb.
    #[arg(long, env = env::DATA_DIR)]
    pub data_dir: Option<PathBuf>,
    /// Storage engine: rocksdb (durable, default) or memory (lost on exit; tests and caches).
    #[arg(long, env = env::ENGINE)]
    pub engine: Option<EngineKind>,
    /// Seed nodes to join through, HOST:PORT, comma-separated or repeated; DNS names are
    /// resolved again on every use. This node may be listed too. A node with no seeds starts a
    /// cluster of its own.
    #[arg(long, env = env::SEEDS, value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Gossip round interval in milliseconds. Default 1000.
    #[arg(long, env = env::GOSSIP_INTERVAL_MS)]
    pub gossip_interval_ms: Option<u64>,
    /// Cluster name; nodes refuse to talk to nodes of another cluster. Default "dynamo".
    #[arg(long, env = env::CLUSTER_NAME)]
    pub cluster_name: Option<String>,
    /// Secret that seals client contexts; identical on every node of a cluster.
    #[arg(long, env = env::CLUSTER_SECRET, hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Number of partitions Q (a power of two, fixed when the cluster is created). Default 256.
    #[arg(long, env = env::PARTITIONS)]
    pub partitions: Option<u32>,
    /// Replicas per key, N. Default 3 (or the number of nodes when fewer).
    #[arg(long, env = env::N)]
    pub n: Option<usize>,
    /// Replies a get waits for, R (1..=N). Default 2 (1 when N is 1).
    #[arg(long, env = env::R)]
    pub r: Option<usize>,
    /// Acknowledgements a put waits for, W (1..=N). Default 2 (1 when N is 1).
    #[arg(long, env = env::W)]
    pub w: Option<usize>,
    /// Time a coordinator waits for its quorum, in milliseconds. Default 2000.
    #[arg(long, env = env::REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: Option<u64>,
    /// fsync the write-ahead log on every write (survives power loss, slower). Default false:
    /// writes survive a process crash but may lose the last moments on power loss.
    #[arg(long, env = env::SYNC_WRITES)]
    pub sync_writes: Option<bool>,
    /// Accept the admin SetFaults call (simulated network partitions). Tests only.
    #[arg(long, env = env::FAULT_INJECTION)]
    pub fault_injection: Option<bool>,
}

/// Storage engine choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Rocksdb,
    Memory,
}

/// Settings that must be identical on every node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub name: String,
    /// Seals contexts (HMAC key). Required; empty is allowed only in development mode (`dev`),
    /// where a built-in secret is used.
    pub secret: String,
    pub partitions: u32,
    /// N; `None` means 3.
    pub n: Option<usize>,
    /// R; `None` means min(2, N).
    pub r: Option<usize>,
    /// W; `None` means min(2, N).
    pub w: Option<usize>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: "dynamo".into(),
            secret: String::new(),
            partitions: Ring::DEFAULT_PARTITIONS,
            n: None,
            r: None,
            w: None,
        }
    }
}

/// Request size limits. Requests over a limit fail with an error naming it; nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest key, bytes. Default 1024.
    pub max_key_bytes: usize,
    /// Largest value, bytes. Default 1 MiB.
    pub max_value_bytes: usize,
    /// Most concurrent values (siblings) a key may hold after a write. Default 64.
    pub max_siblings: usize,
    /// Largest sum of a key's sibling values, bytes. Default 8 MiB.
    pub max_object_bytes: usize,
    /// Most client requests a node serves at once; past it a request is refused at once with
    /// RESOURCE_EXHAUSTED (retry with backoff). Default 1024.
    pub max_concurrent_requests: usize,
    /// Most background requests of other nodes (transfer pages, Merkle exchanges) a node
    /// serves at once, so they yield to client requests. Default 8.
    pub max_concurrent_background: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_siblings: 64,
            max_object_bytes: 8 << 20,
            max_concurrent_requests: 1024,
            max_concurrent_background: 8,
        }
    }
}

/// Background work: hinted handoff and anti-entropy, with their pacing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackgroundConfig {
    /// How often hints are offered to their nodes, ms. Default 1000.
    pub handoff_interval_ms: u64,
    /// Most hints delivered per second (0: unlimited). Default 2000.
    pub handoff_keys_per_sec: u32,
    /// Pause between two anti-entropy exchanges (each one partition), ms; 0 disables the
    /// worker (`dynamoctl repair` still works). Default 2000.
    pub anti_entropy_interval_ms: u64,
    /// Most keys anti-entropy moves per second (0: unlimited). Default 2000.
    pub anti_entropy_keys_per_sec: u32,
    /// Most keys a partition transfer (join, decommission) moves per second (0: unlimited).
    /// Default 5000.
    pub transfer_keys_per_sec: u32,
    /// Most bytes one page of a partition transfer carries (a page holds at least one object
    /// whatever its size), so large values move as fast in bytes as small ones. Default 4 MiB;
    /// 64 KiB to 16 MiB.
    pub page_bytes: usize,
    /// How long a node may be down and still get hints, ms: past it, writes for it are no
    /// longer kept by stand-ins and anti-entropy repairs it when it returns (Cassandra's
    /// `max_hint_window`). Default 10800000 (3 hours).
    pub hint_window_ms: u64,
    /// Most bytes of hints a node keeps for one other node; past it, more hints for that node
    /// are refused (the write counts only where it reached a replica). Default 1 GiB.
    pub max_hint_bytes_per_target: u64,
    /// How long the ring must be settled before a node deletes its copies of the partitions it
    /// no longer replicates (after joins and decommissions), ms; 0 keeps them. Default 300000.
    pub cleanup_after_ms: u64,
    /// How long a tombstone is kept after this node stored it before it may be reaped (and
    /// then only once every replica of its key holds it or nothing), ms. Default 86400000
    /// (1 day): far past the hint window's hand-offs and a stand-in's usual outage, so a hint
    /// or a late message carrying a deleted value meets the tombstone, not an empty key.
    pub delete_grace_ms: u64,
    /// Pause between two passes of the tombstone reaper, ms; 0 disables reaping (tombstones
    /// are kept forever). Default 60000.
    pub reap_interval_ms: u64,
    /// Most tombstones the reaper checks per second (each check reads the key's other
    /// replicas; 0: unlimited). Default 500.
    pub reap_keys_per_sec: u32,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        BackgroundConfig {
            handoff_interval_ms: 1000,
            handoff_keys_per_sec: 2000,
            anti_entropy_interval_ms: 2000,
            anti_entropy_keys_per_sec: 2000,
            transfer_keys_per_sec: 5000,
            page_bytes: 4 << 20,
            hint_window_ms: 3 * 3600 * 1000,
            max_hint_bytes_per_target: 1 << 30,
            cleanup_after_ms: 300_000,
            delete_grace_ms: 24 * 3600 * 1000,
            reap_interval_ms: 60_000,
            reap_keys_per_sec: 500,
        }
    }
}

/// TLS material: PEM files. All three are needed unless the node runs `dev` and `insecure`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The cluster CA's certificate.
    pub ca_cert: Option<PathBuf>,
    /// This node's certificate (role peer).
    pub cert: Option<PathBuf>,
    /// This node's private key.
    pub key: Option<PathBuf>,
}

/// The whole node configuration, as read from TOML (every field optional there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub id: String,
    pub listen: String,
    pub advertise: Option<String>,
    /// Internode and admin APIs (mutual TLS).
    pub peer_listen: String,
    pub peer_advertise: Option<String>,
    /// Plaintext gRPC health only, for probes.
    pub health_listen: String,
    /// Prometheus metrics (plain HTTP, `GET /metrics` only).
    pub metrics_listen: String,
    pub tls: TlsConfig,
    /// Accepted bearer tokens (hashed); see `dynamo_api::security`.
    pub tokens_file: Option<PathBuf>,
    /// Development mode: a missing secret gets a built-in one; `insecure` is allowed.
    pub dev: bool,
    /// Plaintext and no authentication (only with `dev`).
    pub insecure: bool,
    pub zone: String,
    pub weight: u32,
    pub data_dir: Option<PathBuf>,
    pub engine: EngineKind,
    pub request_timeout_ms: u64,
    pub sync_writes: bool,
    /// Accept the admin SetFaults call (tests only). Default false.
    pub fault_injection: bool,
    pub cluster: ClusterConfig,
    pub limits: Limits,
    pub background: BackgroundConfig,
    /// Seed nodes, HOST:PORT.
    pub seeds: Vec<String>,
    /// Gossip round interval, ms.
    pub gossip_interval_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: String::new(),
            listen: "127.0.0.1:7070".into(),
            advertise: None,
            peer_listen: format!("127.0.0.1:{}", crate::contract::DEFAULT_PEER_PORT),
            peer_advertise: None,
            health_listen: format!("127.0.0.1:{}", crate::contract::DEFAULT_HEALTH_PORT),
            metrics_listen: format!("0.0.0.0:{}", crate::contract::DEFAULT_METRICS_PORT),
            tls: TlsConfig::default(),
            tokens_file: None,
            dev: false,
            insecure: false,
            zone: default_zone(),
            weight: default_weight(),
            data_dir: None,
            engine: EngineKind::Rocksdb,
            request_timeout_ms: 2000,
            sync_writes: false,
            fault_injection: false,
            cluster: ClusterConfig::default(),
            limits: Limits::default(),
            background: BackgroundConfig::default(),
            seeds: Vec::new(),
            gossip_interval_ms: 1000,
        }
    }
}

fn default_zone() -> String {
    "default".into()
}

fn default_weight() -> u32 {
    1
}

/// A configuration problem, found at start-up before anything is opened or served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{setting}: {message}")]
    Invalid { setting: &'static str, message: String },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, message: message.into() }
}

/// Replication settings after defaults are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    pub n: usize,
    pub r: usize,
    pub w: usize,
}

impl NodeConfig {
    /// Reads `--config` (if any), applies the flags on top, and validates the result.
    pub fn load(args: NodeArgs) -> Result<NodeConfig, ConfigError> {
        let mut config = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => NodeConfig::default(),
        };
        config.apply(args)?;
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, args: NodeArgs) -> Result<(), ConfigError> {
        macro_rules! set {
            ($field:expr, $value:expr) => {
                if let Some(v) = $value {
                    $field = v;
                }
            };
        }
        set!(self.id, args.id);
        set!(self.listen, args.listen);
        set!(self.peer_listen, args.peer_listen);
        set!(self.health_listen, args.health_listen);
        set!(self.metrics_listen, args.metrics_listen);
        set!(self.dev, args.dev);
        set!(self.insecure, args.insecure);
        if args.peer_advertise.is_some() {
            self.peer_advertise = args.peer_advertise;
        }
        if args.tls_ca_cert.is_some() {
            self.tls.ca_cert = args.tls_ca_cert;
        }
        if args.tls_cert.is_some() {
            self.tls.cert = args.tls_cert;
        }
        if args.tls_key.is_some() {
            self.tls.key = args.tls_key;
        }
        if args.tokens_file.is_some() {
            self.tokens_file = args.tokens_file;
        }
        set!(self.zone, args.zone);
        set!(self.weight, args.weight);
        set!(self.engine, args.engine);
        set!(self.request_timeout_ms, args.request_timeout_ms);
        set!(self.sync_writes, args.sync_writes);
        set!(self.fault_injection, args.fault_injection);
        set!(self.cluster.name, args.cluster_name);
        set!(self.cluster.secret, args.cluster_secret);
        set!(self.cluster.partitions, args.partitions);
        if args.advertise.is_some() {
            self.advertise = args.advertise;
        }
        if args.data_dir.is_some() {
            self.data_dir = args.data_dir;
        }
        if args.n.is_some() {
            self.cluster.n = args.n;
        }
        if args.r.is_some() {
            self.cluster.r = args.r;
        }
        if args.w.is_some() {
            self.cluster.w = args.w;
        }
        if !args.seeds.is_empty() {
            self.seeds =
                args.seeds.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        }
        set!(self.gossip_interval_ms, args.gossip_interval_ms);
        Ok(())
    }

    /// The address clients use for this node's client API.
    pub fn advertise_addr(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// The address other nodes and admins use for this node's peer port: `peer_advertise`, or
    /// the host of the client address with the port of `peer_listen`.
    pub fn peer_advertise_addr(&self) -> String {
        if let Some(a) = &self.peer_advertise {
            return a.clone();
        }
        let host = self.advertise_addr().rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
        let port = self.peer_listen.rsplit_once(':').map_or("", |(_, p)| p);
        format!("{host}:{port}")
    }

    /// The address Prometheus and `dynamoctl top` use for this node's metrics: `metrics_listen`,
    /// or, when it listens on every interface, the host of the client address with its port.
    pub fn metrics_advertise_addr(&self) -> String {
        match self.metrics_listen.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => {
                let host = self.advertise_addr().rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
                format!("{host}:{}", a.port())
            }
            _ => self.metrics_listen.clone(),
        }
    }

    /// Whether calls are plaintext and unauthenticated (`dev` and `insecure`).
    pub fn is_insecure(&self) -> bool {
        self.dev && self.insecure
    }

    /// This node as a ring member.
    pub fn member(&self) -> Member {
        Member { id: NodeId(self.id.clone()), zone: self.zone.clone(), weight: self.weight }
    }

    /// N, R and W with defaults applied (valid after `validate`).
    pub fn quorum(&self) -> Quorum {
        let n = self.cluster.n.unwrap_or(3);
        Quorum { n, r: self.cluster.r.unwrap_or(n.min(2)), w: self.cluster.w.unwrap_or(n.min(2)) }
    }

    /// Checks every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_id("id", &self.id)?;
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid("listen", format!("'{}' is not HOST:PORT, e.g. 127.0.0.1:7070", self.listen))
        })?;
        if self.advertise.is_none() && listen.ip().is_unspecified() {
            return Err(invalid(
                "advertise",
                format!(
                    "listen address {listen} is a wildcard, so other nodes cannot use it: set \
                     --advertise to an address they can reach"
                ),
            ));
        }
        if let Some(a) = &self.advertise {
            validate_address("advertise", a)?;
        }
        let peer: SocketAddr = self.peer_listen.parse().map_err(|_| {
            invalid(
                "peer-listen",
                format!("'{}' is not HOST:PORT, e.g. 127.0.0.1:7071", self.peer_listen),
            )
        })?;
        let health: SocketAddr = self.health_listen.parse().map_err(|_| {
            invalid(
                "health-listen",
                format!("'{}' is not HOST:PORT, e.g. 127.0.0.1:7072", self.health_listen),
            )
        })?;
        if peer.port() == listen.port()
            || health.port() == listen.port()
            || health.port() == peer.port()
        {
            return Err(invalid(
                "peer-listen",
                format!(
                    "listen ({listen}), peer-listen ({peer}) and health-listen ({health}) must \
                     use three different ports"
                ),
            ));
        }
        let metrics: SocketAddr = self.metrics_listen.parse().map_err(|_| {
            invalid(
                "metrics-listen",
                format!("'{}' is not HOST:PORT, e.g. 0.0.0.0:9090", self.metrics_listen),
            )
        })?;
        if [listen.port(), peer.port(), health.port()].contains(&metrics.port()) {
            return Err(invalid(
                "metrics-listen",
                format!(
                    "metrics-listen ({metrics}) must use a port of its own, not one of listen \
                     ({listen}), peer-listen ({peer}) or health-listen ({health})"
                ),
            ));
        }
        if let Some(a) = &self.peer_advertise {
            validate_address("peer-advertise", a)?;
        }
        self.validate_security()?;
        if self.zone.trim().is_empty() {
            return Err(invalid("zone", "must not be empty"));
        }
        if !(1..=1000).contains(&self.weight) {
            return Err(invalid("weight", format!("{} is outside 1..=1000", self.weight)));
        }
        if self.engine == EngineKind::Rocksdb && self.data_dir.is_none() {
            return Err(invalid(
                "data-dir",
                "the rocksdb engine needs a data directory: pass --data-dir DIR (or use \
                 --engine memory for a throw-away node)",
            ));
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > 600_000 {
            return Err(invalid(
                "request-timeout-ms",
                format!("{} is outside 1..=600000", self.request_timeout_ms),
            ));
        }
        if self.cluster.name.trim().is_empty() {
            return Err(invalid("cluster-name", "must not be empty"));
        }
        let q = self.cluster.partitions;
        if !q.is_power_of_two() || !(1..=65536).contains(&q) {
            return Err(invalid(
                "partitions",
                format!("{q} is not a power of two in 1..=65536: use 64, 128, 256, 1024, ..."),
            ));
        }
        for seed in &self.seeds {
            validate_address("seeds", seed)?;
        }
        if self.gossip_interval_ms == 0 || self.gossip_interval_ms > 60_000 {
            return Err(invalid(
                "gossip-interval-ms",
                format!("{} is outside 1..=60000", self.gossip_interval_ms),
            ));
        }
        let Quorum { n, r, w } = self.quorum();
        if !(1..=16).contains(&n) {
            return Err(invalid("n", format!("n={n} is outside 1..=16")));
        }
        if r == 0 || r > n {
            return Err(invalid("r", format!("r={r} must be in 1..={n} (n)")));
        }
        if w == 0 || w > n {
            return Err(invalid("w", format!("w={w} must be in 1..={n} (n)")));
        }
        let l = &self.limits;
        if l.max_key_bytes == 0
            || l.max_value_bytes == 0
            || l.max_siblings == 0
            || l.max_concurrent_requests == 0
            || l.max_concurrent_background == 0
        {
            return Err(invalid("limits", "every limit must be at least 1"));
        }
        if l.max_object_bytes < l.max_value_bytes {
            return Err(invalid("limits", "max_object_bytes must be at least max_value_bytes"));
        }
        if !(64 << 10..=16 << 20).contains(&self.background.page_bytes) {
            return Err(invalid(
                "background.page_bytes",
                format!("{} is outside 65536..=16777216", self.background.page_bytes),
            ));
        }
        if self.background.handoff_interval_ms == 0 {
            return Err(invalid("background.handoff_interval_ms", "must be at least 1"));
        }
        Ok(())
    }

    /// TLS material and the cluster secret are required, except in development mode.
    fn validate_security(&self) -> Result<(), ConfigError> {
        if self.insecure && !self.dev {
            return Err(invalid(
                "insecure",
                "plaintext without authentication is refused outside development mode: give \
                 the node TLS material (tls.ca_cert, tls.cert, tls.key), or also pass --dev on \
                 a throw-away cluster",
            ));
        }
        if !self.insecure {
            let tls = &self.tls;
            for (setting, value) in
                [("tls.ca_cert", &tls.ca_cert), ("tls.cert", &tls.cert), ("tls.key", &tls.key)]
            {
                if value.is_none() {
                    return Err(invalid(
                        setting,
                        format!(
                            "is required: nodes serve only TLS. Give the PEM file with \
                             --{} (the operator and `dynamoctl dev up` create them), or run a \
                             throw-away plaintext node with --dev --insecure",
                            setting.replace("tls.", "tls-").replace('_', "-")
                        ),
                    ));
                }
            }
        }
        if self.cluster.secret.is_empty() && !self.dev {
            return Err(invalid(
                "cluster-secret",
                "is required: it seals the contexts clients get back, and without it anyone can \
                 forge one. Set cluster.secret (or --cluster-secret / DYNAMO_CLUSTER_SECRET) to \
                 the same random string on every node, e.g. `openssl rand -hex 32`",
            ));
        }
        Ok(())
    }

    /// The TOML form of this configuration (what `dynamoctl dev up` and tests write).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("NodeConfig always serializes to TOML")
    }
}

fn validate_id(setting: &'static str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() {
        return Err(invalid(
            setting,
            "is required: give every node a unique, stable id such as node-1",
        ));
    }
    if id.len() > 64
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(invalid(
            setting,
            format!("'{id}' must be 1-64 characters of letters, digits, '.', '_' or '-'"),
        ));
    }
    Ok(())
}

fn validate_address(setting: &'static str, address: &str) -> Result<(), ConfigError> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(invalid(setting, format!("'{address}' is not HOST:PORT, e.g. 10.0.0.5:7070"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> NodeConfig {
        NodeConfig {
            id: "node-1".into(),
            engine: EngineKind::Memory,
            dev: true,
            insecure: true,
            seeds: vec![
                "127.0.0.1:7071".into(),
                "dynamo-zone-b-0.dynamo-peers.default.svc:7070".into(),
            ],
            ..NodeConfig::default()
        }
    }

    fn error_of(config: NodeConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_give_n3_r2_w2() {
        let c = base();
        c.validate().unwrap();
        assert_eq!(c.quorum(), Quorum { n: 3, r: 2, w: 2 });
        let mut one = base();
        one.cluster.n = Some(1);
        assert_eq!(one.quorum(), Quorum { n: 1, r: 1, w: 1 });
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(error_of(NodeConfig { id: String::new(), ..base() }).starts_with("id: is required"));
        assert!(error_of(NodeConfig { listen: "nope".into(), ..base() }).starts_with("listen:"));
        let mut c = base();
        c.cluster.r = Some(4);
        assert!(error_of(c).contains("r=4 must be in 1..=3"));
        let mut c = base();
        c.cluster.n = Some(0);
        assert!(error_of(c).contains("n=0 is outside"));
        let mut c = base();
        c.cluster.partitions = 100;
        assert!(error_of(c).contains("not a power of two"));
        let c = NodeConfig { engine: EngineKind::Rocksdb, ..base() };
        assert!(error_of(c).starts_with("data-dir:"));
        let c = NodeConfig { seeds: vec!["no-port".into()], ..base() };
        assert!(error_of(c).starts_with("seeds:"));
        let c = NodeConfig { listen: "0.0.0.0:7070".into(), ..base() };
        assert!(error_of(c).starts_with("advertise:"));
        let c = NodeConfig { peer_listen: "127.0.0.1:7070".into(), ..base() };
        assert!(error_of(c).contains("three different ports"));
        let c = NodeConfig { metrics_listen: "127.0.0.1:7071".into(), ..base() };
        assert!(error_of(c).starts_with("metrics-listen: metrics-listen (127.0.0.1:7071) must use"));
        let c = NodeConfig { metrics_listen: "9090".into(), ..base() };
        assert!(error_of(c).starts_with("metrics-listen: '9090' is not HOST:PORT"));
    }

    #[test]
    fn security_settings_are_required_outside_development() {
        let secure = NodeConfig { dev: false, insecure: false, ..base() };
        assert!(error_of(secure.clone()).starts_with("tls.ca_cert: is required"));
        let with_tls = NodeConfig {
            tls: TlsConfig {
                ca_cert: Some("ca.pem".into()),
                cert: Some("node.pem".into()),
                key: Some("node.key".into()),
            },
            ..secure.clone()
        };
        assert!(error_of(with_tls.clone()).starts_with("cluster-secret: is required"));
        let mut ok = with_tls.clone();
        ok.cluster.secret = "s3cret".into();
        ok.validate().unwrap();
        assert!(!ok.is_insecure());
        let c = NodeConfig { insecure: true, ..secure };
        assert!(error_of(c).starts_with("insecure: plaintext"));
        // Development mode alone still needs TLS; with --insecure it runs in plaintext.
        let c = NodeConfig { insecure: false, ..base() };
        assert!(error_of(c).starts_with("tls.ca_cert"));
        assert!(base().is_insecure());
    }

    #[test]
    fn the_peer_address_follows_the_client_address() {
        let c = NodeConfig {
            advertise: Some("dynamo-a-0.dynamo-peers.ns.svc:7070".into()),
            peer_listen: "0.0.0.0:7071".into(),
            ..base()
        };
        assert_eq!(c.peer_advertise_addr(), "dynamo-a-0.dynamo-peers.ns.svc:7071");
        let c = NodeConfig { peer_advertise: Some("10.0.0.1:9000".into()), ..c };
        assert_eq!(c.peer_advertise_addr(), "10.0.0.1:9000");
    }

    #[test]
    fn every_flag_reads_exactly_the_contracts_environment_variables() {
        use clap::CommandFactory as _;
        let mut read: Vec<String> = NodeArgs::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        read.sort();
        let mut contract: Vec<String> = env::ALL.iter().map(|e| e.to_string()).collect();
        contract.sort();
        assert_eq!(read, contract, "contract::env::ALL and NodeArgs' env names differ");
    }

    #[test]
    fn flags_override_file_and_toml_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, base().to_toml()).unwrap();
        let args = NodeArgs {
            config: Some(path.clone()),
            zone: Some("zone-z".into()),
            w: Some(3),
            ..NodeArgs::default()
        };
        let c = NodeConfig::load(args).unwrap();
        assert_eq!(c.zone, "zone-z");
        assert_eq!(c.quorum().w, 3);
        assert_eq!(c.seeds, base().seeds);
        std::fs::write(&path, "id = \"x\"\nbogus = 1\n").unwrap();
        let err = NodeConfig::load(NodeArgs { config: Some(path), ..NodeArgs::default() });
        assert!(err.unwrap_err().to_string().contains("bogus"));
    }
}
