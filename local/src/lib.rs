//! Local clusters of real `dynamo-node` processes on one machine, for people (`dynamoctl dev
//! up`) and for tests (`dynamo-tests`): find the binary, write a node's `node.toml`, start it
//! with its log beside it, wait until it serves and until the nodes share one ring, signal it,
//! stop it cleanly. What a cluster looks like (ids, ports, zones, settings) is the caller's
//! choice; this crate only runs the processes, and keeps a local cluster's CA, certificates
//! and tokens ([`pki`]).

pub mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use dynamo_api::config::NodeConfig;
use dynamo_api::security::Credentials;
use dynamo_client::Client;

/// Why a node could not be launched or did not come up.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The `dynamo-node` binary was not found.
    #[error("{0}")]
    Binary(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// The configuration does not validate.
    #[error("invalid configuration for {id}: {message}")]
    Config { id: String, message: String },
    /// The process exited while it was expected to come up.
    #[error("{id} exited during start-up ({status}); the end of its log {log}:\n{tail}")]
    Exited { id: String, status: ExitStatus, log: PathBuf, tail: String },
    /// The process or the cluster did not get there in time.
    #[error("{what} within {} s; the end of the log {log}:\n{tail}", limit.as_secs())]
    Timeout { what: String, limit: Duration, log: PathBuf, tail: String },
    /// Waiting was interrupted (the shutdown signal arrived).
    #[error("interrupted while starting")]
    Interrupted,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// Finds the `dynamo-node` binary: `explicit` (a flag), `$DYNAMO_NODE_BIN`, next to the running
/// executable (or its parent, for cargo's `deps/` test binaries), then `$PATH`.
pub fn node_binary(explicit: Option<PathBuf>) -> Result<PathBuf, LaunchError> {
    let explicit = explicit.or_else(|| std::env::var_os("DYNAMO_NODE_BIN").map(PathBuf::from));
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(LaunchError::Binary(format!("dynamo-node binary {} does not exist", p.display())))
        };
    }
    if let Some(p) = sibling_binary("dynamo-node") {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("dynamo-node"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            LaunchError::Binary(
                "cannot find the dynamo-node binary: build it (cargo build) or pass --node-bin"
                    .into(),
            )
        })
}

/// A binary named `name` next to the running executable: `target/<profile>/<name>` for a
/// binary in `target/<profile>/` or a test in `target/<profile>/deps/`.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.ends_with("deps") {
        dir = dir.parent()?;
    }
    Some(dir.join(name)).filter(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1 for a server the caller starts soon after. It is taken below
/// the kernel's ephemeral range, so no outgoing connection (of the nodes, the clients, other
/// tests) can take it between this check and the server's bind, as happens with a port the
/// kernel picks for `bind(0)`; and it is never handed out twice by one process.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Where this process starts looking: spread by pid, so concurrent processes rarely probe
    // the same ports.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let low = ephemeral_low();
    if low <= FIRST_PORT + 1000 {
        // A system whose ephemeral range starts very low: fall back to the kernel's choice.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        return Ok(listener.local_addr()?.port());
    }
    let span = u32::from(low - FIRST_PORT);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = FIRST_PORT + (NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("every port in {FIRST_PORT}..{low} on 127.0.0.1 is in use"),
    ))
}

/// The lowest port [`free_port`] hands out.
const FIRST_PORT: u16 = 20000;

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// One `dynamo-node` process with its folder (`node.toml`, `node.log`, data). Dropping it
/// kills the process, so nothing outlives a failed test or an interrupted launcher.
pub struct NodeProcess {
    pub id: String,
    /// Where clients reach it (its client port, HOST:PORT).
    pub address: String,
    /// Where admins and other nodes reach it (its peer port, HOST:PORT).
    pub peer_address: String,
    /// Where its Prometheus metrics are served (`GET /metrics`, HOST:PORT).
    pub metrics_address: String,
    /// What the launcher calls it with (an admin credential, or none for an insecure node).
    pub credentials: Credentials,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    /// Validates `config` and writes it to `folder/node.toml`; the log goes to
    /// `folder/node.log`. `credentials` (admin, for a TLS node) are what the launcher waits for
    /// the node with. Does not start anything.
    pub fn prepare(
        config: &NodeConfig,
        folder: &Path,
        credentials: Credentials,
    ) -> Result<NodeProcess, LaunchError> {
        config
            .validate()
            .map_err(|e| LaunchError::Config { id: config.id.clone(), message: e.to_string() })?;
        std::fs::create_dir_all(folder)
            .map_err(io(format!("cannot create {}", folder.display())))?;
        let config_path = folder.join("node.toml");
        std::fs::write(&config_path, config.to_toml())
            .map_err(io(format!("cannot write {}", config_path.display())))?;
        Ok(NodeProcess {
            id: config.id.clone(),
            address: config.advertise_addr().to_string(),
            peer_address: config.peer_advertise_addr(),
            metrics_address: config.metrics_listen.clone(),
            credentials,
            config_path,
            data_dir: config.data_dir.clone().unwrap_or_else(|| folder.join("data")),
            log: folder.join("node.log"),
            child: None,
        })
    }

    /// Starts the process (`bin --config node.toml`), appending its output to the log.
    pub fn start(&mut self, bin: &Path) -> Result<(), LaunchError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("cannot open {}", self.log.display())))?;
        let err = log.try_clone().map_err(io("cannot duplicate the log file"))?;
        let mut command = Command::new(bin);
        command.arg("--config").arg(&self.config_path);
        // node.toml says everything: a DYNAMO_* variable of the caller's shell (e.g. the
        // DYNAMO_INSECURE an insecure dev cluster's export line set for dynamoctl) must not
        // override it.
        for var in dynamo_api::contract::env::ALL {
            command.env_remove(var);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io(format!("cannot start {}", bin.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the process was started and not killed (it may have exited on its own: see
    /// [`NodeProcess::exited`]).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The exit status, once the process has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `sig` (SIGSTOP, SIGCONT, SIGTERM, ...) to the process, if it runs.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
        }
    }

    /// kill -9, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`. Returns whether it stopped
    /// on its own.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        if self.child.is_none() {
            return true;
        }
        self.signal(libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self.exited().is_some() {
                self.child = None;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        false
    }

    /// Polls until the node answers a status call on its peer port, failing early if the
    /// process exits.
    pub async fn wait_serving(&mut self, limit: Duration) -> Result<(), LaunchError> {
        let client = self.client(Duration::from_secs(2))?;
        let mut last;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Err(LaunchError::Exited {
                    id: self.id.clone(),
                    status,
                    log: self.log.clone(),
                    tail: self.log_tail(30),
                });
            }
            match client.status().await {
                Ok(_) => return Ok(()),
                // A node that refuses the launcher's credentials will not accept them later.
                Err(e) if e.is_auth() => {
                    return Err(LaunchError::Config { id: self.id.clone(), message: e.to_string() })
                }
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(LaunchError::Timeout {
                    what: format!("{} did not serve (last: {last})", self.id),
                    limit,
                    log: self.log.clone(),
                    tail: self.log_tail(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of this node alone (not partition-aware) with the launcher's credentials:
    /// data calls and the ring to its client port, admin calls to its peer port.
    pub fn client(&self, timeout: Duration) -> Result<Client, LaunchError> {
        Client::builder([self.address.as_str()])
            .partition_aware(false)
            .credentials(self.credentials.clone())
            .admin_endpoint(self.peer_address.as_str())
            .timeout(timeout)
            .build()
            .map_err(|e| LaunchError::Config { id: self.id.clone(), message: e.to_string() })
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // A paused process cannot die of SIGKILL until continued.
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// Polls until every node in `nodes` reports a ring with `members` members and the same layout
/// epoch: the cluster has formed.
pub async fn wait_for_one_ring(
    nodes: &[NodeProcess],
    members: usize,
    limit: Duration,
) -> Result<(), LaunchError> {
    let clients =
        nodes.iter().map(|n| n.client(Duration::from_secs(2))).collect::<Result<Vec<_>, _>>()?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut epochs = Vec::new();
        for client in &clients {
            let ring = client.ring().await.ok().filter(|r| r.members.len() == members);
            epochs.push(ring.map(|r| r.epoch));
        }
        if epochs.iter().all(|e| e.is_some() && *e == epochs[0]) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            // Not empty: without nodes every epoch agrees at once.
            let first = &nodes[0];
            return Err(LaunchError::Timeout {
                what: format!("the {} nodes did not form one ring", nodes.len()),
                limit,
                log: first.log.clone(),
                tail: first.log_tail(15),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice: {ports:?}");
        let low = ephemeral_low();
        for port in ports {
            if low > FIRST_PORT + 1000 {
                assert!((FIRST_PORT..low).contains(&port), "{port} is not in {FIRST_PORT}..{low}");
            }
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
    }
}
