//! `dynamo-operator`: connects to Kubernetes (kubeconfig or in-cluster), serves /metrics,
//! /healthz and /readyz, and runs the DynamoCluster controller, behind a leader election Lease
//! unless told otherwise. SIGTERM or Ctrl-C stop everything through one cancellation token.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use dynamo_operator::admin::GrpcAdmin;
use dynamo_operator::config::Config;
use dynamo_operator::controller::{self, Context};
use dynamo_operator::leader::{LeaderElector, LeaseConfig};
use dynamo_operator::metrics::{self, Metrics};
use dynamo_operator::render::{parse_labels, RenderOptions, DEFAULT_OPERATOR_NAMESPACE};
use dynamo_operator::DynamoCluster;
use kube::api::ListParams;
use kube::Api;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate()?;
    let filter = EnvFilter::try_new(&config.log_level).with_context(|| {
        format!("--log-level '{}' is not a valid filter; try info or debug", config.log_level)
    })?;
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let shutdown = CancellationToken::new();
    // Runs until a signal arrives, then cancels every task; it is not joined because it ends
    // only with the process.
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(config.metrics_addr).await.with_context(|| {
        format!("cannot listen on --metrics-addr {}: pick a free address", config.metrics_addr)
    })?;
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown.clone()));

    let client = client(&config).await?;
    let clusters: Api<DynamoCluster> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    clusters.list(&ListParams::default().limit(1)).await.context(
        "cannot list DynamoClusters: install the CRD (kubectl apply -f crds/dynamoclusters.yaml, or the Helm chart) \
         and check the operator's RBAC",
    )?;
    metrics.set_ready(true);

    let identity = config.identity.clone().unwrap_or_else(default_identity);
    let admin = GrpcAdmin { timeout: Duration::from_millis(config.admin_timeout_ms) };
    let own_namespace = config.lease_namespace.clone().or_else(|| {
        std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok().map(|s| s.trim().to_string())
    });
    let options = RenderOptions {
        cluster_domain: config.cluster_domain.clone(),
        operator_namespace: config
            .operator_namespace
            .clone()
            .or_else(|| own_namespace.clone())
            .unwrap_or_else(|| DEFAULT_OPERATOR_NAMESPACE.into()),
        operator_labels: parse_labels(&config.operator_pod_labels)
            .context("--operator-pod-labels was validated")?,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(admin),
        metrics.clone(),
        options,
        Some(identity.clone()),
    ));
    let namespace = config.namespace.clone();
    tracing::info!(namespace = namespace.as_deref().unwrap_or("<all>"), %identity, "dynamo-operator starting");

    let result = if config.leader_elect {
        let (lease_duration, renew_deadline, retry_period) = config.lease_timings();
        let lease_namespace = own_namespace.unwrap_or_else(|| "default".into());
        let elector = LeaderElector::new(
            client,
            LeaseConfig {
                name: config.lease_name.clone(),
                namespace: lease_namespace,
                identity,
                lease_duration,
                renew_deadline,
                retry_period,
            },
        );
        let leader_metrics = metrics.clone();
        elector
            .run(
                shutdown.clone(),
                move |leader| leader_metrics.set_leader(leader),
                |token| controller::run(ctx, namespace, token),
            )
            .await
            .map_err(anyhow::Error::from)
    } else {
        metrics.set_leader(true);
        controller::run(ctx, namespace, shutdown.clone()).await;
        Ok(())
    };
    shutdown.cancel();
    server
        .await
        .context("the metrics server task panicked")?
        .context("the metrics server failed")?;
    result
}

/// A client from `--kubeconfig`, else the usual places (KUBECONFIG, ~/.kube/config, in-cluster).
async fn client(config: &Config) -> anyhow::Result<kube::Client> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration found: pass --kubeconfig, set KUBECONFIG, or run in a pod with a service account",
        )?,
    };
    kube::Client::try_from(kube_config)
        .context("cannot build a Kubernetes client from the configuration")
}

/// Host name plus a random suffix: unique even for two operators on one machine.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dynamo-operator".into());
    format!("{host}-{}", &dynamo_operator::render::random_secret()[..8])
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
    shutdown.cancel();
}
