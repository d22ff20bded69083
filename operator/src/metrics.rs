//! Prometheus metrics (text exposition format, written by hand: a few counters and gauges do
//! not need a registry) and the HTTP server for `/metrics`, `/healthz` and `/readyz`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// Counters and gauges of the operator. Shared by every task behind an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    reconcile_errors: AtomicU64,
    /// Sum of pass durations, in microseconds (exported in seconds).
    reconcile_micros: AtomicU64,
    scale_ups: AtomicU64,
    decommissions: AtomicU64,
    nodes_removed: AtomicU64,
    volumes_deleted: AtomicU64,
    pods_restarted: AtomicU64,
    nodes_replaced: AtomicU64,
    leader: AtomicBool,
    ready: AtomicBool,
    /// (namespace, name) -> (ready nodes, desired nodes).
    clusters: Mutex<BTreeMap<(String, String), (i64, i64)>>,
}

/// Something the controller did, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A StatefulSet was raised by one.
    ScaleUp,
    /// A node was asked to decommission.
    Decommission,
    /// A StatefulSet was lowered by one after its top node left.
    NodeRemoved,
    /// A removed node's volume claim was deleted.
    VolumeDeleted,
    /// A pod was deleted to restart it on a new revision (rollout).
    Restarted,
    /// A lost node's claim and pod were deleted to replace it.
    Replaced,
}

impl Metrics {
    /// Counts a finished pass that took `started.elapsed()`.
    pub fn reconciled(&self, started: Instant, ok: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.reconcile_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts an action.
    pub fn count(&self, action: Action) {
        let counter = match action {
            Action::ScaleUp => &self.scale_ups,
            Action::Decommission => &self.decommissions,
            Action::NodeRemoved => &self.nodes_removed,
            Action::VolumeDeleted => &self.volumes_deleted,
            Action::Restarted => &self.pods_restarted,
            Action::Replaced => &self.nodes_replaced,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a cluster's node counts after a pass.
    pub fn cluster_nodes(&self, namespace: &str, name: &str, ready: i64, desired: i64) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.insert((namespace.into(), name.into()), (ready, desired));
    }

    /// Drops the gauges of a cluster that was deleted.
    pub fn forget_cluster(&self, namespace: &str, name: &str) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.remove(&(namespace.to_string(), name.to_string()));
    }

    /// Keeps the gauges only of the clusters for which `exists` says yes (after a re-list,
    /// which reports no deletions).
    pub fn retain_clusters(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.retain(|(namespace, name), _| exists(namespace, name));
    }

    /// Sets whether this replica holds the leader lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Marks the operator ready (connected to the API server) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers OK.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            "dynamo_operator_reconciles_total",
            "Reconcile passes run.",
            load(&self.reconciles),
        );
        counter(
            "dynamo_operator_reconcile_errors_total",
            "Reconcile passes that failed.",
            load(&self.reconcile_errors),
        );
        counter(
            "dynamo_operator_scale_ups_total",
            "Nodes added (one StatefulSet raised by one).",
            load(&self.scale_ups),
        );
        counter(
            "dynamo_operator_decommissions_total",
            "Decommission requests sent to nodes.",
            load(&self.decommissions),
        );
        counter(
            "dynamo_operator_nodes_removed_total",
            "Nodes removed from their StatefulSet after leaving.",
            load(&self.nodes_removed),
        );
        counter(
            "dynamo_operator_volumes_deleted_total",
            "Volume claims of removed nodes deleted.",
            load(&self.volumes_deleted),
        );
        counter(
            "dynamo_operator_pods_restarted_total",
            "Pods deleted to restart them on a new template revision (rollouts).",
            load(&self.pods_restarted),
        );
        counter(
            "dynamo_operator_nodes_replaced_total",
            "Lost nodes replaced (claim and pod deleted after a forced removal).",
            load(&self.nodes_replaced),
        );
        let _ = writeln!(
            out,
            "# HELP dynamo_operator_reconcile_seconds_total Time spent in reconcile passes.\n\
             # TYPE dynamo_operator_reconcile_seconds_total counter\n\
             dynamo_operator_reconcile_seconds_total {}",
            load(&self.reconcile_micros) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP dynamo_operator_leader 1 when this replica holds the leader lease.\n\
             # TYPE dynamo_operator_leader gauge\ndynamo_operator_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        let clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        for (metric, help, pick) in [
            (
                "dynamo_operator_cluster_ready_nodes",
                "Nodes Ready (joined the ring) per cluster.",
                0,
            ),
            ("dynamo_operator_cluster_desired_nodes", "Nodes the spec asks for per cluster.", 1),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
            for ((namespace, name), (ready, desired)) in clusters.iter() {
                let value = if pick == 0 { ready } else { desired };
                let _ =
                    writeln!(out, "{metric}{{namespace=\"{namespace}\",name=\"{name}\"}} {value}");
            }
        }
        out
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not connected to the API server yet\n")
    }
}

/// The HTTP routes: `/metrics`, `/healthz` (the process runs), `/readyz` (connected).
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled. The caller binds, so a port
/// already in use fails the start-up instead of leaving the operator without health checks.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    axum::serve(listener, router(metrics)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lists_counters_and_cluster_gauges() {
        let m = Metrics::default();
        m.reconciled(Instant::now(), true);
        m.reconciled(Instant::now(), false);
        m.count(Action::ScaleUp);
        m.count(Action::Decommission);
        m.cluster_nodes("default", "demo", 2, 3);
        m.set_leader(true);
        let text = m.render();
        for line in [
            "dynamo_operator_reconciles_total 2",
            "dynamo_operator_reconcile_errors_total 1",
            "dynamo_operator_scale_ups_total 1",
            "dynamo_operator_decommissions_total 1",
            "dynamo_operator_nodes_removed_total 0",
            "dynamo_operator_leader 1",
            "dynamo_operator_cluster_ready_nodes{namespace=\"default\",name=\"demo\"} 2",
            "dynamo_operator_cluster_desired_nodes{namespace=\"default\",name=\"demo\"} 3",
            "# TYPE dynamo_operator_reconciles_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn deleted_clusters_lose_their_gauges() {
        let m = Metrics::default();
        m.cluster_nodes("default", "demo", 3, 3);
        m.cluster_nodes("default", "other", 1, 1);
        m.cluster_nodes("team", "third", 1, 1);
        m.forget_cluster("default", "demo");
        let text = m.render();
        assert!(!text.contains("name=\"demo\""), "{text}");
        assert!(text.contains("name=\"other\""), "{text}");
        m.retain_clusters(|namespace, _| namespace == "team");
        let text = m.render();
        assert!(!text.contains("name=\"other\"") && text.contains("name=\"third\""), "{text}");
    }

    #[tokio::test]
    async fn http_endpoints_answer() {
        let m = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, m.clone(), shutdown.clone()));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        m.set_ready(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("dynamo_operator_reconciles_total 0"), "{metrics}");
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
