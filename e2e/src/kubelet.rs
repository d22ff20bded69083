//! The harness's kubelet: runs the pods the scheduler binds to the fake nodes as real processes.
//!
//! For each pod on one of its nodes it creates a network namespace with the pod's own IP
//! ([`crate::network`]), resolves the container's environment the way the kubelet does (plain
//! values with `$(VAR)` expansion, `fieldRef`, `secretKeyRef`, `configMapKeyRef`), materialises
//! its volumes in a directory per pod (ConfigMap and Secret files, emptyDir, and for a
//! PersistentVolumeClaim the bound volume's directory, which outlives the pod) and starts the
//! program of the container's image inside the namespace. The one difference from a container:
//! the process sees the host's filesystem, so a mount path in the container's arguments or
//! environment (`/etc/dynamo/node.toml`, `/var/lib/dynamo`), or in a ConfigMap's file (the
//! TLS and token paths in `node.toml`), is rewritten to the directory that backs it.
//!
//! The pod is reported Running with its IP once the process runs, and Ready exactly when the
//! container's gRPC readiness probe answers SERVING (checked every [`TICK`]). A process that
//! exits is restarted (restartPolicy Always) and its restart count reported; a pod annotated
//! [`CRASH_ANNOTATION`] has its process killed and kept down, like a crash-looping container.
//! When the pod is deleted, the process gets SIGTERM (SIGKILL after the grace period, at most
//! 10 s), the namespace is removed, and the pod object is removed from the API.
//!
//! The machines it serves are a shared [`Machines`] set: the environment adds a Node (a new
//! machine) or takes one away, and then the processes of that machine's pods are killed at once
//! (SIGKILL, no grace: the machine is gone), their pod objects left to whoever deletes them.
//!
//! Each pass also runs the volume provisioner and resizer ([`crate::storage`]) for the machines
//! that exist.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateWaiting,
    ContainerStatus, HostIP, PersistentVolume, PersistentVolumeClaim, Pod, PodCondition, PodIP,
    PodStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::network::{Network, PodNetwork};
use crate::process::Process;
use crate::storage::Provisioner;

/// How often pods and volumes are reconciled and readiness probed.
pub const TICK: Duration = Duration::from_millis(500);
/// Longest a pod's process is given to exit on SIGTERM.
const MAX_GRACE: Duration = Duration::from_secs(10);
/// A pod annotated with this (value "true") has its process killed and not restarted: a
/// crash-looping pod, for tests of what the operator does with a dead node.
pub const CRASH_ANNOTATION: &str = "e2e.dynamokv.io/crash";

/// The machines (fake Nodes) that exist, shared by the environment, which adds and removes
/// them, and the kubelet, which runs the pods bound to them. Every change bumps a version, so
/// the environment can wait until the kubelet has acted on it ([`Kubelet::acted`]).
#[derive(Clone, Default)]
pub struct Machines(Arc<Mutex<(u64, BTreeSet<String>)>>);

impl Machines {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeSet<String>)> {
        // Each change is one assignment: a panic cannot leave the set half-updated.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a machine; returns the new version.
    pub fn add(&self, node: &str) -> u64 {
        let mut m = self.lock();
        m.1.insert(node.into());
        m.0 += 1;
        m.0
    }

    /// Takes a machine away; returns the new version.
    pub fn remove(&self, node: &str) -> u64 {
        let mut m = self.lock();
        m.1.remove(node);
        m.0 += 1;
        m.0
    }

    /// The version and the machines.
    pub fn snapshot(&self) -> (u64, BTreeSet<String>) {
        self.lock().clone()
    }
}

/// What the kubelet serves and how it runs images.
pub struct KubeletConfig {
    /// The fake Nodes whose pods it runs.
    pub machines: Machines,
    /// Image repository (without registry and tag, e.g. `dynamo-node`) -> the program its
    /// entrypoint runs.
    pub images: BTreeMap<String, PathBuf>,
    /// Pod directories (`pods/<namespace>_<name>_<uid>`) and volumes (`volumes/<pv>`) go here.
    pub dir: PathBuf,
}

/// A pod whose process this kubelet runs.
struct RunningPod {
    namespace: String,
    name: String,
    /// The machine it runs on.
    node: String,
    net: PodNetwork,
    dir: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    process: Option<Process>,
    /// When the process last exited (a restart waits a little, like CrashLoopBackOff).
    exited_at: Option<Instant>,
    /// Killed on purpose ([`CRASH_ANNOTATION`]) and kept down.
    crashed: bool,
    restarts: i32,
    started_at: Time,
    container: String,
    image: String,
    /// gRPC readiness probe: port and service.
    probe: Option<(i32, String)>,
    ready: bool,
    ready_since: Time,
    /// The last status written, to write only changes.
    reported: Option<serde_json::Value>,
}

/// The kubelet. [`Kubelet::run`] until cancelled; every process it started is stopped then.
pub struct Kubelet {
    client: kube::Client,
    net: Arc<Network>,
    config: KubeletConfig,
    provisioner: Provisioner,
    pods: HashMap<String, RunningPod>,
    /// The [`Machines`] version whose removals have been carried out.
    acted: watch::Sender<u64>,
}

impl Kubelet {
    /// A kubelet for `config.machines`, with pods on `net`.
    pub fn new(client: kube::Client, net: Arc<Network>, config: KubeletConfig) -> Kubelet {
        let provisioner = Provisioner::new(client.clone(), config.dir.join("volumes"));
        Kubelet {
            client,
            net,
            config,
            provisioner,
            pods: HashMap::new(),
            acted: watch::Sender::new(0),
        }
    }

    /// The [`Machines`] version the kubelet has acted on: once it is at least the version a
    /// [`Machines::remove`] returned, no process of that machine's pods runs any more.
    pub fn acted(&self) -> watch::Receiver<u64> {
        self.acted.subscribe()
    }

    /// Reconciles every [`TICK`] until `cancel`; errors of one pass are logged and retried.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut last_error = String::new();
        loop {
            let (version, machines) = self.config.machines.snapshot();
            self.stop_lost_machines(&machines).await;
            self.acted.send_replace(version);
            let pass = async {
                self.provisioner.sync(&machines).await?;
                self.sync_pods(&machines).await
            };
            if let Err(e) = pass.await {
                let e = format!("{e:#}");
                if e != last_error {
                    eprintln!("kubelet: {e}");
                    last_error = e;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        let pods: Vec<RunningPod> = self.pods.drain().map(|(_, p)| p).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for mut pod in pods {
                if let Some(p) = pod.process.as_mut() {
                    p.stop(Duration::from_secs(5));
                }
            }
        })
        .await;
    }

    /// Kills at once (no grace: the machine is gone) the processes of pods whose machine is no
    /// longer in `machines`, and removes their network namespaces.
    async fn stop_lost_machines(&mut self, machines: &BTreeSet<String>) {
        let lost: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| !machines.contains(&p.node))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in lost {
            if let Some(pod) = self.pods.remove(&uid) {
                eprintln!(
                    "kubelet: machine {} is gone: killing {}/{}",
                    pod.node, pod.namespace, pod.name
                );
                stop_pod(pod, Duration::ZERO).await;
            }
        }
    }

    async fn sync_pods(&mut self, machines: &BTreeSet<String>) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let pods = api.list(&ListParams::default()).await?;
        let mut seen = Vec::new();
        for pod in pods {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            if !machines.contains(&node) {
                continue;
            }
            let uid = pod.uid().context("pod without uid")?;
            seen.push(uid.clone());
            if let Err(e) = self.sync_pod(&pod, &uid).await {
                eprintln!(
                    "kubelet: pod {}/{}: {e:#}",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any()
                );
            }
        }
        // Pods removed from the API without us (force deletion): stop what they ran.
        let gone: Vec<String> =
            self.pods.keys().filter(|uid| !seen.contains(uid)).cloned().collect();
        for uid in gone {
            if let Some(pod) = self.pods.remove(&uid) {
                stop_pod(pod, MAX_GRACE).await;
            }
        }
        Ok(())
    }

    async fn sync_pod(&mut self, pod: &Pod, uid: &str) -> anyhow::Result<()> {
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        if pod.metadata.deletion_timestamp.is_some() {
            if let Some(running) = self.pods.remove(uid) {
                let grace = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .map_or(MAX_GRACE, |s| Duration::from_secs(s.max(0) as u64).min(MAX_GRACE));
                stop_pod(running, grace).await;
            }
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.into()),
                    ..Preconditions::default()
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        }
        if !self.pods.contains_key(uid) {
            match self.start_pod(pod, &namespace).await {
                Ok(running) => {
                    self.pods.insert(uid.into(), running);
                }
                Err(e) => {
                    let container = pod.spec.as_ref().and_then(|s| s.containers.first());
                    let status =
                        waiting_status(container, "CreateContainerError", &format!("{e:#}"));
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": status})),
                    )
                    .await?;
                    return Err(e);
                }
            }
        }
        let running = self.pods.get_mut(uid).expect("inserted above");
        if pod.annotations().get(CRASH_ANNOTATION).map(String::as_str) == Some("true")
            && !running.crashed
        {
            eprintln!("kubelet: crashing {namespace}/{name} on request ({CRASH_ANNOTATION})");
            running.crashed = true;
            if let Some(mut p) = running.process.take() {
                tokio::task::spawn_blocking(move || p.stop(Duration::ZERO)).await?;
            }
            running.exited_at = Some(Instant::now());
        }
        running.supervise()?;
        let ready = match (&running.probe, running.process.is_some()) {
            (Some((port, service)), true) => probe(running.net.ip, *port, service).await,
            (None, running) => running,
            (_, false) => false,
        };
        if ready != running.ready {
            running.ready = ready;
            running.ready_since = Time(Timestamp::now());
        }
        let status = serde_json::to_value(running.status(self.net.host_ip))?;
        if running.reported.as_ref() != Some(&status) {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
            running.reported = Some(status);
        }
        Ok(())
    }

    async fn start_pod(&self, pod: &Pod, namespace: &str) -> anyhow::Result<RunningPod> {
        let spec = pod.spec.clone().context("pod without spec")?;
        let container = spec.containers.first().context("pod without containers")?.clone();
        if spec.containers.len() > 1 || spec.init_containers.as_ref().is_some_and(|c| !c.is_empty())
        {
            bail!("the e2e kubelet runs pods of exactly one container and no init containers");
        }
        let image = container.image.clone().unwrap_or_default();
        let program = self.program_of(&image)?;
        let uid = pod.uid().unwrap_or_default();
        let dir =
            self.config.dir.join("pods").join(format!("{namespace}_{}_{uid}", pod.name_any()));
        std::fs::create_dir_all(&dir)?;

        // Volumes: name -> host directory; the ConfigMap ones also listed apart, as their files
        // get the same path rewriting as the arguments once the mounts are known.
        let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut config_dirs: Vec<PathBuf> = Vec::new();
        for volume in spec.volumes.iter().flatten() {
            let host = if let Some(claim) = &volume.persistent_volume_claim {
                self.claim_dir(namespace, &claim.claim_name).await?
            } else if let Some(cm) = &volume.config_map {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                let map =
                    api.get(&cm.name).await.with_context(|| format!("ConfigMap {}", cm.name))?;
                let d = dir.join("volumes").join(&volume.name);
                std::fs::create_dir_all(&d)?;
                for (key, value) in map.data.unwrap_or_default() {
                    std::fs::write(d.join(key), value)?;
                }
                config_dirs.push(d.clone());
                d
            } else if let Some(secret) = &volume.secret {
                let name = secret.secret_name.clone().unwrap_or_default();
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let s = api.get(&name).await.with_context(|| format!("Secret {name}"))?;
                let d = dir.join("volumes").join(&volume.name);
                std::fs::create_dir_all(&d)?;
                for (key, value) in s.data.unwrap_or_default() {
                    std::fs::write(d.join(key), value.0)?;
                }
                d
            } else {
                // emptyDir, projected service-account tokens, ...: an empty directory.
                let d = dir.join("volumes").join(&volume.name);
                std::fs::create_dir_all(&d)?;
                d
            };
            volumes.insert(volume.name.clone(), host);
        }
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let host = volumes
                .get(&m.name)
                .with_context(|| format!("volume {} is not defined", m.name))?;
            let host = match &m.sub_path {
                Some(sub) if !sub.is_empty() => host.join(sub),
                _ => host.clone(),
            };
            mounts.push((m.mount_path.clone(), host));
        }
        // Longest mount path first, so /a/b wins over /a.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        // A configuration file names other mounts (node.toml: the TLS files, the token file).
        for d in &config_dirs {
            for entry in std::fs::read_dir(d)? {
                let path = entry?.path();
                if let Ok(text) = std::fs::read_to_string(&path) {
                    std::fs::write(&path, rewrite_paths(&text, &mounts))?;
                }
            }
        }

        let net = self.net.add_pod(namespace)?;
        let env = self.resolve_env(pod, &container, namespace, &net).await?;
        let env: Vec<(String, String)> =
            env.into_iter().map(|(k, v)| (k, rewrite_paths(&v, &mounts))).collect();
        let mut args: Vec<String> = container.command.clone().unwrap_or_default();
        let program = if args.is_empty() {
            program
        } else {
            PathBuf::from(rewrite_paths(&args.remove(0), &mounts))
        };
        let env_map: BTreeMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        args.extend(container.args.clone().unwrap_or_default());
        let args = args.iter().map(|a| rewrite_paths(&expand(a, &env_map), &mounts)).collect();
        let probe = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.grpc.as_ref())
            .map(|g| (g.port, g.service.clone().unwrap_or_default()));
        let now = Time(Timestamp::now());
        let mut running = RunningPod {
            namespace: namespace.into(),
            name: pod.name_any(),
            node: spec.node_name.clone().unwrap_or_default(),
            net,
            dir,
            program,
            args,
            env,
            process: None,
            exited_at: None,
            crashed: false,
            restarts: 0,
            started_at: now.clone(),
            container: container.name.clone(),
            image,
            probe,
            ready: false,
            ready_since: now,
            reported: None,
        };
        running.start()?;
        Ok(running)
    }

    /// The program an image runs: the image's repository name looked up in the config.
    fn program_of(&self, image: &str) -> anyhow::Result<PathBuf> {
        let repository = image.rsplit('/').next().unwrap_or(image);
        let repository = repository.split(['@', ':']).next().unwrap_or(repository);
        self.config.images.get(repository).cloned().with_context(|| {
            format!(
                "image {image}: the e2e kubelet runs only the images it knows ({})",
                self.config.images.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// The directory of the volume bound to a claim.
    async fn claim_dir(&self, namespace: &str, claim: &str) -> anyhow::Result<PathBuf> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let pvc = claims.get(claim).await.with_context(|| format!("claim {claim}"))?;
        let volume = pvc
            .spec
            .and_then(|s| s.volume_name)
            .with_context(|| format!("claim {claim} is not bound yet"))?;
        let pv = Api::<PersistentVolume>::all(self.client.clone()).get(&volume).await?;
        let path = pv
            .spec
            .and_then(|s| s.host_path)
            .map(|h| PathBuf::from(h.path))
            .with_context(|| format!("volume {volume} is not a hostPath volume"))?;
        Ok(path)
    }

    /// The container's environment as the kubelet computes it.
    async fn resolve_env(
        &self,
        pod: &Pod,
        container: &Container,
        namespace: &str,
        net: &PodNetwork,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let mut env: Vec<(String, String)> = Vec::new();
        for var in container.env.iter().flatten() {
            let value = if let Some(value) = &var.value {
                let known: BTreeMap<&str, &str> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(value, &known)
            } else if let Some(from) = &var.value_from {
                if let Some(field) = &from.field_ref {
                    field_value(pod, &field.field_path, net)?
                } else if let Some(key) = &from.secret_key_ref {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                    let secret =
                        api.get(&key.name).await.with_context(|| format!("Secret {}", key.name))?;
                    let bytes = secret
                        .data
                        .and_then(|d| d.get(&key.key).cloned())
                        .with_context(|| format!("Secret {} has no key {}", key.name, key.key))?;
                    String::from_utf8(bytes.0)?
                } else if let Some(key) = &from.config_map_key_ref {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                    let map = api
                        .get(&key.name)
                        .await
                        .with_context(|| format!("ConfigMap {}", key.name))?;
                    map.data
                        .and_then(|d| d.get(&key.key).cloned())
                        .with_context(|| format!("ConfigMap {} has no key {}", key.name, key.key))?
                } else {
                    bail!(
                        "env {}: only fieldRef, secretKeyRef and configMapKeyRef are supported",
                        var.name
                    );
                }
            } else {
                String::new()
            };
            env.retain(|(k, _)| k != &var.name);
            env.push((var.name.clone(), value));
        }
        Ok(env)
    }
}

/// Stops a pod's process (SIGTERM, SIGKILL after `grace`) and removes its network namespace.
async fn stop_pod(mut pod: RunningPod, grace: Duration) {
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(p) = pod.process.as_mut() {
            p.stop(grace);
        }
        drop(pod);
    })
    .await;
}

impl RunningPod {
    fn start(&mut self) -> anyhow::Result<()> {
        let mut command = self.net.exec_prefix();
        command
            .arg(&self.program)
            .args(&self.args)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOSTNAME", &self.name)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.dir);
        let log = self.dir.join(format!("{}.log", self.container));
        self.process =
            Some(Process::spawn(&format!("{}/{}", self.namespace, self.name), command, &log)?);
        self.exited_at = None;
        self.started_at = Time(Timestamp::now());
        Ok(())
    }

    /// Notices an exit and restarts after a short back-off.
    fn supervise(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.process.as_mut() {
            if p.exited() {
                eprintln!(
                    "kubelet: {}/{} exited; the end of its log:\n{}",
                    self.namespace,
                    self.name,
                    p.tail(15)
                );
                self.process = None;
                self.exited_at = Some(Instant::now());
            }
        }
        if self.process.is_none()
            && !self.crashed
            && self.exited_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(2))
        {
            self.restarts += 1;
            self.start()?;
        }
        Ok(())
    }

    fn status(&self, host_ip: std::net::Ipv4Addr) -> PodStatus {
        let ready = self.ready && self.process.is_some();
        let condition = |type_: &str, status: bool, since: &Time| PodCondition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            last_transition_time: Some(since.clone()),
            ..PodCondition::default()
        };
        let state = if self.process.is_some() {
            ContainerState {
                running: Some(ContainerStateRunning { started_at: Some(self.started_at.clone()) }),
                ..ContainerState::default()
            }
        } else {
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    message: Some("the process exited; restarting".into()),
                }),
                ..ContainerState::default()
            }
        };
        PodStatus {
            phase: Some("Running".into()),
            host_ip: Some(host_ip.to_string()),
            host_ips: Some(vec![HostIP { ip: host_ip.to_string() }]),
            pod_ip: Some(self.net.ip.to_string()),
            pod_ips: Some(vec![PodIP { ip: self.net.ip.to_string() }]),
            start_time: Some(self.started_at.clone()),
            conditions: Some(vec![
                condition("PodScheduled", true, &self.started_at),
                condition("Initialized", true, &self.started_at),
                condition("ContainersReady", ready, &self.ready_since),
                condition("Ready", ready, &self.ready_since),
            ]),
            container_statuses: Some(vec![ContainerStatus {
                name: self.container.clone(),
                image: self.image.clone(),
                image_id: String::new(),
                ready,
                restart_count: self.restarts,
                started: Some(self.process.is_some()),
                state: Some(state),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }
    }
}

fn waiting_status(container: Option<&Container>, reason: &str, message: &str) -> serde_json::Value {
    json!({
        "phase": "Pending",
        "containerStatuses": [{
            "name": container.map(|c| c.name.clone()).unwrap_or_default(),
            "image": container.and_then(|c| c.image.clone()).unwrap_or_default(),
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }],
    })
}

/// A `fieldRef` value.
fn field_value(pod: &Pod, path: &str, net: &PodNetwork) -> anyhow::Result<String> {
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => {
            pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default()
        }
        "status.podIP" => net.ip.to_string(),
        other => bail!("fieldRef {other} is not supported by the e2e kubelet"),
    })
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` is a literal `$`, and an
/// unknown reference is left as written.
pub fn expand(value: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if vars.contains_key(&inner[..end]) => {
                    out.push_str(vars[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites every mount path (as a whole path component prefix) in `value` to its host
/// directory; `mounts` is sorted longest path first.
pub fn rewrite_paths(value: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    'outer: while !rest.is_empty() {
        for (path, host) in mounts {
            if let Some(after) = rest.strip_prefix(path.as_str()) {
                let boundary_before = out.is_empty() || out.ends_with([' ', '=', ',', ':', '"']);
                let boundary_after =
                    after.is_empty() || after.starts_with(['/', ' ', ',', ':', '"']);
                if boundary_before && boundary_after {
                    out.push_str(&host.display().to_string());
                    rest = after;
                    continue 'outer;
                }
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The gRPC health check the kubelet runs for a `grpc` probe: SERVING or not.
pub async fn probe(ip: std::net::Ipv4Addr, port: i32, service: &str) -> bool {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{ip}:{port}"))
    else {
        return false;
    };
    let endpoint = endpoint.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(1));
    let Ok(channel) = endpoint.connect().await else { return false };
    let request = HealthCheckRequest { service: service.into() };
    matches!(
        HealthClient::new(channel).check(request).await,
        Ok(reply) if reply.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = BTreeMap::from([("POD_IP", "10.244.1.2"), ("A", "x")]);
        assert_eq!(expand("$(POD_IP):7070", &vars), "10.244.1.2:7070");
        assert_eq!(expand("$(A)$(A)-$$(A)", &vars), "xx-$(A)");
        assert_eq!(expand("$(MISSING) $ $(", &vars), "$(MISSING) $ $(");
    }

    #[test]
    fn mount_paths_are_rewritten_only_as_whole_components() {
        let mounts = vec![
            ("/etc/dynamo".to_string(), PathBuf::from("/run/p/config")),
            ("/var/lib/dynamo".to_string(), PathBuf::from("/run/v/pvc-1")),
        ];
        assert_eq!(rewrite_paths("/etc/dynamo/node.toml", &mounts), "/run/p/config/node.toml");
        assert_eq!(rewrite_paths("/var/lib/dynamo", &mounts), "/run/v/pvc-1");
        assert_eq!(rewrite_paths("--data=/var/lib/dynamo", &mounts), "--data=/run/v/pvc-1");
        assert_eq!(rewrite_paths("/etc/dynamo2/x", &mounts), "/etc/dynamo2/x");
        assert_eq!(rewrite_paths("/opt/etc/dynamo", &mounts), "/opt/etc/dynamo");
        // In a TOML file, and a sibling directory whose name starts like a mount.
        let mounts = vec![
            ("/etc/dynamo-tls".to_string(), PathBuf::from("/run/p/tls")),
            ("/etc/dynamo".to_string(), PathBuf::from("/run/p/config")),
        ];
        assert_eq!(
            rewrite_paths("[tls]\ncert = \"/etc/dynamo-tls/tls.crt\"\n", &mounts),
            "[tls]\ncert = \"/run/p/tls/tls.crt\"\n"
        );
    }
}
