//! The Rust client library for Dynamo: get, put, delete and the admin calls, with errors a user
//! can act on and plain Rust types (no generated protobuf types in its API; a node's error
//! carries its gRPC status code as a `tonic::Code`). It does not build a storage engine: an
//! application depends on this crate alone.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynamo_client::ClientError> {
//! use std::path::Path;
//! use std::time::Duration;
//! use dynamo_client::{Client, Credentials};
//!
//! // The cluster's CA certificate (to verify the nodes) and a token with the readwrite role.
//! let credentials = Credentials::load(Some(Path::new("ca.crt")), None, None, Some(token()))
//!     .map_err(|e| dynamo_client::ClientError::Settings(e.to_string()))?;
//! let client = Client::builder(["127.0.0.1:7070"])
//!     .credentials(credentials)
//!     .timeout(Duration::from_secs(5))
//!     .build()?;
//! // A blind write: without a context it becomes a sibling of whatever the key holds.
//! client.put(b"cart:42", b"{\"items\":[1]}".to_vec(), Vec::new(), None).await?;
//! // Read every concurrent value and one context covering them...
//! let got = client.get(b"cart:42", None).await?;
//! // ...resolve the siblings in the application, then write the result with that context:
//! // it supersedes exactly what this get saw.
//! let merged = got.values.concat();
//! client.put(b"cart:42", merged, got.context, None).await?;
//! # Ok(()) }
//! # fn token() -> String { String::new() }
//! ```
//!
//! # Credentials and the admin endpoint
//!
//! Nodes serve TLS; a client verifies them with the cluster's CA certificate and proves who it
//! is with a client certificate of that CA or a bearer token ([`ClientBuilder::credentials`]),
//! whose role (read, readwrite, admin) decides what it may do. Data calls and the ring go to a
//! node's client port (7070 by default). Admin calls (status, decommission, repair) go to one
//! node's peer port (7071 by default), named with [`ClientBuilder::admin_endpoint`], and need
//! the admin role. A node refusing a credential answers `UNAUTHENTICATED` or
//! `PERMISSION_DENIED` ([`ClientError::Unauthenticated`], [`ClientError::PermissionDenied`]);
//! such a call is never sent to another node. [`Client::new`] talks plaintext without a
//! credential: only to a `--dev --insecure` node.
//!
//! # Partition-aware routing
//!
//! [`Client::new`] sends every request to its one endpoint, which coordinates it (forwarding a
//! put to one of the key's replicas when it is not one itself). A client built with
//! [`Client::builder`] is partition-aware by default (the paper's section 6.4): it fetches the
//! ring from a node, computes each key's preference list with the node's own code
//! ([`dynamo_api::ring`]) and sends a request straight to the key's first replica it can reach,
//! saving the forwarding hop. It keeps one connection per node, fetches the ring again when a
//! node answers with a newer layout epoch or a node cannot be reached, and uses the seed
//! endpoints while it has no ring or reaches none of the ring's nodes. A request that nothing
//! received (connection refused) goes to the next node; a write that may have been applied (a
//! timeout, a connection broken mid-call) is never sent again.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynamo_client::ClientError> {
//! use std::time::Duration;
//! use dynamo_client::Client;
//!
//! let client = Client::builder(["10.0.0.1:7070", "10.0.0.2:7070"])
//!     .timeout(Duration::from_secs(5))
//!     .partition_aware(true)
//!     .retries(2)
//!     .build()?;
//! // Optional: fetch the ring now, so the first request is routed too.
//! client.refresh_ring().await?;
//! client.put(b"cart:42", b"{}".to_vec(), Vec::new(), None).await?;
//! println!("routing with layout epoch {:?}", client.ring_epoch());
//! # Ok(()) }
//! ```

mod backoff;
mod error;
pub mod metrics;
mod pool;
pub mod routing;
#[cfg(test)]
mod tests;
mod types;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dynamo_api::contract;
use dynamo_api::pb::admin::{
    admin_client::AdminClient, BackupRequest, DecommissionRequest, DeleteBackupRequest,
    ListBackupsRequest, RepairRequest, RestoreRequest, StatusRequest,
};
use dynamo_api::pb::client::{
    client_client::ClientClient, DeleteRequest, GetRequest, PutRequest, RingRequest,
};
use tonic::{Code, Status};

use error::{Delivery, Failure, Op};
use pool::{Dialer, Pool, Transport};
use routing::Health;

pub use backoff::DEFAULT_OVERLOAD_RETRIES;
pub use dynamo_api::security::Credentials;
pub use error::ClientError;
pub use pool::channel;
pub use routing::Router;
pub use types::{
    BackupInfo, ClusterStatus, Decommissioned, Hints, MemberState, NodeBackup, NodeInfo,
    NodeRestore, RepairReport, RingLayout, RingMember, Transfer, TransferState, Versions,
    WorkerInfo, Written,
};

/// Default per-call timeout of [`Client::builder`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`ClientBuilder::retries`]: with N = 3, a request tries every replica of its key.
pub const DEFAULT_RETRIES: usize = 2;

/// After a failed ring fetch, how long the client waits before fetching on its own again (an
/// explicit [`Client::refresh_ring`] is not held back).
const REFRESH_BACKOFF: Duration = Duration::from_secs(1);

/// Pause before a request a node declined (not ready) goes to the next node: rings disagree
/// briefly while a layout change propagates.
const DECLINED_PAUSE: Duration = Duration::from_millis(20);

/// Settings of a [`Client`]; start with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    /// Endpoints (HOST:PORT) to start from and fall back to.
    seeds: Vec<String>,
    /// Per-call timeout.
    timeout: Duration,
    /// Whether requests are routed to the key's replicas.
    partition_aware: bool,
    /// How many more nodes a request may go to after one that could not take it.
    retries: usize,
    /// How many times a request a node refused as overloaded is sent again.
    overload_retries: usize,
    /// CA, client certificate and token for every call.
    credentials: Credentials,
    /// Where admin calls go (a node's peer port); None: the first seed.
    admin_endpoint: Option<String>,
}

impl ClientBuilder {
    /// The credentials every call presents (default: none, plaintext, for a `--dev
    /// --insecure` cluster): the CA to verify nodes with, and a client certificate and/or a
    /// bearer token.
    pub fn credentials(mut self, credentials: Credentials) -> ClientBuilder {
        self.credentials = credentials;
        self
    }

    /// Where admin calls (status, decommission, repair, faults) go: a node's peer port,
    /// HOST:PORT (default: the first seed, which answers only if it is a peer port).
    pub fn admin_endpoint(mut self, address: impl Into<String>) -> ClientBuilder {
        self.admin_endpoint = Some(address.into()).filter(|a| !a.trim().is_empty());
        self
    }

    /// How long one call may take (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// Whether to route each request to the key's replicas (default true). Off: requests go to
    /// the seeds, in order, the next one only when a seed cannot be reached.
    pub fn partition_aware(mut self, on: bool) -> ClientBuilder {
        self.partition_aware = on;
        self
    }

    /// How many more nodes a request may go to after one that nothing reached or that
    /// declined it (default [`DEFAULT_RETRIES`]); the seeds are tried after these in any case.
    pub fn retries(mut self, retries: usize) -> ClientBuilder {
        self.retries = retries;
        self
    }

    /// How many times a request that a node refused because it was overloaded
    /// (`RESOURCE_EXHAUSTED`, "node overloaded, retry with backoff") is sent again, after a
    /// jittered exponential backoff (25 ms doubling to at most 1 s; default
    /// [`DEFAULT_OVERLOAD_RETRIES`]). Such a refusal comes before the node reads the request, so
    /// a write is never applied twice. 0: the refusal goes to the caller at once.
    pub fn overload_retries(mut self, retries: usize) -> ClientBuilder {
        self.overload_retries = retries;
        self
    }

    /// The client. No I/O: it connects on first use. Fails without a seed or with one that is
    /// not HOST:PORT.
    pub fn build(self) -> Result<Client, ClientError> {
        let seeds: Vec<String> =
            self.seeds.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).fold(
                Vec::new(),
                |mut out, s| {
                    if !out.contains(&s) {
                        out.push(s);
                    }
                    out
                },
            );
        if seeds.is_empty() {
            return Err(ClientError::NoEndpoint);
        }
        let dialer = Dialer::new(self.timeout, self.credentials)?;
        let admin_endpoint =
            self.admin_endpoint.map(|a| a.trim().to_string()).unwrap_or_else(|| seeds[0].clone());
        let admin = dialer.admin(&admin_endpoint)?;
        let pool = Pool::new(dialer);
        for seed in &seeds {
            pool.get(seed)?;
        }
        Ok(Client {
            inner: Arc::new(Inner {
                admin_endpoint,
                admin,
                state: Mutex::new(State {
                    router: Router::new(seeds.clone()),
                    health: Health::default(),
                    refresh_failed_at: None,
                }),
                seeds,
                timeout: self.timeout,
                partition_aware: self.partition_aware,
                retries: self.retries,
                overload_retries: self.overload_retries,
                pool,
                refreshing: AtomicBool::new(false),
            }),
        })
    }
}

/// A client of a Dynamo cluster. Cheap to clone: clones share connections and the ring.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What clones of a client share.
struct Inner {
    /// The endpoints given, deduplicated, in order; [`Client::ring`] asks the first.
    seeds: Vec<String>,
    /// Where admin calls go.
    admin_endpoint: String,
    /// The admin API there (its own channel: a peer port is not a member's client address).
    admin: AdminClient<Transport>,
    /// Per-call timeout.
    timeout: Duration,
    /// Whether requests are routed with the ring.
    partition_aware: bool,
    /// See [`ClientBuilder::retries`].
    retries: usize,
    /// See [`ClientBuilder::overload_retries`].
    overload_retries: usize,
    /// One connection per node.
    pool: Pool,
    /// The ring and the nodes seen down. Locked briefly, never across an await.
    state: Mutex<State>,
    /// Set while a ring fetch runs, so there is one at a time.
    refreshing: AtomicBool,
}

/// The client's routing state.
struct State {
    router: Router,
    health: Health,
    /// When the last ring fetch failed, to space out the next one.
    refresh_failed_at: Option<Instant>,
}

/// Clears [`Inner::refreshing`] when a ring fetch ends, also when its task is dropped.
struct Refreshing(Arc<Inner>);

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

impl Client {
    /// Prepares a client for `endpoint` (HOST:PORT); connects on first use. It sends every
    /// request to that node (not partition-aware); see [`Client::builder`] for routing.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Client, ClientError> {
        Client::builder([endpoint]).timeout(timeout).partition_aware(false).build()
    }

    /// Settings for a client starting from `seeds` (HOST:PORT each): partition-aware, with a
    /// timeout of [`DEFAULT_TIMEOUT`] and [`DEFAULT_RETRIES`] unless changed.
    pub fn builder<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> ClientBuilder {
        ClientBuilder {
            seeds: seeds.into_iter().map(Into::into).collect(),
            timeout: DEFAULT_TIMEOUT,
            partition_aware: true,
            retries: DEFAULT_RETRIES,
            overload_retries: DEFAULT_OVERLOAD_RETRIES,
            credentials: Credentials::insecure(),
            admin_endpoint: None,
        }
    }

    /// The first seed (HOST:PORT): the node [`Client::ring`] asks.
    pub fn endpoint(&self) -> &str {
        &self.inner.seeds[0]
    }

    /// Where admin calls go (HOST:PORT, a node's peer port).
    pub fn admin_endpoint(&self) -> &str {
        &self.inner.admin_endpoint
    }

    /// The seed endpoints, deduplicated, in the order given.
    pub fn seeds(&self) -> &[String] {
        &self.inner.seeds
    }

    /// Whether requests are routed to the key's replicas.
    pub fn is_partition_aware(&self) -> bool {
        self.inner.partition_aware
    }

    /// The layout epoch of the ring this client routes with; `None` while it has none (and
    /// always for a client that is not partition-aware).
    pub fn ring_epoch(&self) -> Option<u64> {
        self.inner.state().router.epoch()
    }

    /// The endpoints a request for `key` would try now, in order (the key's replicas first
    /// when the client has a ring; the seeds without one).
    pub fn endpoints_for(&self, key: &[u8]) -> Vec<String> {
        self.inner.plan(key)
    }

    /// Fetches the ring now (from the ring's members, then the seeds) and routes with it if it
    /// is newer; returns the epoch routed with. Does nothing on a client that is not
    /// partition-aware (returns `None`). It may run beside a background refresh: a ring is
    /// installed only if its epoch is newer than the one routed with, so the later of the two
    /// never replaces a newer ring with an older one.
    pub async fn refresh_ring(&self) -> Result<Option<u64>, ClientError> {
        if !self.inner.partition_aware {
            return Ok(None);
        }
        self.inner.fetch_ring(None).await.map(Some)
    }

    /// Every live value of `key` and the context to write it back with; `r` overrides the
    /// cluster's read quorum for this request.
    pub async fn get(&self, key: &[u8], r: Option<u32>) -> Result<Versions, ClientError> {
        self.route(key, Op::Read, |mut c| {
            let request = GetRequest { key: key.to_vec(), r };
            async move { c.get(request).await }
        })
        .await
    }

    /// Writes `value`, superseding what `context` covers (empty context: a new sibling); `w`
    /// overrides the cluster's write quorum for this request.
    pub async fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        context: Vec<u8>,
        w: Option<u32>,
    ) -> Result<Written, ClientError> {
        self.route(key, Op::Write, |mut c| {
            let request =
                PutRequest { key: key.to_vec(), value: value.clone(), context: context.clone(), w };
            async move { c.put(request).await }
        })
        .await
    }

    /// Deletes what `context` covers (writes a tombstone).
    pub async fn delete(
        &self,
        key: &[u8],
        context: Vec<u8>,
        w: Option<u32>,
    ) -> Result<Written, ClientError> {
        self.route(key, Op::Write, |mut c| {
            let request = DeleteRequest { key: key.to_vec(), context: context.clone(), w };
            async move { c.delete(request).await }
        })
        .await
    }

    /// The admin endpoint node's view of the cluster.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.admin(|mut c| async move { c.status(StatusRequest {}).await }).await
    }

    /// Starts decommissioning `node` (empty: the admin endpoint node); with `force`, removes it even
    /// if it does not answer.
    pub async fn decommission(
        &self,
        node: &str,
        force: bool,
    ) -> Result<Decommissioned, ClientError> {
        let request = DecommissionRequest { node_id: node.to_string(), force };
        self.admin(|mut c| async move { c.decommission(request).await }).await
    }

    /// Runs anti-entropy now on the admin endpoint node (one partition or all it replicates).
    pub async fn repair(&self, partition: Option<u32>) -> Result<RepairReport, ClientError> {
        self.admin(|mut c| async move { c.repair(RepairRequest { partition }).await }).await
    }

    /// Backs the cluster up to `destination` (`file:///absolute/path` or `s3://bucket/prefix`,
    /// S3 settings from the nodes' environment) under `id` (None: the start time): every node
    /// checkpoints and uploads what the destination does not hold yet. Takes as long as the
    /// upload: build the client with a long enough timeout.
    pub async fn backup(
        &self,
        destination: &str,
        id: Option<&str>,
    ) -> Result<BackupInfo, ClientError> {
        let request = BackupRequest {
            destination: destination.into(),
            backup_id: id.unwrap_or_default().into(),
            this_node_only: false,
        };
        self.admin(|mut c| async move { c.backup(request).await }).await
    }

    /// Restores backup `id` from `source` into this cluster (every node keeps the keys it
    /// replicates): per node, the keys read and kept.
    pub async fn restore(&self, source: &str, id: &str) -> Result<Vec<NodeRestore>, ClientError> {
        let request =
            RestoreRequest { source: source.into(), backup_id: id.into(), this_node_only: false };
        let reply: dynamo_api::pb::admin::RestoreResponse =
            self.admin(|mut c| async move { c.restore(request).await }).await?;
        Ok(reply.nodes.into_iter().map(Into::into).collect())
    }

    /// The complete backups at `destination`, oldest first.
    pub async fn backups(&self, destination: &str) -> Result<Vec<BackupInfo>, ClientError> {
        let request = ListBackupsRequest { destination: destination.into() };
        let reply: dynamo_api::pb::admin::ListBackupsResponse =
            self.admin(|mut c| async move { c.list_backups(request).await }).await?;
        Ok(reply.backups.into_iter().map(Into::into).collect())
    }

    /// Deletes backup `id` at `destination` and the files no other backup uses: (objects
    /// deleted, bytes freed).
    pub async fn delete_backup(
        &self,
        destination: &str,
        id: &str,
    ) -> Result<(u32, u64), ClientError> {
        let request = DeleteBackupRequest { destination: destination.into(), backup_id: id.into() };
        let reply: dynamo_api::pb::admin::DeleteBackupResponse =
            self.admin(|mut c| async move { c.delete_backup(request).await }).await?;
        Ok((reply.objects_deleted, reply.bytes_freed))
    }

    /// The partition layout, as the endpoint node (the first seed) has it, from its client
    /// port (the read role suffices). A partition-aware client also routes with it from now
    /// on, if it is newer than its own.
    pub async fn ring(&self) -> Result<RingLayout, ClientError> {
        let endpoint = self.endpoint();
        let mut conn = self.inner.pool.get(endpoint)?;
        let layout = conn
            .ring(RingRequest {})
            .await
            .map(|r| RingLayout::from(r.into_inner()))
            .map_err(|s| Failure::of(&s, endpoint, self.inner.timeout).error)?;
        if self.inner.partition_aware {
            // An invalid layout is the caller's to inspect; routing keeps its ring then.
            let _ = self.inner.install(&layout);
        }
        Ok(layout)
    }

    /// Polls until `node` reports `left` (every partition handed off), calling `progress` with
    /// each status seen; fails after `limit`.
    pub async fn wait_until_left(
        &self,
        node: &str,
        limit: Duration,
        mut progress: impl FnMut(&ClusterStatus),
    ) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = self.status().await?;
            if status.membership_of(node) == Some(MemberState::Left) {
                return Ok(());
            }
            progress(&status);
            if tokio::time::Instant::now() > deadline {
                let state = status.membership_of(node).map_or("absent", MemberState::as_str);
                return Err(ClientError::StillMember {
                    node: node.to_string(),
                    state,
                    waited_s: limit.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// An admin call to the admin endpoint: run it, convert the answer, classify a failure
    /// (a port without the admin API answers `UNIMPLEMENTED`: a client port).
    async fn admin<R, T: From<R>, Fut>(
        &self,
        call: impl FnOnce(AdminClient<Transport>) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let endpoint = &self.inner.admin_endpoint;
        call(self.inner.admin.clone()).await.map(|r| T::from(r.into_inner())).map_err(|s| {
            if s.code() == Code::Unimplemented && !contract::is_node_error(&s) {
                return ClientError::NotAdminPort { endpoint: endpoint.clone() };
            }
            Failure::of(&s, endpoint, self.inner.timeout).error
        })
    }

    /// The envelope of every data call: send it to the planned nodes in turn until one
    /// answers or the failure may not be retried (see [`Failure::may_retry`]); learn from the
    /// answer's epoch; convert the answer to the client's type.
    async fn route<R, T: From<R>, Fut>(
        &self,
        key: &[u8],
        op: Op,
        call: impl Fn(ClientClient<Transport>) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let inner = &self.inner;
        let mut queue: VecDeque<String> = inner.plan(key).into();
        let mut errors: Vec<ClientError> = Vec::new();
        let mut failed_over = false;
        let mut overload_retries = 0;
        while let Some(address) = queue.pop_front() {
            let conn = match inner.pool.get(&address) {
                Ok(conn) => conn,
                Err(e) => {
                    errors.push(e);
                    failed_over = true;
                    continue;
                }
            };
            match call(conn).await {
                Ok(response) => {
                    let epoch = response
                        .metadata()
                        .get(contract::EPOCH_KEY)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    inner.state().health.mark_up(&address);
                    if failed_over || inner.is_stale(epoch) {
                        Inner::spawn_refresh(inner, Some(address.clone()));
                    }
                    return Ok(T::from(response.into_inner()));
                }
                Err(status) => {
                    let failure = Failure::of(&status, &address, inner.timeout);
                    if matches!(failure.delivery, Delivery::Unreached | Delivery::Interrupted) {
                        inner.state().health.mark_down(&address, Instant::now());
                        failed_over = true;
                    }
                    if !failure.may_retry(op) {
                        if failed_over {
                            Inner::spawn_refresh(inner, None);
                        }
                        return Err(failure.error);
                    }
                    match failure.delivery {
                        // Refused unread: wait a jittered, growing while, then send it again,
                        // to the next node of the plan first, back to this one after.
                        Delivery::Overloaded if overload_retries < inner.overload_retries => {
                            tokio::time::sleep(backoff::delay(
                                overload_retries as u32,
                                backoff::unit(),
                            ))
                            .await;
                            overload_retries += 1;
                            queue.push_back(address);
                        }
                        Delivery::Declined if !queue.is_empty() => {
                            tokio::time::sleep(DECLINED_PAUSE).await
                        }
                        _ => {}
                    }
                    errors.push(failure.error);
                }
            }
        }
        Inner::spawn_refresh(inner, None);
        let overloaded = |e: &ClientError| e.code() == Some(Code::ResourceExhausted);
        match errors.len() {
            1 => Err(errors.remove(0)),
            // Overloaded every time: the last refusal says so, and how to go on.
            _ if errors.iter().all(overloaded) => Err(errors.pop().expect("not empty")),
            _ => Err(ClientError::Exhausted {
                errors: errors.iter().map(|e| e.to_string()).collect(),
            }),
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoints a request for `key` tries, in order (see [`Router::plan`]).
    fn plan(&self, key: &[u8]) -> Vec<String> {
        let now = Instant::now();
        let state = self.state();
        state.router.plan(key, |a| state.health.is_down(a, now), self.retries + 1)
    }

    /// Whether an answer carrying `epoch` says the ring routed with is out of date (or that
    /// there is none yet).
    fn is_stale(&self, epoch: Option<u64>) -> bool {
        if !self.partition_aware {
            return false;
        }
        match (epoch, self.state().router.epoch()) {
            (_, None) => true,
            (Some(seen), Some(held)) => seen > held,
            (None, Some(_)) => false,
        }
    }

    /// Routes with `layout` if it is newer; closes connections to nodes no longer in the ring.
    fn install(&self, layout: &RingLayout) -> Result<bool, dynamo_api::ring::RingError> {
        let mut state = self.state();
        let installed = state.router.install(layout)?;
        if installed {
            let keep = state.router.addresses();
            self.pool.retain(|a| keep.iter().any(|k| k == a));
            state.health.retain(Instant::now(), |a| keep.iter().any(|k| k == a));
        }
        Ok(installed)
    }

    /// Starts a ring fetch in the background, asking `first` first, unless one is running or
    /// the last one failed less than [`REFRESH_BACKOFF`] ago.
    fn spawn_refresh(inner: &Arc<Inner>, first: Option<String>) {
        if !inner.partition_aware || inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let flag = Refreshing(Arc::clone(inner));
        if inner.state().refresh_failed_at.is_some_and(|t| t.elapsed() < REFRESH_BACKOFF) {
            return;
        }
        // Detached on purpose: the request that noticed the stale ring must not wait for the
        // new one. The task ends on its own (it asks at most `retries + 1` nodes and the seeds,
        // each call bounded by the client's timeout), `flag` keeps it to one at a time, and a
        // failure is recorded in the state (`refresh_failed_at`), so nothing needs its result.
        tokio::spawn(async move {
            let _ = flag.0.fetch_ring(first).await;
            drop(flag);
        });
    }

    /// Asks `first`, then the ring's members and the seeds (those not marked down first), for
    /// the ring until one answers; installs it if newer. Returns the epoch routed with
    /// afterwards. At most `retries + 1` nodes beyond every seed are asked, so a client whose
    /// seeds are all gone still reaches the ring's live members.
    async fn fetch_ring(&self, first: Option<String>) -> Result<u64, ClientError> {
        let mut candidates: Vec<String> = first.into_iter().collect();
        {
            let now = Instant::now();
            let state = self.state();
            // Members first: they are the cluster as last seen; seeds may be long gone.
            let mut order = state.router.addresses();
            order.extend(state.router.seeds().iter().cloned());
            let (up, down): (Vec<String>, Vec<String>) =
                order.into_iter().partition(|a| !state.health.is_down(a, now));
            for a in up.into_iter().chain(down) {
                if !candidates.contains(&a) {
                    candidates.push(a);
                }
            }
        }
        candidates.truncate(self.retries + 1 + self.seeds.len());
        let mut errors = Vec::new();
        for address in &candidates {
            let mut conn = match self.pool.get(address) {
                Ok(conn) => conn,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match conn.ring(RingRequest {}).await {
                Ok(response) => {
                    let layout = RingLayout::from(response.into_inner());
                    if let Err(e) = self.install(&layout) {
                        let cause = e.to_string();
                        errors.push(ClientError::InvalidRing { endpoint: address.clone(), cause });
                        continue;
                    }
                    let mut state = self.state();
                    state.refresh_failed_at = None;
                    return Ok(state.router.epoch().unwrap_or(layout.epoch));
                }
                Err(status) => {
                    let failure = Failure::of(&status, address, self.timeout);
                    if failure.error.is_auth() {
                        // Every node checks credentials alike: asking the next one cannot help.
                        self.state().refresh_failed_at = Some(Instant::now());
                        return Err(failure.error);
                    }
                    if failure.delivery == Delivery::Unreached {
                        self.state().health.mark_down(address, Instant::now());
                    }
                    errors.push(failure.error);
                }
            }
        }
        self.state().refresh_failed_at = Some(Instant::now());
        match errors.len() {
            1 => Err(errors.remove(0)),
            _ => Err(ClientError::Exhausted {
                errors: errors.iter().map(|e| e.to_string()).collect(),
            }),
        }
    }
}
