//! The operator as a user installs it, except that it runs out of cluster: the chart is
//! installed with helm (CRD, RBAC, service account; its Deployment scaled to zero) and the
//! operator binary runs on the host with a kubeconfig holding a token of the chart's service
//! account, so it has exactly the chart's permissions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::control_plane::{kubeconfig, ControlPlane};
use crate::process::{run, Process};

/// Namespace of the chart's release.
pub const NAMESPACE: &str = "dynamo-system";
/// Release name (also the service account's name).
pub const RELEASE: &str = "dynamo-operator";

/// `helm install` of `charts/dynamo-operator` from `repo`; returns a kubeconfig for the chart's
/// service account, written in the run's directory.
pub fn install_chart(cp: &ControlPlane, repo: &Path) -> anyhow::Result<PathBuf> {
    let chart = repo.join("charts/dynamo-operator");
    run(cp.helm().args([
        "install",
        RELEASE,
        &chart.display().to_string(),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--set",
        "replicaCount=0",
    ]))?;
    run(cp.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/dynamoclusters.dynamokv.io",
    ]))?;
    let token =
        run(cp.kubectl().args(["create", "token", RELEASE, "-n", NAMESPACE, "--duration=24h"]))
            .context("a token for the chart's service account")?;
    let path = cp.dir.join("operator.kubeconfig");
    std::fs::write(&path, kubeconfig(&cp.dir, &cp.server, Some(token.trim()))?)?;
    Ok(path)
}

/// The operator process.
pub struct Operator {
    binary: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

impl Operator {
    /// An operator (not started) running `binary` with `kubeconfig`, logging to `log`.
    pub fn new(binary: PathBuf, kubeconfig: PathBuf, log: PathBuf) -> Operator {
        Operator { binary, kubeconfig, log, process: None }
    }

    /// Starts it, with leader election in the chart's namespace as in the cluster.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut c = Command::new(&self.binary);
        c.args([
            "--kubeconfig",
            &self.kubeconfig.display().to_string(),
            "--metrics-addr",
            &format!("127.0.0.1:{}", dynamo_local::free_port()?),
            "--lease-namespace",
            NAMESPACE,
            "--log-level",
            "info,kube=warn",
        ]);
        self.process = Some(Process::spawn("dynamo-operator", c, &self.log)?);
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::ZERO);
        }
    }

    /// Whether it is running (false after it exited or was killed).
    pub fn running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| !p.exited())
    }

    /// The end of its log.
    pub fn tail(&self, lines: usize) -> String {
        crate::process::tail(&self.log, lines)
    }
}
