//! A cluster of real `dynamo-node` processes, each with its own RocksDB data directory in a
//! temporary folder and its own ports on 127.0.0.1 (client, peer, health). Dropping the cluster
//! kills every process, also when a test fails, so nothing leaks.
//!
//! Security: a cluster runs with TLS by default, as a production one does. Each cluster has
//! its own CA ([`dynamo_local::pki`]), a peer certificate per node (SANs 127.0.0.1 and
//! localhost), a tokens file with one token per role (read, readwrite, admin), and a random
//! cluster secret. The harness calls the nodes with an admin client certificate ([`Access`]:
//! data, ring, status, faults) and reads a node's own replicas with a peer certificate of its
//! own. [`ClusterOptions::tls`] false starts `--dev --insecure` plaintext nodes instead (for
//! comparisons such as the benchmark's).
//!
//! Faults: [`Cluster::kill`] (SIGKILL) or [`Cluster::stop`] (SIGTERM, a clean stop) and
//! [`Cluster::restart`] on the same data directory,
//! [`Cluster::pause`] (SIGSTOP) and [`Cluster::resume_and_sync_faults`] (SIGCONT),
//! [`Cluster::wipe`] (delete a killed node's data directory), [`Cluster::partition`] and
//! [`Cluster::heal`]. Partitions are not made in the kernel (that would need root and network
//! namespaces) but with a fault switch inside the nodes' transport: the admin `SetFaults` call
//! (accepted only because the harness starts nodes with `fault_injection = true`) makes a
//! node refuse to send to, and to answer, the listed peers, in both directions. Only
//! node-to-node traffic is cut: test clients still reach every node, so a client talking to an
//! isolated node sees what a client on that side of a real partition would see.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use dynamo_api::config::{BackgroundConfig, ClusterConfig, EngineKind, Limits, NodeConfig};
use dynamo_api::pb::admin::{admin_client::AdminClient, SetFaultsRequest};
use dynamo_api::pb::internode::{internode_client::InternodeClient, FetchRequest};
use dynamo_api::ring::Ring;
use dynamo_api::security::{Credentials, Role};
use dynamo_client::{Client, ClusterStatus, MemberState};
use dynamo_local::pki::{self, LocalPki};
use dynamo_node::version::Clock;

pub use dynamo_local::free_port;

/// Shape of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub zones: usize,
    pub n: usize,
    pub r: usize,
    pub w: usize,
    pub partitions: u32,
    /// Coordinator quorum timeout.
    pub timeout_ms: u64,
    /// Anti-entropy worker pause between exchanges; 0 disables the worker (the default here,
    /// so tests see what read repair and hinted handoff do on their own).
    pub anti_entropy_interval_ms: u64,
    /// How often stand-ins offer hints to their nodes.
    pub handoff_interval_ms: u64,
    /// Pace of partition transfers (keys per second; 0: unlimited).
    pub transfer_keys_per_sec: u32,
    /// Settled time before a node deletes partitions it no longer replicates (0: never, the
    /// default here, so tests can inspect every copy).
    pub cleanup_after_ms: u64,
    /// How long a tombstone is held before it may be reaped.
    pub delete_grace_ms: u64,
    /// Pause between tombstone reaper passes; 0 (the default here) keeps every tombstone.
    pub reap_interval_ms: u64,
    /// TLS, certificates and tokens (the default); false: `--dev --insecure` plaintext nodes.
    pub tls: bool,
    /// The nodes' test-only fault switch (`SetFaults`), which [`Cluster::partition`] needs;
    /// on by default here.
    pub fault_injection: bool,
    /// Request size and concurrency limits (the node's defaults unless a test changes them).
    pub limits: Limits,
    /// How long a node keeps taking hints for a node that is down (the node's default, 3 h,
    /// unless a test shortens it).
    pub hint_window_ms: u64,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            zones: 3,
            n: 3,
            r: 2,
            w: 2,
            partitions: 64,
            timeout_ms: 1000,
            anti_entropy_interval_ms: 0,
            handoff_interval_ms: 200,
            transfer_keys_per_sec: 0,
            cleanup_after_ms: 0,
            delete_grace_ms: BackgroundConfig::default().delete_grace_ms,
            reap_interval_ms: 0,
            tls: true,
            fault_injection: true,
            limits: Limits::default(),
            hint_window_ms: BackgroundConfig::default().hint_window_ms,
        }
    }
}

impl ClusterOptions {
    /// One node, one zone, N = R = W = 1 (the rest as [`ClusterOptions::default`]).
    pub fn single_node() -> ClusterOptions {
        ClusterOptions { nodes: 1, zones: 1, n: 1, r: 1, w: 1, ..ClusterOptions::default() }
    }
}

/// The credentials the harness calls a cluster with.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// An admin client certificate (TLS) or nothing (plaintext): the client API, the ring,
    /// and the admin API on the peer port (status, faults, decommission).
    pub admin: Credentials,
    /// A peer certificate of the harness itself: the internode API, to read one node's own
    /// replica of a key (`Fetch`).
    pub peer: Credentials,
}

impl Access {
    /// For a `--dev --insecure` cluster: plaintext, no credential.
    pub fn insecure() -> Access {
        Access::default()
    }
}

/// The names of the tokens every TLS test cluster has, one per role.
fn token_name(role: Role) -> &'static str {
    match role {
        Role::Read => "reader",
        Role::ReadWrite => "writer",
        Role::Admin => "admin",
        Role::Peer => unreachable!("tokens never carry the peer role"),
    }
}

/// One node process, with the faults the harness applied to it.
pub struct NodeProcess {
    /// The process and its folder (id, address, config, data, log).
    process: dynamo_local::NodeProcess,
    paused: bool,
    /// Peers this node is currently partitioned from (re-applied after a restart).
    blocked: Vec<String>,
}

impl std::ops::Deref for NodeProcess {
    type Target = dynamo_local::NodeProcess;
    fn deref(&self) -> &dynamo_local::NodeProcess {
        &self.process
    }
}

/// See the module docs.
pub struct Cluster {
    /// Kept so the folder lives as long as the cluster.
    _dir: tempfile::TempDir,
    bin: PathBuf,
    pub nodes: Vec<NodeProcess>,
    opts: ClusterOptions,
    /// The cluster's CA, certificates and tokens (None: plaintext).
    pki: Option<LocalPki>,
    /// What the harness calls the nodes with.
    access: Access,
    /// Seals contexts; random per cluster.
    secret: String,
}

/// The dynamo-node binary: $DYNAMO_NODE_BIN, or the one cargo built next to the test binary.
pub fn node_binary() -> anyhow::Result<PathBuf> {
    Ok(dynamo_local::node_binary(None)?)
}

/// A binary of this workspace that cargo built next to the running test binary.
pub fn target_binary(name: &str) -> anyhow::Result<PathBuf> {
    dynamo_local::sibling_binary(name).with_context(|| {
        format!("{name} was not built next to this test: run `cargo build --bins` first (scripts/test does)")
    })
}

impl Cluster {
    /// Starts every node and waits until each one serves.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("dynamo-cluster-").tempdir()?;
        let bin = node_binary()?;
        let (pki, access) = if opts.tls {
            let pki = LocalPki::open_or_create(&dir.path().join("tls"), "test")?;
            for role in [Role::Read, Role::ReadWrite, Role::Admin] {
                pki.token(token_name(role), role)?;
            }
            let access = Access {
                admin: pki.issue_client("harness-admin", Role::Admin)?,
                peer: pki.issue_client("harness-peer", Role::Peer)?,
            };
            (Some(pki), access)
        } else {
            (None, Access::insecure())
        };
        let secret = dynamo_api::security::generate_token();
        let mut cluster =
            Cluster { _dir: dir, bin, nodes: Vec::new(), opts: opts.clone(), pki, access, secret };
        let ports: Vec<Ports> = (0..opts.nodes).map(|_| Ports::free()).collect::<Result<_, _>>()?;
        let seeds: Vec<String> = ports.iter().map(|p| p.peer.clone()).collect();
        for (i, p) in ports.iter().enumerate() {
            let node = cluster.prepare(i, p, &seeds)?;
            cluster.nodes.push(node);
        }
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_serving(i).await?;
        }
        cluster.wait_members(opts.nodes).await?;
        Ok(cluster)
    }

    /// Writes the configuration of node `i` (id `node-{i+1}`), with its certificate when the
    /// cluster runs TLS, and returns its handle.
    fn prepare(&self, i: usize, ports: &Ports, seeds: &[String]) -> anyhow::Result<NodeProcess> {
        let opts = &self.opts;
        let id = format!("node-{}", i + 1);
        let node_dir = self._dir.path().join(&id);
        std::fs::create_dir_all(&node_dir)?;
        let (tls, tokens_file) = match &self.pki {
            Some(pki) => (pki.issue_node(&id, &[])?, Some(pki.tokens_path())),
            None => Default::default(),
        };
        let config = NodeConfig {
            id: id.clone(),
            listen: ports.client.clone(),
            peer_listen: ports.peer.clone(),
            health_listen: ports.health.clone(),
            metrics_listen: ports.metrics.clone(),
            tls,
            tokens_file,
            dev: !opts.tls,
            insecure: !opts.tls,
            zone: format!("zone-{}", i % opts.zones),
            data_dir: Some(node_dir.join("data")),
            engine: EngineKind::Rocksdb,
            request_timeout_ms: opts.timeout_ms,
            fault_injection: opts.fault_injection,
            limits: opts.limits.clone(),
            cluster: ClusterConfig {
                name: "test".into(),
                secret: self.secret.clone(),
                partitions: opts.partitions,
                n: Some(opts.n),
                r: Some(opts.r),
                w: Some(opts.w),
            },
            seeds: seeds.to_vec(),
            gossip_interval_ms: 200,
            background: BackgroundConfig {
                anti_entropy_interval_ms: opts.anti_entropy_interval_ms,
                handoff_interval_ms: opts.handoff_interval_ms,
                transfer_keys_per_sec: opts.transfer_keys_per_sec,
                cleanup_after_ms: opts.cleanup_after_ms,
                hint_window_ms: opts.hint_window_ms,
                delete_grace_ms: opts.delete_grace_ms,
                reap_interval_ms: opts.reap_interval_ms,
                reap_keys_per_sec: 0,
                ..BackgroundConfig::default()
            },
            ..NodeConfig::default()
        };
        let process =
            dynamo_local::NodeProcess::prepare(&config, &node_dir, self.access.admin.clone())?;
        Ok(NodeProcess { process, paused: false, blocked: Vec::new() })
    }

    /// Starts one more node that joins through the running nodes as seeds; returns its index.
    /// It serves when this returns; wait for the ring with [`Cluster::wait_members`].
    pub async fn add_node(&mut self) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        let ports = Ports::free()?;
        let seeds: Vec<String> = (0..i)
            .filter(|j| self.is_running(*j))
            .map(|j| self.nodes[j].peer_address.clone())
            .collect();
        let node = self.prepare(i, &ports, &seeds)?;
        self.nodes.push(node);
        self.spawn(i)?;
        self.wait_serving(i).await?;
        Ok(i)
    }

    /// Asks node `i` to decommission itself and waits until every running node sees it left
    /// (its partitions moved); then it can be killed.
    pub async fn decommission(&mut self, i: usize) -> anyhow::Result<()> {
        self.client(i).decommission("", false).await?;
        let id = self.nodes[i].id.clone();
        let waited = self.client(i).wait_until_left(&id, Duration::from_secs(120), |_| {}).await;
        waited.with_context(|| format!("{id} did not leave:\n{}", self.log(i)))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        Ok(self.nodes[i].process.start(&self.bin)?)
    }

    /// Polls until every running node's ring has `count` members, all seen as normal, and no
    /// change is under way.
    pub async fn wait_members(&self, count: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut settled = true;
            for i in (0..self.nodes.len()).filter(|i| self.is_running(*i) && !self.nodes[*i].paused)
            {
                let ok = match (self.client(i).ring().await, self.client(i).status().await) {
                    (Ok(r), Ok(s)) => {
                        r.members.len() == count
                            && s.pending_partitions == 0
                            && r.members
                                .iter()
                                .all(|m| s.membership_of(&m.id) == Some(MemberState::Normal))
                    }
                    _ => false,
                };
                settled &= ok;
            }
            if settled {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the ring did not settle on {count} members within 60 s:\n{}", self.log(0));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls node `i` until it answers, failing early if its process exits.
    pub async fn wait_serving(&mut self, i: usize) -> anyhow::Result<()> {
        Ok(self.nodes[i].process.wait_serving(Duration::from_secs(30)).await?)
    }

    /// A client talking to node `i` with the admin credentials: data calls and the ring to
    /// its client port, admin calls to its peer port.
    pub fn client(&self, i: usize) -> Client {
        self.client_with_timeout(i, Duration::from_secs(10))
    }

    /// A client talking to node `i` whose requests give up after `timeout`.
    pub fn client_with_timeout(&self, i: usize, timeout: Duration) -> Client {
        self.nodes[i].process.client(timeout).expect("valid address")
    }

    /// A partition-aware client seeded with every node's client address, with the admin
    /// credentials (admin calls to node 0's peer port).
    pub fn routing_client(&self, timeout: Duration) -> Client {
        Client::builder(self.nodes.iter().map(|n| n.address.clone()))
            .credentials(self.access.admin.clone())
            .admin_endpoint(self.nodes[0].peer_address.as_str())
            .timeout(timeout)
            .build()
            .expect("valid addresses")
    }

    /// What the harness calls the nodes with.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The cluster's CA, certificates and tokens (None for a plaintext cluster).
    pub fn pki(&self) -> Option<&LocalPki> {
        self.pki.as_ref()
    }

    /// Whether the nodes run TLS.
    pub fn is_tls(&self) -> bool {
        self.pki.is_some()
    }

    /// Credentials with the cluster's token of `role` (read, readwrite or admin) and its CA.
    pub fn token_credentials(&self, role: Role) -> anyhow::Result<Credentials> {
        let pki = self.pki.as_ref().context("a plaintext cluster has no tokens")?;
        Ok(pki.token_credentials(&pki.token(token_name(role), role)?))
    }

    /// Credentials with a new client certificate `name` of `role` from the cluster's CA.
    pub fn cert_credentials(&self, name: &str, role: Role) -> anyhow::Result<Credentials> {
        let pki = self.pki.as_ref().context("a plaintext cluster has no CA")?;
        Ok(pki.issue_client(name, role)?)
    }

    /// The `dynamoctl` flags that reach node `i` with the admin credentials (`--endpoint`,
    /// `--admin-addr`, and `--ca-cert`/`--cert`/`--key`, or `--insecure`).
    pub fn dynamoctl_args(&self, i: usize) -> Vec<String> {
        let mut args = vec![
            "--endpoint".to_string(),
            self.nodes[i].address.clone(),
            "--admin-addr".to_string(),
            self.nodes[i].peer_address.clone(),
        ];
        match &self.pki {
            Some(pki) => {
                let dir = pki.dir();
                for (flag, file) in [
                    ("--ca-cert", pki::CA_CERT_FILE.to_string()),
                    ("--cert", "harness-admin.crt".to_string()),
                    ("--key", "harness-admin.key".to_string()),
                ] {
                    args.push(flag.to_string());
                    args.push(dir.join(file).display().to_string());
                }
            }
            None => args.push("--insecure".to_string()),
        }
        args
    }

    /// Where keys live: the ring as the first running, unpaused node reports it.
    pub async fn placement(&self) -> anyhow::Result<Placement> {
        let i = (0..self.nodes.len())
            .find(|&i| self.is_running(i) && !self.is_paused(i))
            .context("no node is running to ask for the ring")?;
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        Placement::of(&self.client(i), &ids)
            .await
            .with_context(|| format!("asking {} for the ring", self.nodes[i].id))
    }

    /// Node `i`'s Prometheus metrics, scraped from its metrics port and parsed.
    pub async fn metrics(&self, i: usize) -> anyhow::Result<Vec<dynamo_client::metrics::Sample>> {
        Ok(dynamo_client::metrics::parse(&self.metrics_text(i).await?))
    }

    /// Node `i`'s `/metrics` as served (the Prometheus text format).
    pub async fn metrics_text(&self, i: usize) -> anyhow::Result<String> {
        let address = &self.nodes[i].metrics_address;
        dynamo_client::metrics::scrape(address, Duration::from_secs(5))
            .await
            .with_context(|| format!("scraping {}", self.nodes[i].id))
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].process.kill();
        self.nodes[i].paused = false;
    }

    /// Stops node `i` cleanly (SIGTERM; it drains and records a clean stop), failing if it has
    /// not exited within 15 s.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].paused = false;
        if !self.nodes[i].process.stop(Duration::from_secs(15)).await {
            bail!("{} did not stop within 15 s of SIGTERM:\n{}", self.nodes[i].id, self.log(i));
        }
        Ok(())
    }

    /// Starts a killed node again on the same data directory and waits until it serves
    /// (with the partition it was in, if any).
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_serving(i).await?;
        self.apply_faults(i).await?;
        // A node whose data was wiped learns the ring again through gossip: wait for it, so
        // the caller's next request does not meet a node that has not rejoined yet.
        if self.nodes[i].blocked.len() + 1 < self.nodes.len() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while self.client(i).ring().await.is_err() {
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "{} did not rejoin the ring within 30 s:\n{}",
                        self.nodes[i].id,
                        self.log(i)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Network partition through the nodes' fault switch: nodes in different groups can no
    /// longer reach each other (in either direction); a node in no group is cut off from all.
    /// Test clients still reach every node. Killed or paused nodes get it when they return.
    pub async fn partition(&mut self, groups: &[&[usize]]) -> anyhow::Result<()> {
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        for i in 0..self.nodes.len() {
            let group: &[usize] = groups.iter().find(|g| g.contains(&i)).copied().unwrap_or(&[]);
            self.nodes[i].blocked = (0..ids.len())
                .filter(|j| *j != i && !group.contains(j))
                .map(|j| ids[j].clone())
                .collect();
        }
        for i in 0..self.nodes.len() {
            self.apply_faults(i).await?;
        }
        Ok(())
    }

    /// Removes every partition.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.nodes[i].blocked.clear();
            self.apply_faults(i).await?;
        }
        Ok(())
    }

    async fn apply_faults(&self, i: usize) -> anyhow::Result<()> {
        if !self.nodes[i].is_started() || self.nodes[i].paused {
            return Ok(());
        }
        let channel = dynamo_client::channel(
            &self.nodes[i].peer_address,
            Duration::from_secs(5),
            &self.access.admin,
        )?;
        let mut request =
            tonic::Request::new(SetFaultsRequest { blocked_peers: self.nodes[i].blocked.clone() });
        self.access.admin.authorize(&mut request);
        AdminClient::new(channel)
            .set_faults(request)
            .await
            .with_context(|| format!("setting faults on {}", self.nodes[i].id))?;
        Ok(())
    }

    /// Whether node `i` runs (not killed; it may be paused).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_started()
    }

    /// Whether node `i` is paused (SIGSTOP without SIGCONT yet).
    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.nodes[i].paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.nodes[i].paused = false;
    }

    /// SIGCONT, then re-applies the node's partition (it may have changed while paused).
    pub async fn resume_and_sync_faults(&mut self, i: usize) -> anyhow::Result<()> {
        self.resume(i);
        self.apply_faults(i).await
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        self.nodes[i].process.signal(sig);
    }

    /// Deletes node `i`'s data directory (kill it first).
    pub fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].is_started() {
            bail!("kill {} before wiping its data", self.nodes[i].id);
        }
        if self.nodes[i].data_dir.exists() {
            std::fs::remove_dir_all(&self.nodes[i].data_dir)?;
        }
        Ok(())
    }

    /// Node `i`'s own replica of a key, read directly (no quorum, no repair).
    pub async fn local_replica(&self, i: usize, key: &[u8]) -> anyhow::Result<Clock> {
        local_replica_at(&self.nodes[i].peer_address, &self.access.peer, key).await
    }

    /// The live values node `i` holds for a key, sorted.
    pub async fn local_values(&self, i: usize, key: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut v: Vec<Vec<u8>> = self
            .local_replica(i, key)
            .await?
            .live_values()
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        v.sort();
        Ok(v)
    }

    /// Node `i`'s status (its view of the cluster, hints it holds).
    pub async fn status(&self, i: usize) -> anyhow::Result<ClusterStatus> {
        Ok(self.client(i).status().await?)
    }

    /// The ring as node `i` has it.
    pub async fn ring(&self, i: usize) -> anyhow::Result<Ring> {
        Ok(self.client(i).ring().await?.to_ring()?)
    }

    /// Indices of the N replicas of `key` (by the ring of node 0).
    pub async fn replicas_of(&self, key: &[u8], n: usize) -> anyhow::Result<Vec<usize>> {
        let ring = self.ring(0).await?;
        Ok(ring
            .preference_list(ring.partition_of(key))
            .iter()
            .take(n)
            .map(|m| self.nodes.iter().position(|p| p.id == m.id.0).expect("member is a node"))
            .collect())
    }

    /// The last lines of node `i`'s log, for failure messages.
    pub fn log(&self, i: usize) -> String {
        self.nodes[i].log_tail(30)
    }
}

/// The ring of a running cluster, to find a key's replicas among the cluster's nodes.
pub struct Placement {
    ring: Ring,
    n: usize,
    /// Node id -> index in [`Cluster::nodes`].
    index: std::collections::HashMap<String, usize>,
}

/// The replica of `key` the node whose peer port is `peer_address` holds, read directly (no
/// quorum, no repair) with the internode API, so `peer` must carry a peer certificate of the
/// cluster's CA (or be plaintext for an insecure node).
pub async fn local_replica_at(
    peer_address: &str,
    peer: &Credentials,
    key: &[u8],
) -> anyhow::Result<Clock> {
    let channel = dynamo_client::channel(peer_address, Duration::from_secs(5), peer)?;
    let reply = InternodeClient::new(channel)
        .max_decoding_message_size(dynamo_api::contract::MAX_MESSAGE_BYTES)
        .fetch(FetchRequest { key: key.to_vec(), ..FetchRequest::default() })
        .await?
        .into_inner();
    if reply.clock.is_empty() {
        return Ok(Clock::new());
    }
    Ok(Clock::decode(&reply.clock)?)
}

impl Placement {
    /// The ring as the node behind `client` reports it; `ids[i]` names node `i`.
    pub async fn of(client: &Client, ids: &[String]) -> anyhow::Result<Placement> {
        let layout = client.ring().await?;
        let index = ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
        Ok(Placement { ring: layout.to_ring()?, n: layout.n as usize, index })
    }

    /// The replication factor N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The indices (in [`Cluster::nodes`]) of the N replicas of `key`, in preference order.
    pub fn replicas(&self, key: &[u8]) -> Vec<usize> {
        self.ring
            .preference_list(self.ring.partition_of(key))
            .into_iter()
            .take(self.n)
            .filter_map(|m| self.index.get(m.id.as_str()).copied())
            .collect()
    }
}

/// A node's four ports on 127.0.0.1.
struct Ports {
    client: String,
    peer: String,
    health: String,
    metrics: String,
}

impl Ports {
    fn free() -> std::io::Result<Ports> {
        let port = || free_port().map(|p| format!("127.0.0.1:{p}"));
        Ok(Ports { client: port()?, peer: port()?, health: port()?, metrics: port()? })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            self.kill(i);
        }
    }
}
