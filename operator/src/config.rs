//! `dynamo-operator` configuration: flags, each also an environment variable, documented in
//! `dynamo-operator --help` and checked once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Flags of `dynamo-operator`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dynamo-operator",
    version,
    about = "Kubernetes operator for Dynamo clusters (DynamoCluster resources)"
)]
pub struct Config {
    /// Kubeconfig file to use. Default: $KUBECONFIG, then ~/.kube/config, then the in-cluster
    /// service account.
    #[arg(long, env = "DYNAMO_OPERATOR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Watch DynamoClusters in this namespace only. Default: every namespace.
    #[arg(long, env = "DYNAMO_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the HTTP server for /metrics (Prometheus), /healthz and /readyz.
    #[arg(long, env = "DYNAMO_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `dynamo_operator=debug,kube=info`.
    #[arg(long, env = "DYNAMO_OPERATOR_LOG", default_value = "info")]
    pub log_level: String,
    /// Elect a leader through a Lease so several replicas can run; only the leader reconciles.
    /// Turn off (`--leader-elect=false`) for a single operator run by hand.
    #[arg(long, env = "DYNAMO_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader election Lease.
    #[arg(long, env = "DYNAMO_OPERATOR_LEASE_NAME", default_value = "dynamo-operator")]
    pub lease_name: String,
    /// Namespace of the Lease. Default: the operator pod's namespace (POD_NAMESPACE, or the
    /// service account's), else `default`.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in events. Default: POD_NAME, else the host name
    /// with a random suffix.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid without renewal (a standby takes over after that).
    #[arg(long, env = "DYNAMO_OPERATOR_LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// Seconds the leader keeps working without renewing; must be less than the lease duration.
    #[arg(long, env = "DYNAMO_OPERATOR_RENEW_DEADLINE_SECS", default_value_t = 10)]
    pub renew_deadline_secs: u64,
    /// Seconds between lease renewals (and attempts to acquire it).
    #[arg(long, env = "DYNAMO_OPERATOR_RETRY_PERIOD_SECS", default_value_t = 2)]
    pub retry_period_secs: u64,
    /// DNS domain of the Kubernetes cluster, used in the nodes' seed addresses.
    #[arg(long, env = "DYNAMO_OPERATOR_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Namespace of the operator's own pods: the nodes' NetworkPolicy lets pods of it (with
    /// --operator-pod-labels) reach the peer port. Default: --lease-namespace (POD_NAMESPACE),
    /// else the service account's namespace, else `dynamo-system`.
    #[arg(long, env = "DYNAMO_OPERATOR_POD_NAMESPACE")]
    pub operator_namespace: Option<String>,
    /// Labels of the operator's own pods (`key=value,...`), for the same NetworkPolicy rule.
    #[arg(
        long,
        env = "DYNAMO_OPERATOR_POD_LABELS",
        default_value = crate::render::DEFAULT_OPERATOR_LABELS
    )]
    pub operator_pod_labels: String,
    /// Milliseconds allowed for each call to a node's admin API (connect and answer).
    #[arg(long, env = "DYNAMO_OPERATOR_ADMIN_TIMEOUT_MS", default_value_t = 5000)]
    pub admin_timeout_ms: u64,
}

/// A flag combination that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {message}")]
pub struct ConfigError {
    /// The flag at fault.
    pub flag: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl Config {
    /// Checks the settings that clap cannot check alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_period_secs == 0 {
            return Err(ConfigError {
                flag: "retry-period-secs",
                message: "must be at least 1".into(),
            });
        }
        if self.renew_deadline_secs <= self.retry_period_secs {
            return Err(ConfigError {
                flag: "renew-deadline-secs",
                message: format!(
                    "{} must be more than --retry-period-secs ({}), or the leader gives up before retrying",
                    self.renew_deadline_secs, self.retry_period_secs
                ),
            });
        }
        if self.lease_duration_secs <= self.renew_deadline_secs {
            return Err(ConfigError {
                flag: "lease-duration-secs",
                message: format!(
                    "{} must be more than --renew-deadline-secs ({}), or two leaders could overlap",
                    self.lease_duration_secs, self.renew_deadline_secs
                ),
            });
        }
        if self.admin_timeout_ms == 0 {
            return Err(ConfigError {
                flag: "admin-timeout-ms",
                message: "must be at least 1".into(),
            });
        }
        if crate::render::parse_labels(&self.operator_pod_labels).is_none_or(|l| l.is_empty()) {
            return Err(ConfigError {
                flag: "operator-pod-labels",
                message: format!(
                    "'{}' is not a list of key=value labels (e.g. app.kubernetes.io/name=dynamo-operator)",
                    self.operator_pod_labels
                ),
            });
        }
        if self.cluster_domain.is_empty() || self.cluster_domain.contains('/') {
            return Err(ConfigError {
                flag: "cluster-domain",
                message: format!("'{}' is not a DNS domain", self.cluster_domain),
            });
        }
        Ok(())
    }

    /// Lease timings.
    pub fn lease_timings(&self) -> (Duration, Duration, Duration) {
        (
            Duration::from_secs(self.lease_duration_secs),
            Duration::from_secs(self.renew_deadline_secs),
            Duration::from_secs(self.retry_period_secs),
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_are_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::try_parse_from(["dynamo-operator"]).unwrap();
        c.validate().unwrap();
        assert!(c.leader_elect);
        assert_eq!(c.metrics_addr.port(), 8080);
        assert_eq!(c.operator_pod_labels, "app.kubernetes.io/name=dynamo-operator");
    }

    #[test]
    fn operator_pod_labels_must_be_labels() {
        let c =
            Config::try_parse_from(["dynamo-operator", "--operator-pod-labels", "app"]).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("--operator-pod-labels: 'app' is not a list"), "{err}");
    }

    #[test]
    fn leader_election_can_be_turned_off_and_timings_are_checked() {
        let c = Config::try_parse_from([
            "dynamo-operator",
            "--leader-elect=false",
            "--namespace",
            "db",
        ])
        .unwrap();
        assert!(!c.leader_elect);
        assert_eq!(c.namespace.as_deref(), Some("db"));
        let c = Config::try_parse_from(["dynamo-operator", "--lease-duration-secs", "10"]).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.starts_with(
                "--lease-duration-secs: 10 must be more than --renew-deadline-secs (10)"
            ),
            "{err}"
        );
    }
}
