//! The operator and real dynamo-node processes on a real Kubernetes control plane (see the
//! crate's docs for what is real and what the harness stands in for).
//!
//! One test runs the scenarios in order, because each starts from the cluster the previous one
//! left: the CRD and chart are installed with helm, the operator runs out of cluster with the
//! chart's service account, then
//!   7. invalid specs are rejected by the API server with the schema's messages;
//!   1. examples/cluster.yaml becomes a Ready cluster that dynamoctl writes to and reads from;
//!   2. raising a zone's replicas adds a node, with rebalance progress in the status;
//!   3. lowering it decommissions the node before its pod goes, under continuous writes that
//!      the history checker then checks;
//!   4. the operator is killed during a decommission and a new one finishes it;
//!   5. a deleted pod comes back with its data;
//!   8. lowering a zone whose highest node has crashed removes that node by force (the others
//!      take its partitions over from the surviving replicas) once `forceRemoveAfter` has
//!      passed, instead of waiting forever;
//!   9. an image change, then a `nodeConfig` change, roll out one pod at a time over the whole
//!      cluster, each pod restarted once per change;
//!  10. the `dynamokv.io/restartedAt` annotation restarts every pod once, one at a time;
//!  11. edits of immutable fields (partitions, engine, replication factor, a storage shrink,
//!      the storage class) are rejected with the CRD's messages; `r` and `w` stay changeable;
//!  12. the operator killed in the middle of a rollout: a new leader finishes it, still one pod
//!      at a time;
//!  13. growing `storage.size` expands every volume without restarting the nodes;
//!  14. a machine lost with its volume: the stuck pod annotated `dynamokv.io/replace` (and, in a
//!      second zone, `failure.replaceLostVolumes`) is replaced by an empty node that receives
//!      its partitions;
//!  15. a paused cluster ignores a scale-up until it is unpaused;
//!  16. the operator's CA, certificate and token Secrets and its NetworkPolicy exist, node pods
//!      mount no service account token, and a certificate rotation rolls the nodes one at a
//!      time under traffic;
//!   6. deleting the DynamoCluster garbage-collects its children and keeps the volumes.
//!
//! Scenarios 3, 9 to 15 and 16 run client traffic throughout ([`Traffic`]) into one history, which
//! the history checker judges at the end of each: no acknowledged write lost, no phantom,
//! replicas converged. Run it with `scripts/e2e` (root, Go-built tools, release of the
//! workspace's binaries).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use dynamo_client::{Client, MemberState};
use dynamo_e2e::environment::Environment;
use dynamo_e2e::kubelet::CRASH_ANNOTATION;
use dynamo_e2e::operator::{self, Operator};
use dynamo_e2e::process::run;
use dynamo_e2e::readiness::{ReadinessLog, ReadinessWatcher};
use dynamo_e2e::storage;
use dynamo_e2e::traffic::Traffic;
use dynamo_operator::crd::messages;
use dynamo_operator::quantity;
use dynamo_tests::cluster::{local_replica_at, target_binary, Access, Placement};
use dynamo_tests::history;
use dynamo_tests::nemesis::{converge_nodes, NodeAddress};
use dynamo_tests::workload::{Endpoint, Recorder, Workload, WorkloadOptions};
use serde_json::{json, Value};

const NS: &str = "default";
const CLUSTER: &str = "demo";
/// Longest a cluster may take to settle after a change (joins and leaves move data).
const SETTLE: Duration = Duration::from_secs(240);
/// Longest a lost node's replacement may take: forced removal, then a new, empty node joining
/// under the old name, which has been seen to wait two to four minutes to be added to the ring.
const REPLACE: Duration = Duration::from_secs(600);
/// Label selector of the cluster's pods, claims and StatefulSets.
const SELECTOR: &str = "dynamokv.io/cluster=demo";
/// The node's gRPC port (client API).
const NODE_PORT: u16 = 7070;
/// The node's peer port (internode and admin APIs).
const PEER_PORT: u16 = 7071;
/// Another tag of the node's image: the kubelet runs every tag of `dynamo-node` with the same
/// binary, so only the pod template changes.
const NEXT_IMAGE: &str = "ghcr.io/dynamokv/dynamo-node:e2e-next";
/// How long a rollout is watched after it looks finished, to catch a restart too many.
const AFTER_ROLLOUT: Duration = Duration::from_secs(3);
/// Longest from a change to the first pod going down: the operator acts on a change at once
/// (a pass is debounced by 1 s), not at its next periodic pass (every 60 s when idle).
const ROLLOUT_START: Duration = Duration::from_secs(20);

struct Suite {
    env: Environment,
    repo: PathBuf,
    operator: Option<Operator>,
    /// Keys written in scenario 1 with their values; every later scenario reads them back.
    written: BTreeMap<String, String>,
    /// One history for every workload of the run (scenarios 3 and 9 to 15 use the same keys:
    /// a value one of them wrote may be read by the next).
    recorder: Arc<Recorder>,
    /// Acknowledged writes in the history at the last check.
    acked: usize,
}

/// A pod of the cluster as the API reports it.
#[derive(Debug, Clone)]
struct PodInfo {
    name: String,
    uid: String,
    ip: Option<String>,
    node: String,
    ready: bool,
    terminating: bool,
    /// Its `controller-revision-hash` label: the StatefulSet revision it was made from.
    revision: String,
    image: String,
    phase: String,
    /// The message of its `PodScheduled` condition when that is False (why it is Pending).
    unschedulable: Option<String>,
}

impl PodInfo {
    fn address(&self) -> anyhow::Result<String> {
        Ok(format!("{}:{NODE_PORT}", self.ip.as_deref().context("pod has no IP yet")?))
    }

    /// Its peer port (internode and admin APIs).
    fn peer_address(&self) -> anyhow::Result<String> {
        Ok(format!("{}:{PEER_PORT}", self.ip.as_deref().context("pod has no IP yet")?))
    }

    /// The StatefulSet it belongs to (`demo-zone-a` for `demo-zone-a-0`).
    fn statefulset(&self) -> &str {
        self.name.rsplit_once('-').map_or(self.name.as_str(), |(sts, _)| sts)
    }
}

/// The workload of scenarios 3 and 9 to 15: 4 clients on 40 hot keys.
fn workload_options(prefix: &str) -> WorkloadOptions {
    WorkloadOptions {
        clients: 4,
        keys: 40,
        max_think: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        seed: 20_261_125,
        prefix: prefix.into(),
    }
}

fn client(address: &str) -> Client {
    dynamo_e2e::access::client(address, Duration::from_secs(10)).expect("valid address")
}

/// What the scenarios call the pods with: certificates from the cluster's CA once it exists.
fn access() -> Access {
    dynamo_e2e::access::access()
}

impl Suite {
    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.env.control_plane.kubectl().args(args))
    }

    /// `kubectl apply -f -` with `yaml` on stdin: stdout, or an error with stderr.
    fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        let mut child = self
            .env
            .control_plane
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("stdin").write_all(yaml.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `node.toml` the operator rendered into the cluster's ConfigMap.
    fn node_toml(&self) -> anyhow::Result<String> {
        self.kubectl(&[
            "get",
            "configmap",
            "demo-config",
            "-n",
            NS,
            "-o",
            "jsonpath={.data.node\\.toml}",
        ])
    }

    fn get_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&all)?)?)
    }

    fn exists(&self, kind: &str, name: &str, ns: &str) -> bool {
        self.kubectl(&["get", kind, name, "-n", ns, "--ignore-not-found", "-o", "name"])
            .is_ok_and(|s| !s.trim().is_empty())
    }

    fn cluster_status(&self) -> Value {
        self.get_json(&["dynamocluster", CLUSTER, "-n", NS])
            .map(|v| v["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Ready condition True for the current generation, with `nodes` ready nodes.
    fn cluster_ready(&self, nodes: i64) -> bool {
        let Ok(dc) = self.get_json(&["dynamocluster", CLUSTER, "-n", NS]) else { return false };
        let status = &dc["status"];
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ready = ready
            && status["observedGeneration"] == dc["metadata"]["generation"]
            && status["readyNodes"].as_i64() == Some(nodes)
            && status["desiredNodes"].as_i64() == Some(nodes);
        if ready {
            if let Err(e) = self.load_access() {
                println!("e2e:   cannot read the cluster's CA: {e:#}");
                return false;
            }
        }
        ready
    }

    /// Reads the cluster's CA from its Secret and makes the suite's certificates from it.
    fn load_access(&self) -> anyhow::Result<()> {
        use base64::Engine as _;
        let secret = self.get_json(&["secret", &format!("{CLUSTER}-ca"), "-n", NS])?;
        let field = |key: &str| -> anyhow::Result<String> {
            let b64 = secret["data"][key].as_str().with_context(|| format!("no {key}"))?;
            Ok(String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64)?)?)
        };
        dynamo_e2e::access::set(
            &field("ca.crt")?,
            &field("ca.key")?,
            &format!("{CLUSTER}.{NS}.svc"),
        )
    }

    fn pods(&self) -> anyhow::Result<Vec<PodInfo>> {
        let list =
            self.get_json(&["pods", "-n", NS, "-l", &format!("dynamokv.io/cluster={CLUSTER}")])?;
        let mut pods = Vec::new();
        for p in list["items"].as_array().into_iter().flatten() {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let unschedulable = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                .map(|c| c["message"].as_str().unwrap_or_default().to_string());
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            pods.push(PodInfo {
                name: text(&p["metadata"]["name"]),
                uid: text(&p["metadata"]["uid"]),
                ip: p["status"]["podIP"].as_str().map(Into::into),
                node: text(&p["spec"]["nodeName"]),
                ready,
                terminating: p["metadata"]["deletionTimestamp"].is_string(),
                revision: text(&p["metadata"]["labels"]["controller-revision-hash"]),
                image: text(&p["spec"]["containers"][0]["image"]),
                phase: text(&p["status"]["phase"]),
                unschedulable,
            });
        }
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pods)
    }

    fn pod(&self, name: &str) -> anyhow::Result<PodInfo> {
        self.pods()?.into_iter().find(|p| p.name == name).with_context(|| format!("no pod {name}"))
    }

    /// The addresses behind the client Service, as kube-proxy would route to them: its
    /// EndpointSlices' ready endpoints.
    fn service_endpoints(&self) -> anyhow::Result<Vec<String>> {
        let slices = self.get_json(&[
            "endpointslices",
            "-n",
            NS,
            "-l",
            &format!("kubernetes.io/service-name={CLUSTER}"),
        ])?;
        let mut out = Vec::new();
        for slice in slices["items"].as_array().into_iter().flatten() {
            let port = slice["ports"][0]["port"].as_i64().unwrap_or(7070);
            for e in slice["endpoints"].as_array().into_iter().flatten() {
                if e["conditions"]["ready"] == true {
                    for a in e["addresses"].as_array().into_iter().flatten() {
                        out.push(format!("{}:{port}", a.as_str().unwrap_or_default()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Polls `check` every 500 ms; on timeout, fails with the cluster's status, its pods and
    /// the end of the operator's log.
    async fn wait(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Suite) -> bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            self.env.control_plane.check_alive()?;
            if check(self) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("{what}: not after {timeout:?}\n{}", self.diagnosis());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The cluster's status, its pods and the end of the operator's log, for failures.
    fn diagnosis(&self) -> String {
        format!(
            "cluster status: {}\npods: {:#?}\noperator log:\n{}",
            serde_json::to_string_pretty(&self.cluster_status()).unwrap_or_default(),
            self.pods().unwrap_or_default(),
            self.operator.as_ref().map(|o| o.tail(30)).unwrap_or_default()
        )
    }

    /// Status and reason of the cluster's condition `type_`.
    fn condition(&self, type_: &str) -> Option<(String, String)> {
        let status = self.cluster_status();
        let c = status["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
        Some((
            c["status"].as_str().unwrap_or_default().into(),
            c["reason"].as_str().unwrap_or_default().into(),
        ))
    }

    fn operator(&mut self) -> &mut Operator {
        self.operator.as_mut().expect("the operator is installed first")
    }

    fn scale(&self, zone_index: usize, replicas: i32) -> anyhow::Result<()> {
        let patch = format!(
            r#"[{{"op":"replace","path":"/spec/zones/{zone_index}/replicas","value":{replicas}}}]"#
        );
        self.kubectl(&["patch", "dynamocluster", CLUSTER, "-n", NS, "--type=json", "-p", &patch])
            .map(drop)
    }

    /// Node `id`'s membership as the node at `address` sees it (`None`: not a member).
    async fn membership(address: &str, id: &str) -> anyhow::Result<Option<MemberState>> {
        Ok(client(address).status().await?.membership_of(id))
    }

    /// Every key of scenario 1 reads back its value through `address`.
    async fn check_written(&self, address: &str) -> anyhow::Result<()> {
        let c = client(address);
        for (key, value) in &self.written {
            let got = c.get(key.as_bytes(), None).await.with_context(|| format!("get {key}"))?;
            let values: Vec<String> =
                got.values.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
            ensure!(values == [value.clone()], "{key}: expected [{value}], read {values:?}");
        }
        Ok(())
    }

    /// `kubectl patch` of the DynamoCluster with a JSON merge patch.
    fn patch(&self, patch: &Value) -> anyhow::Result<()> {
        self.kubectl(&[
            "patch",
            "dynamocluster",
            CLUSTER,
            "-n",
            NS,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])
        .map(drop)
    }

    /// Each StatefulSet's `status.updateRevision`, or an error while a StatefulSet has not
    /// observed its latest spec.
    fn update_revisions(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let list = self.get_json(&["statefulsets", "-n", NS, "-l", SELECTOR])?;
        let mut out = BTreeMap::new();
        for sts in list["items"].as_array().into_iter().flatten() {
            let name = sts["metadata"]["name"].as_str().unwrap_or_default();
            ensure!(
                sts["status"]["observedGeneration"] == sts["metadata"]["generation"],
                "StatefulSet {name} has not observed its latest spec"
            );
            out.insert(
                name.into(),
                sts["status"]["updateRevision"].as_str().unwrap_or_default().into(),
            );
        }
        Ok(out)
    }

    /// A rollout is over: the cluster is Ready with `nodes` nodes, every StatefulSet has
    /// observed its spec, every pod is Ready and carries its StatefulSet's `updateRevision`,
    /// and `status.rollout` counts every pod updated with none restarting.
    fn rolled_out(&self, nodes: i64) -> bool {
        if !self.cluster_ready(nodes) {
            return false;
        }
        let (Ok(revisions), Ok(pods)) = (self.update_revisions(), self.pods()) else {
            return false;
        };
        let rollout = &self.cluster_status()["rollout"];
        pods.len() as i64 == nodes
            && pods.iter().all(|p| {
                p.ready && !p.terminating && revisions.get(p.statefulset()) == Some(&p.revision)
            })
            && rollout["updatedPods"].as_i64() == Some(nodes)
            && rollout["totalPods"].as_i64() == Some(nodes)
            && rollout["restarting"].as_str().is_none_or(str::is_empty)
    }

    /// The names of the pods that exist now: the members that should stay up.
    fn members(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(self.pods()?.into_iter().map(|p| p.name).collect())
    }

    /// A readiness watcher on the cluster's pods, from now.
    async fn readiness(&self) -> anyhow::Result<ReadinessWatcher> {
        ReadinessWatcher::start(self.env.control_plane.client().await?, NS, SELECTOR).await
    }

    /// Client traffic against the Ready pods, following them as they are replaced, recorded in
    /// the run's history; with the watcher feeding it.
    async fn traffic(&self, prefix: &str) -> anyhow::Result<(ReadinessWatcher, Traffic)> {
        let watcher = self.readiness().await?;
        let traffic = Traffic::start(
            self.recorder.clone(),
            workload_options(prefix),
            NODE_PORT,
            watcher.ready_pods(),
        );
        Ok((watcher, traffic))
    }

    /// Stops what [`Suite::traffic`] started, after the requests in flight.
    async fn stop_traffic((watcher, traffic): (ReadinessWatcher, Traffic)) {
        let report = traffic.stop().await;
        watcher.stop().await;
        println!("e2e:   traffic: {} rounds of clients", report.rounds);
    }

    /// Stops the traffic; if `outcome` is a success, checks the history and that every key of
    /// scenario 1 reads back from every pod.
    async fn finish_traffic(
        &mut self,
        traffic: (ReadinessWatcher, Traffic),
        outcome: anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        Suite::stop_traffic(traffic).await;
        outcome?;
        self.check_history().await?;
        for p in self.pods()? {
            self.check_written(&p.address()?).await?;
        }
        Ok(())
    }

    /// Lets the cluster converge and checks the whole history of the run: no acknowledged
    /// write lost, no phantom, replicas equal. Fails if the traffic made too few acknowledged
    /// writes since the last check to mean anything.
    async fn check_history(&mut self) -> anyhow::Result<()> {
        let nodes: Vec<NodeAddress> = self
            .pods()?
            .iter()
            .map(|p| {
                Ok(NodeAddress {
                    id: p.name.clone(),
                    address: p.address()?,
                    peer_address: p.peer_address()?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        let placement = Placement::of(&client(&nodes[0].address), &ids).await?;
        let keys = workload_options("").key_names();
        let final_state =
            converge_nodes(&nodes, &access(), &placement, &keys, &self.recorder).await?;
        let history = self.recorder.history();
        let verdict = history::check(&history, &final_state);
        let stats = history::Stats::of(&history, &final_state);
        let new_acks = stats.acked_writes() - self.acked;
        self.acked = stats.acked_writes();
        println!(
            "e2e:   history: {} ops, {} acknowledged writes ({new_acks} new), {} ok",
            stats.total(),
            stats.acked_writes(),
            stats.ok()
        );
        ensure!(verdict.is_ok(), "history check failed:\n{verdict}");
        ensure!(new_acks > 50, "too few acknowledged writes ({new_acks}) to mean anything");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root and the Go-built control plane: run scripts/e2e"]
async fn kubernetes_end_to_end() -> anyhow::Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    let dir = std::env::var_os("DYNAMO_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("dynamo-e2e-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir);
    println!("e2e: run directory (logs of every process) {}", dir.display());
    let images = BTreeMap::from([("dynamo-node".to_string(), target_binary("dynamo-node")?)]);
    let env = Environment::start(&dir, images).await?;
    let mut suite = Suite {
        env,
        repo,
        operator: None,
        written: BTreeMap::new(),
        recorder: Arc::new(Recorder::new()),
        acked: 0,
    };
    let result = scenarios(&mut suite).await;
    if let Some(o) = suite.operator.as_mut() {
        o.kill();
    }
    suite.env.stop_pods().await;
    if result.is_err() {
        eprintln!("e2e: failed; every log is in {}", dir.display());
    } else if std::env::var_os("DYNAMO_E2E_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn scenarios(s: &mut Suite) -> anyhow::Result<()> {
    install(s).await?;
    step("7 invalid specs are rejected by the API server", invalid_specs(s)).await?;
    step("1 apply examples/cluster.yaml", create_cluster(s)).await?;
    step("2 raise a zone's replicas", scale_up(s)).await?;
    step("3 lower a zone's replicas under writes", scale_down(s)).await?;
    step("4 restart the operator during a decommission", operator_restart(s)).await?;
    step("5 delete a pod", delete_pod(s)).await?;
    step("8 lower a zone whose node has crashed", remove_crashed_node(s)).await?;
    step("9 roll out an image change, then a nodeConfig change", image_and_config(s)).await?;
    step("10 restart every pod with the restartedAt annotation", restart_annotation(s)).await?;
    step("11 immutable fields are rejected by the API server", immutable_fields(s)).await?;
    step("12 restart the operator during a rollout", operator_restart_mid_rollout(s)).await?;
    step("13 grow the volumes", grow_storage(s)).await?;
    step("14 replace a node whose machine and volume are lost", replace_lost_nodes(s)).await?;
    step("15 pause the cluster", pause(s)).await?;
    step("16 credentials, NetworkPolicy and certificate rotation", security(s)).await?;
    step("6 delete the DynamoCluster", delete_cluster(s)).await?;
    Ok(())
}

/// Runs scenario `name` (its number first), unless `DYNAMO_E2E_SCENARIOS` (numbers separated by
/// commas, e.g. `1,14,15`) leaves it out: a shortcut while working on some scenarios, which
/// still run in the suite's order and need what the earlier ones leave (most need 1).
async fn step(
    name: &str,
    f: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let number = name.split_whitespace().next().unwrap_or_default();
    if let Ok(only) = std::env::var("DYNAMO_E2E_SCENARIOS") {
        if !only.split(',').any(|n| n.trim() == number) {
            println!("e2e: scenario {name}: skipped (DYNAMO_E2E_SCENARIOS={only})");
            return Ok(());
        }
    }
    let start = Instant::now();
    println!("e2e: scenario {name}");
    f.await.with_context(|| format!("scenario {name}"))?;
    println!("e2e: scenario {name}: passed in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// helm install of the chart (CRD, RBAC, operator Deployment scaled to zero: the operator runs
/// out of cluster here), then the operator with the chart's service account.
async fn install(s: &mut Suite) -> anyhow::Result<()> {
    let kubeconfig = operator::install_chart(&s.env.control_plane, &s.repo)?;
    // The chart's CRD is the generated one.
    let installed = s.get_json(&["crd", "dynamoclusters.dynamokv.io"])?;
    let generated: Value =
        serde_yaml::from_str(&std::fs::read_to_string(s.repo.join("crds/dynamoclusters.yaml"))?)?;
    ensure!(
        numbers_as_f64(&installed["spec"]["versions"][0]["schema"])
            == numbers_as_f64(&generated["spec"]["versions"][0]["schema"]),
        "the installed CRD's schema differs from crds/dynamoclusters.yaml"
    );
    let log = s.env.control_plane.dir.join("operator.log");
    let mut op = Operator::new(target_binary("dynamo-operator")?, kubeconfig, log);
    op.start()?;
    s.operator = Some(op);
    Ok(())
}

/// `v` with every number as a float: the API server writes `minimum: 1.0` back as `1`.
fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map_or(Value::Null, Value::from),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_f64).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), numbers_as_f64(v))).collect())
        }
        other => other.clone(),
    }
}

async fn invalid_specs(s: &mut Suite) -> anyhow::Result<()> {
    let spec = |zones: &str, r: i32| {
        format!(
            "apiVersion: dynamokv.io/v1alpha1\nkind: DynamoCluster\nmetadata:\n  name: bad\n  namespace: {NS}\n\
             spec:\n  zones: [{zones}]\n  replication: {{factor: 3, r: {r}, w: 2}}\n"
        )
    };
    let cases = [
        (
            spec("{name: a, replicas: 1}, {name: b, replicas: 1}, {name: c, replicas: 1}", 4),
            messages::R_LE_N,
        ),
        (spec("{name: a, replicas: 2}, {name: a, replicas: 1}", 2), messages::UNIQUE_ZONES),
    ];
    for (yaml, message) in cases {
        let err = s.apply(&yaml).expect_err("the API server should reject this spec");
        let err = err.to_string();
        ensure!(err.contains(message), "expected the schema's message {message:?}, got: {err}");
        println!("e2e:   rejected: {}", err.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    ensure!(!s.exists("dynamocluster", "bad", NS), "a rejected DynamoCluster exists");
    Ok(())
}

async fn create_cluster(s: &mut Suite) -> anyhow::Result<()> {
    let example = s.repo.join("examples/cluster.yaml");
    s.kubectl(&["apply", "-n", NS, "-f", &example.display().to_string()])?;
    let took =
        s.wait(SETTLE, "DynamoCluster demo Ready with 3 nodes", |s| s.cluster_ready(3)).await?;
    println!("e2e:   Ready after {:.1} s", took.as_secs_f64());

    let selector = format!("dynamokv.io/cluster={CLUSTER}");
    let sts = s.get_json(&["statefulsets", "-n", NS, "-l", &selector])?;
    let mut names: Vec<&str> = sts["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    names.sort_unstable();
    ensure!(names == ["demo-zone-a", "demo-zone-b", "demo-zone-c"], "StatefulSets: {names:?}");
    for item in sts["items"].as_array().into_iter().flatten() {
        let zone =
            item["metadata"]["name"].as_str().unwrap_or_default().trim_start_matches("demo-");
        ensure!(
            item["spec"]["template"]["spec"]["nodeSelector"]["topology.kubernetes.io/zone"] == zone,
            "StatefulSet of {zone} is not pinned to its zone"
        );
    }
    for pod in s.pods()? {
        let zone = pod.name.trim_start_matches("demo-").trim_end_matches("-0");
        ensure!(
            pod.node == format!("e2e-{zone}"),
            "{} runs on {} (zone {zone})",
            pod.name,
            pod.node
        );
    }
    let headless = s.get_json(&["service", "demo-peers", "-n", NS])?;
    ensure!(headless["spec"]["clusterIP"] == "None", "demo-peers is not headless");
    ensure!(s.exists("service", CLUSTER, NS), "no client Service");
    ensure!(s.exists("poddisruptionbudget", CLUSTER, NS), "no PodDisruptionBudget");

    // The nodes found each other through the headless Service names (cluster DNS).
    // The EndpointSlice controller follows pod readiness on its own schedule: it may trail
    // the cluster's Ready condition by a moment.
    s.wait(Duration::from_secs(30), "3 ready endpoints behind the client Service", |s| {
        s.service_endpoints().is_ok_and(|e| e.len() == 3)
    })
    .await?;
    let endpoints = s.service_endpoints()?;
    let ring = client(&endpoints[0]).ring().await?;
    ensure!(ring.members.len() == 3, "ring members: {:?}", ring.members);

    // dynamoctl, as a user would, through the Service's endpoints.
    // Its credentials, as the operator's README says to get them: the CA and the client token.
    let dynamoctl = target_binary("dynamoctl")?;
    let secret_field = |secret: &str, key: &str| -> anyhow::Result<String> {
        use base64::Engine as _;
        let json = s.get_json(&["secret", secret, "-n", NS])?;
        let b64 = json["data"][key].as_str().with_context(|| format!("{secret} has no {key}"))?;
        Ok(String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64)?)?)
    };
    let ca_file = s.env.control_plane.dir.join("demo-ca.crt");
    std::fs::write(&ca_file, secret_field(&format!("{CLUSTER}-tls"), "ca.crt")?)?;
    let token = secret_field(&format!("{CLUSTER}-client-token"), "token")?;
    let user = |endpoint: &str, token: Option<&str>| {
        let mut c = Command::new(&dynamoctl);
        c.env_remove("DYNAMO_TOKEN")
            .args(["--endpoint", endpoint, "--ca-cert"])
            .arg(&ca_file)
            .args(["--tls-server-name", &format!("{CLUSTER}.{NS}.svc")]);
        if let Some(t) = token {
            c.env("DYNAMO_TOKEN", t);
        }
        c
    };
    // Without a credential the node refuses.
    let refused = user(&endpoints[0], None).args(["put", "hello", "world"]).output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.to_lowercase().contains("credential"),
        "an unauthenticated put was not refused as such: {stderr}"
    );
    run(user(&endpoints[0], Some(&token)).args(["put", "hello", "world"]))?;
    let got = run(user(&endpoints[1], Some(&token)).args(["get", "hello"]))?;
    ensure!(got.lines().next() == Some("world"), "dynamoctl get hello printed {got:?}");

    let c = client(&endpoints[2]);
    for i in 0..300 {
        let (key, value) = (format!("key-{i:04}"), format!("value-{i}"));
        c.put(key.as_bytes(), value.clone().into_bytes(), Vec::new(), None).await?;
        s.written.insert(key, value);
    }
    s.check_written(&endpoints[1]).await
}

async fn scale_up(s: &mut Suite) -> anyhow::Result<()> {
    s.scale(0, 2)?;
    let mut saw_progress = BTreeSet::new();
    s.wait(SETTLE, "4 nodes Ready", |s| {
        let status = s.cluster_status();
        for c in status["conditions"].as_array().into_iter().flatten() {
            if c["type"] == "Progressing" && c["status"] == "True" {
                saw_progress.insert(format!("Progressing: {}", c["reason"]));
            }
        }
        if !status["rebalance"].is_null() {
            saw_progress.insert(format!("rebalance: {}", status["rebalance"]));
        }
        s.cluster_ready(4)
    })
    .await?;
    println!("e2e:   status during the join: {saw_progress:?}");
    ensure!(!saw_progress.is_empty(), "the status never showed the join in progress");

    let new = s.pod("demo-zone-a-1")?;
    ensure!(new.node == "e2e-zone-a", "the new node runs on {}", new.node);
    let status = client(&new.address()?).status().await?;
    ensure!(status.nodes.len() == 4, "the new node sees {} members", status.nodes.len());
    ensure!(
        status.nodes.iter().all(|n| n.membership == MemberState::Normal),
        "memberships: {:?}",
        status.nodes.iter().map(|n| (&n.id, &n.membership)).collect::<Vec<_>>()
    );
    let me = status.nodes.iter().find(|n| n.is_self).context("no self entry")?;
    ensure!(me.replica_partitions > 0, "the new node replicates no partition");
    ensure!(status.local_keys > 0, "the new node received no data");
    for p in s.pods()? {
        s.check_written(&p.address()?).await?;
    }
    Ok(())
}

/// Scales zone-a from 2 to 1 and waits until it is done, checking that the node had left the
/// ring by the time its pod was being deleted. With `restart_operator`, kills the operator once it
/// records the decommission and starts a new one.
async fn scale_down_and_watch(s: &mut Suite, restart_operator: bool) -> anyhow::Result<()> {
    let observer = s.pod("demo-zone-b-0")?.address()?;
    s.scale(0, 1)?;
    let mut killed = !restart_operator;
    let start = Instant::now();
    loop {
        s.env.control_plane.check_alive()?;
        let gone_or_going = match s.pods()?.into_iter().find(|p| p.name == "demo-zone-a-1") {
            None => true,
            Some(p) => p.terminating,
        };
        if gone_or_going {
            let m = Suite::membership(&observer, "demo-zone-a-1").await?;
            ensure!(
                m == Some(MemberState::Left),
                "the pod of demo-zone-a-1 was deleted while the node was {m:?}"
            );
            break;
        }
        if !killed {
            let status = s.cluster_status();
            if !status["decommission"].is_null() {
                println!(
                    "e2e:   killing the operator; decommission status: {}",
                    status["decommission"]
                );
                s.operator().kill();
                tokio::time::sleep(Duration::from_secs(3)).await;
                let m = Suite::membership(&observer, "demo-zone-a-1").await?;
                println!("e2e:   operator down; demo-zone-a-1 is {m:?}; starting a new operator");
                s.operator().start()?;
                killed = true;
            }
        }
        if start.elapsed() > SETTLE {
            bail!("demo-zone-a-1 still runs after {SETTLE:?}; status {}", s.cluster_status());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.wait(SETTLE, "3 nodes Ready after the scale-down", |s| s.cluster_ready(3)).await?;
    ensure!(killed, "the operator was never seen decommissioning, so it was not restarted");
    // whenScaled: Delete (the default): the removed node's claim and volume go.
    s.wait(Duration::from_secs(60), "the removed node's PVC deleted", |s| {
        !s.exists("pvc", "data-demo-zone-a-1", NS)
    })
    .await?;
    let ring = client(&observer).ring().await?;
    ensure!(
        ring.members.iter().all(|m| m.id != "demo-zone-a-1"),
        "demo-zone-a-1 still owns partitions"
    );
    Ok(())
}

async fn scale_down(s: &mut Suite) -> anyhow::Result<()> {
    // The stable pods keep their addresses through this scenario: fixed endpoints will do.
    let stable: Vec<PodInfo> =
        s.pods()?.into_iter().filter(|p| p.name != "demo-zone-a-1").collect();
    let endpoints: Vec<Endpoint> = stable
        .iter()
        .map(|p| {
            Ok(Endpoint {
                node: p.name.clone(),
                client: dynamo_e2e::access::client(&p.address()?, Duration::from_secs(5))?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let options = workload_options("e2e");
    let workload = Workload::start(endpoints, &options, s.recorder.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = scale_down_and_watch(s, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    workload.stop().await;
    outcome?;
    s.check_history().await?;
    for p in s.pods()? {
        s.check_written(&p.address()?).await?;
    }
    Ok(())
}

async fn operator_restart(s: &mut Suite) -> anyhow::Result<()> {
    s.scale(0, 2)?;
    s.wait(SETTLE, "4 nodes Ready again", |s| s.cluster_ready(4)).await?;
    scale_down_and_watch(s, true).await?;
    for p in s.pods()? {
        s.check_written(&p.address()?).await?;
    }
    Ok(())
}

async fn delete_pod(s: &mut Suite) -> anyhow::Result<()> {
    let before = s.pod("demo-zone-b-0")?;
    let epoch = client(&before.address()?).ring().await?.epoch;
    s.kubectl(&["delete", "pod", "demo-zone-b-0", "-n", NS, "--wait=false"])?;
    let uid = before.uid.clone();
    s.wait(SETTLE, "demo-zone-b-0 recreated and Ready", |s| {
        s.pod("demo-zone-b-0").is_ok_and(|p| p.uid != uid && p.ready)
    })
    .await?;
    let after = s.pod("demo-zone-b-0")?;
    let address = after.peer_address()?;
    // Its data came back with it (same volume): every key is there, read locally at once.
    let mut missing = Vec::new();
    for key in s.written.keys() {
        if local_replica_at(&address, &access().peer, key.as_bytes())
            .await?
            .live_values()
            .is_empty()
        {
            missing.push(key.clone());
        }
    }
    ensure!(
        missing.is_empty(),
        "the recreated node lacks {} keys, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let ring = client(&after.address()?).ring().await?;
    ensure!(
        ring.epoch == epoch,
        "the ring changed ({epoch} -> {}): the node rejoined as new",
        ring.epoch
    );
    s.wait(SETTLE, "3 nodes Ready", |s| s.cluster_ready(3)).await?;
    s.check_written(&after.address()?).await
}

async fn remove_crashed_node(s: &mut Suite) -> anyhow::Result<()> {
    // Forced removal waits this long after the node became unreachable (default 5 minutes).
    s.patch(&json!({"spec": {"failure": {"forceRemoveAfter": "10s"}}}))?;
    s.scale(0, 2)?;
    s.wait(SETTLE, "4 nodes Ready", |s| s.cluster_ready(4)).await?;
    let crashed_at = Instant::now();
    s.kubectl(&[
        "annotate",
        "pod",
        "demo-zone-a-1",
        "-n",
        NS,
        &format!("{CRASH_ANNOTATION}=true"),
    ])?;
    s.wait(Duration::from_secs(60), "demo-zone-a-1 down", |s| {
        s.pod("demo-zone-a-1").is_ok_and(|p| !p.ready)
    })
    .await?;
    s.scale(0, 1)?;
    s.wait(SETTLE, "3 nodes Ready without the crashed node", |s| {
        s.cluster_ready(3) && s.pod("demo-zone-a-1").is_err()
    })
    .await?;
    let took = crashed_at.elapsed();
    println!("e2e:   the crashed node was removed {:.1} s after it crashed", took.as_secs_f64());
    ensure!(
        took >= Duration::from_secs(10),
        "the crashed node was removed after {took:?}, before forceRemoveAfter (10 s) passed"
    );
    let observer = s.pod("demo-zone-b-0")?.address()?;
    let m = Suite::membership(&observer, "demo-zone-a-1").await?;
    ensure!(m == Some(MemberState::Left), "the crashed node is {m:?}, not left");
    let ring = client(&observer).ring().await?;
    ensure!(ring.members.iter().all(|m| m.id != "demo-zone-a-1"), "it still owns partitions");
    s.wait(Duration::from_secs(60), "its PVC deleted", |s| {
        !s.exists("pvc", "data-demo-zone-a-1", NS)
    })
    .await?;
    // N=3 on the three nodes left: each holds every key, copied from the survivors.
    for p in s.pods()? {
        let address = p.peer_address()?;
        for key in s.written.keys() {
            ensure!(
                !local_replica_at(&address, &access().peer, key.as_bytes())
                    .await?
                    .live_values()
                    .is_empty(),
                "{key} is missing on {}",
                p.name
            );
        }
        s.check_written(&p.address()?).await?;
    }
    Ok(())
}

/// What starts a rollout.
enum Trigger {
    /// A merge patch of the DynamoCluster that changes the pod template.
    Patch(Value),
    /// A new value of the `dynamokv.io/restartedAt` annotation.
    Restart,
}

/// The annotation that restarts every pod once when its value changes.
const RESTARTED_AT: &str = "dynamokv.io/restartedAt";

/// Starts a rollout with `trigger` and waits until it is over: every member replaced and
/// [`Suite::rolled_out`]. With `kill_operator`, the operator is killed (`kill -9`) as soon as
/// the first pod has been replaced, and a new one started 3 s later. Then checks that at no
/// instant two members were not Ready, that each was restarted exactly once, and that the status
/// showed the rolling update. Returns the readiness log.
async fn roll(
    s: &mut Suite,
    what: &str,
    trigger: Trigger,
    kill_operator: bool,
) -> anyhow::Result<ReadinessLog> {
    let members = s.members()?;
    let nodes = members.len() as i64;
    let before = s.update_revisions()?;
    let watcher = s.readiness().await?;
    let template_change = matches!(trigger, Trigger::Patch(_));
    match trigger {
        Trigger::Patch(patch) => s.patch(&patch)?,
        Trigger::Restart => {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            s.kubectl(&[
                "annotate",
                "dynamocluster",
                CLUSTER,
                "-n",
                NS,
                "--overwrite",
                &format!("{RESTARTED_AT}={now}"),
            ])?;
        }
    }
    let start = Instant::now();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut killed = !kill_operator;
    let outcome = loop {
        s.env.control_plane.check_alive()?;
        let restarts = watcher.log().restarts();
        if !killed && restarts.values().sum::<usize>() >= 1 {
            println!(
                "e2e:   killing the operator after {:.1} s; restarts so far {restarts:?}; \
                 rollout status {}",
                start.elapsed().as_secs_f64(),
                s.cluster_status()["rollout"]
            );
            s.operator().kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            s.operator().start()?;
            killed = true;
        }
        if let Some((status, reason)) = s.condition("Progressing") {
            seen.insert(format!("Progressing={status}: {reason}"));
        }
        let rollout = &s.cluster_status()["rollout"];
        if !rollout.is_null() {
            seen.insert(format!(
                "rollout {}/{} restarting {}",
                rollout["updatedPods"], rollout["totalPods"], rollout["restarting"]
            ));
        }
        let everyone = members.iter().all(|m| restarts.get(m).is_some_and(|r| *r >= 1));
        if everyone && s.rolled_out(nodes) {
            break Ok(start.elapsed());
        }
        if start.elapsed() > SETTLE {
            break Err(anyhow::anyhow!(
                "{what}: not rolled out after {SETTLE:?}; restarts {restarts:?}\n{}",
                s.diagnosis()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if outcome.is_ok() {
        tokio::time::sleep(AFTER_ROLLOUT).await;
    }
    let log = watcher.stop().await;
    let took = outcome.with_context(|| format!("readiness of the pods:\n{log}"))?;
    let peak = log.max_not_ready(&members);
    let restarts = log.restarts();
    let first_down = log.changes().iter().find(|c| members.contains(&c.pod)).map(|c| c.at);
    println!(
        "e2e:   {what}: rolled out in {:.1} s, the first pod down after {:.1} s; restarts \
         {restarts:?}; at most {} pod(s) not Ready at once; rollout status {}",
        took.as_secs_f64(),
        first_down.unwrap_or_default().as_secs_f64(),
        peak.count,
        s.cluster_status()["rollout"]
    );
    println!("e2e:   status seen: {seen:?}");
    ensure!(
        peak.count <= 1,
        "{what}: {} pods were not Ready at once ({:?}, {:.1} s in):\n{log}",
        peak.count,
        peak.pods,
        peak.at.as_secs_f64()
    );
    ensure!(
        members.iter().all(|m| restarts.get(m) == Some(&1)),
        "{what}: every pod should be restarted exactly once; restarts {restarts:?}:\n{log}"
    );
    if template_change {
        let after = s.update_revisions()?;
        ensure!(
            after.iter().all(|(sts, rev)| before.get(sts) != Some(rev)),
            "{what}: a StatefulSet's updateRevision did not change: {before:?} -> {after:?}"
        );
    }
    ensure!(
        seen.iter().any(|c| c.ends_with(": RollingUpdate")),
        "{what}: the Progressing condition never said RollingUpdate; seen {seen:?}"
    );
    // The watch began just before the change: its clock is the time since the change.
    ensure!(
        first_down.is_some_and(|at| at <= ROLLOUT_START),
        "{what}: the first pod went down {:.1} s after the change; the operator should start a \
         rollout within {ROLLOUT_START:?}:\n{log}",
        first_down.unwrap_or_default().as_secs_f64()
    );
    Ok(log)
}

async fn image_and_config(s: &mut Suite) -> anyhow::Result<()> {
    let traffic = s.traffic("s9-").await?;
    let outcome = image_and_config_changes(s).await;
    s.finish_traffic(traffic, outcome).await
}

async fn image_and_config_changes(s: &mut Suite) -> anyhow::Result<()> {
    let image = json!({"spec": {"image": NEXT_IMAGE}});
    roll(s, "image change", Trigger::Patch(image), false).await?;
    let pods = s.pods()?;
    ensure!(
        pods.iter().all(|p| p.image == NEXT_IMAGE),
        "pods run {:?}, not {NEXT_IMAGE}",
        pods.iter().map(|p| (&p.name, &p.image)).collect::<Vec<_>>()
    );
    let config = json!({"spec": {"nodeConfig": {"requestTimeoutMs": 2500}}});
    roll(s, "nodeConfig change", Trigger::Patch(config), false).await?;
    let toml = s.node_toml()?;
    ensure!(toml.contains("request_timeout_ms = 2500"), "node.toml is now:\n{toml}");
    Ok(())
}

async fn restart_annotation(s: &mut Suite) -> anyhow::Result<()> {
    let traffic = s.traffic("s10-").await?;
    let outcome = roll(s, "restartedAt", Trigger::Restart, false).await.map(drop);
    s.finish_traffic(traffic, outcome).await
}

/// The operator's security objects exist, and a certificate rotation (here started by a shorter
/// lifetime, which re-issues at once) rolls the nodes one at a time under traffic with no failed
/// request beyond the clients' retries.
async fn security(s: &mut Suite) -> anyhow::Result<()> {
    for name in ["ca", "tls", "admin-token", "client-token", "tokens"] {
        let secret = format!("{CLUSTER}-{name}");
        ensure!(s.exists("secret", &secret, NS), "Secret {secret} is missing");
    }
    // The peer port admits only the cluster's pods and the operator.
    let policy = s.get_json(&["networkpolicy", CLUSTER, "-n", NS])?;
    let rules = policy["spec"]["ingress"].as_array().cloned().unwrap_or_default();
    let peer_rule = rules
        .iter()
        .find(|r| r["ports"].as_array().into_iter().flatten().any(|p| p["port"] == 7071))
        .with_context(|| format!("no ingress rule for the peer port: {policy}"))?;
    ensure!(
        peer_rule["from"].as_array().is_some_and(|f| !f.is_empty()),
        "the peer port is open to everyone: {peer_rule}"
    );
    for pod in
        s.get_json(&["pods", "-n", NS, "-l", SELECTOR])?["items"].as_array().into_iter().flatten()
    {
        ensure!(
            pod["spec"]["automountServiceAccountToken"] == false,
            "pod {} mounts a service account token",
            pod["metadata"]["name"]
        );
    }
    let hash = |s: &Suite| s.cluster_status()["tls"]["hash"].as_str().map(str::to_string);
    let before = hash(s).context("status.tls.hash is not set")?;
    let traffic = s.traffic("s16-").await?;
    let rotate = json!({"spec": {"tls": {"certificateLifetime": "10m", "renewBefore": "8m"}}});
    let outcome = roll(s, "certificate rotation", Trigger::Patch(rotate), false).await.map(drop);
    s.finish_traffic(traffic, outcome).await?;
    let after = hash(s).context("status.tls.hash is not set")?;
    ensure!(after != before, "the certificate was not re-issued ({before})");
    let not_after = s.cluster_status()["tls"]["notAfter"].as_str().unwrap_or_default().to_string();
    let expires: k8s_openapi::jiff::Timestamp = not_after.parse()?;
    let left = expires.duration_since(k8s_openapi::jiff::Timestamp::now());
    ensure!(
        left.as_secs() > 0 && left.as_secs() <= 600,
        "the new certificate expires at {not_after}, not within its 10 minute lifetime"
    );
    Ok(())
}

async fn immutable_fields(s: &mut Suite) -> anyhow::Result<()> {
    let traffic = s.traffic("s11-").await?;
    let outcome = immutable_edits(s).await;
    s.finish_traffic(traffic, outcome).await
}

async fn immutable_edits(s: &mut Suite) -> anyhow::Result<()> {
    let generation = |s: &Suite| {
        s.get_json(&["dynamocluster", CLUSTER, "-n", NS])
            .map(|dc| dc["metadata"]["generation"].clone())
    };
    let before = generation(s)?;
    let cases = [
        ("partitions", json!({"spec": {"partitions": 512}}), messages::PARTITIONS_IMMUTABLE),
        (
            "engine",
            json!({"spec": {"nodeConfig": {"engine": "memory"}}}),
            messages::ENGINE_IMMUTABLE,
        ),
        ("factor", json!({"spec": {"replication": {"factor": 2}}}), messages::FACTOR_IMMUTABLE),
        ("storage shrink", json!({"spec": {"storage": {"size": "5Gi"}}}), messages::STORAGE_SHRINK),
        (
            "storage class",
            json!({"spec": {"storage": {"storageClassName": "other"}}}),
            messages::STORAGE_CLASS_IMMUTABLE,
        ),
    ];
    for (what, patch, message) in cases {
        let err = match s.patch(&patch) {
            Ok(()) => bail!("the API server accepted a change of {what}: {patch}"),
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains(message),
            "{what}: expected the CRD's message {message:?}, got: {err}"
        );
        let said = err.lines().filter(|l| l.contains("Invalid")).collect::<Vec<_>>().join(" ");
        println!(
            "e2e:   {what} rejected: {}",
            said.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    ensure!(generation(s)? == before, "a rejected edit changed the DynamoCluster's generation");

    // r and w stay changeable. The first edit may start a rollout that the second one
    // redirects; the cluster must settle on the final spec, one pod at a time.
    let members = s.members()?;
    let watcher = s.readiness().await?;
    s.patch(&json!({"spec": {"replication": {"r": 1, "w": 3}}}))?;
    let replication =
        s.get_json(&["dynamocluster", CLUSTER, "-n", NS])?["spec"]["replication"].clone();
    ensure!(
        replication == json!({"factor": 3, "r": 1, "w": 3}),
        "replication after the edit: {replication}"
    );
    s.patch(&json!({"spec": {"replication": {"r": 2, "w": 2}}}))?;
    let settled = s
        .wait(SETTLE, "the cluster settled on r=2, w=2", |s| {
            s.rolled_out(members.len() as i64)
                && s.node_toml().is_ok_and(|t| t.contains("r = 2") && t.contains("w = 2"))
        })
        .await;
    tokio::time::sleep(AFTER_ROLLOUT).await;
    let log = watcher.stop().await;
    settled.with_context(|| format!("readiness of the pods:\n{log}"))?;
    let peak = log.max_not_ready(&members);
    println!(
        "e2e:   r/w edited and reverted: restarts {:?}, at most {} pod(s) not Ready at once",
        log.restarts(),
        peak.count
    );
    ensure!(
        peak.count <= 1,
        "{} pods were not Ready at once ({:?}):\n{log}",
        peak.count,
        peak.pods
    );
    for p in s.pods()? {
        let status = client(&p.address()?).status().await?;
        ensure!(
            (status.r, status.w) == (2, 2),
            "{} runs with r={} w={}",
            p.name,
            status.r,
            status.w
        );
    }
    Ok(())
}

async fn operator_restart_mid_rollout(s: &mut Suite) -> anyhow::Result<()> {
    let traffic = s.traffic("s12-").await?;
    // A spec change (not the annotation), so that the rollout starts at once.
    let config = json!({"spec": {"nodeConfig": {"requestTimeoutMs": 3000}}});
    let outcome =
        roll(s, "nodeConfig change, operator killed", Trigger::Patch(config), true).await.map(drop);
    s.finish_traffic(traffic, outcome).await
}

async fn grow_storage(s: &mut Suite) -> anyhow::Result<()> {
    let traffic = s.traffic("s13-").await?;
    let outcome = grow(s, "20Gi").await;
    s.finish_traffic(traffic, outcome).await
}

/// A claim of a current pod.
struct ClaimInfo {
    name: String,
    /// Its volume's name.
    volume: String,
    /// `status.capacity`, in bytes.
    capacity: Option<u128>,
    /// `status.conditions` (resize conditions while an expansion is under way).
    conditions: Value,
}

/// The claims of the current pods.
fn claims(s: &Suite) -> anyhow::Result<Vec<ClaimInfo>> {
    let mut out = Vec::new();
    for pod in s.pods()? {
        let name = format!("data-{}", pod.name);
        let pvc = s.get_json(&["pvc", &name, "-n", NS])?;
        out.push(ClaimInfo {
            volume: pvc["spec"]["volumeName"].as_str().unwrap_or_default().to_string(),
            capacity: pvc["status"]["capacity"]["storage"].as_str().and_then(quantity::bytes),
            conditions: pvc["status"]["conditions"].clone(),
            name,
        });
    }
    Ok(out)
}

async fn grow(s: &mut Suite, size: &str) -> anyhow::Result<()> {
    let want = quantity::bytes(size);
    let members = s.members()?;
    let watcher = s.readiness().await?;
    s.patch(&json!({"spec": {"storage": {"size": size}}}))?;
    let grown = s
        .wait(SETTLE, &format!("every claim and StatefulSet at {size}"), |s| {
            let claims_grown = claims(s)
                .is_ok_and(|c| c.len() == members.len() && c.iter().all(|c| c.capacity == want));
            let templates =
                s.get_json(&["statefulsets", "-n", NS, "-l", SELECTOR]).is_ok_and(|l| {
                    l["items"].as_array().into_iter().flatten().all(|sts| {
                        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
                            ["storage"]
                            .as_str()
                            .and_then(quantity::bytes)
                            == want
                    })
                });
            claims_grown && templates && s.cluster_ready(members.len() as i64)
        })
        .await;
    tokio::time::sleep(AFTER_ROLLOUT).await;
    let log = watcher.stop().await;
    let took = grown.with_context(|| format!("readiness of the pods:\n{log}"))?;
    for ClaimInfo { name: claim, volume, conditions, .. } in claims(s)? {
        let resizing =
            conditions.as_array().into_iter().flatten().any(|c| {
                storage::RESIZE_CONDITIONS.contains(&c["type"].as_str().unwrap_or_default())
            });
        ensure!(!resizing, "{claim} still has resize conditions: {conditions}");
        let pv = s.get_json(&["pv", &volume])?;
        let capacity = pv["spec"]["capacity"]["storage"].as_str().and_then(quantity::bytes);
        ensure!(capacity == want, "{volume} (of {claim}) has capacity {capacity:?}, not {size}");
        let dir = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap_or_default());
        storage::check_recorded(&dir, size)?;
    }
    let restarts = log.restarts();
    let peak = log.max_not_ready(&members);
    println!(
        "e2e:   volumes at {size} after {:.1} s; restarts {restarts:?}; at most {} pod(s) not \
         Ready at once",
        took.as_secs_f64(),
        peak.count
    );
    ensure!(
        restarts.values().all(|r| *r <= 1),
        "a pod was restarted more than once for a volume expansion: {restarts:?}\n{log}"
    );
    ensure!(
        peak.count <= 1,
        "{} pods were not Ready at once ({:?}):\n{log}",
        peak.count,
        peak.pods
    );
    Ok(())
}

/// How a node whose machine is lost is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replacement {
    /// The stuck pod annotated `dynamokv.io/replace=true`.
    Annotation,
    /// `spec.failure.replaceLostVolumes: true`: the operator sees the pod stuck on a volume of
    /// a Node that no longer exists.
    Automatic,
}

async fn replace_lost_nodes(s: &mut Suite) -> anyhow::Result<()> {
    let traffic = s.traffic("s14-").await?;
    let outcome = async {
        replace_lost(s, "zone-a", Replacement::Annotation).await?;
        replace_lost(s, "zone-b", Replacement::Automatic).await
    }
    .await;
    s.finish_traffic(traffic, outcome).await
}

/// Loses the machine of `zone`'s first pod with its volume, adds a replacement machine in the
/// zone, has the node replaced `how`, and checks that the old member was removed, that a new
/// empty node joined on the new machine with a new volume, and that it received every key.
async fn replace_lost(s: &mut Suite, zone: &str, how: Replacement) -> anyhow::Result<()> {
    let name = format!("demo-{zone}-0");
    let claim = format!("data-{name}");
    let before = s.pod(&name)?;
    let claim_uid = s.get_json(&["pvc", &claim, "-n", NS])?["metadata"]["uid"].clone();
    let others: BTreeSet<String> = s.members()?.into_iter().filter(|m| *m != name).collect();
    let observer = s.pod(others.last().context("no other pod")?)?.address()?;
    let epoch = client(&observer).ring().await?.epoch;
    if how == Replacement::Automatic {
        s.patch(
            &json!({"spec": {"failure": {"replaceLostVolumes": true, "forceRemoveAfter": "10s"}}}),
        )?;
    }
    let watcher = s.readiness().await?;
    let lost = s.env.lose_node(&before.node).await?;
    println!("e2e:   machine {} lost with {:?}", before.node, lost);
    if how == Replacement::Annotation {
        s.wait(Duration::from_secs(60), &format!("{name} recreated and unschedulable"), |s| {
            s.pod(&name).is_ok_and(|p| p.uid != before.uid && p.unschedulable.is_some())
        })
        .await?;
    }
    let machine = s.env.add_node(zone).await?;
    println!("e2e:   replacement machine {machine} Ready");
    if how == Replacement::Annotation {
        // The scheduler retries on the new Node and still cannot place the pod: its volume is
        // pinned to the machine that is gone.
        s.wait(Duration::from_secs(60), "the pod stuck on its volume's node affinity", |s| {
            s.pod(&name).is_ok_and(|p| {
                p.unschedulable.as_deref().is_some_and(|m| {
                    // Kubernetes 1.37's words; older schedulers say "volume node affinity conflict".
                    m.contains("PersistentVolume's node affinity")
                        || m.contains("volume node affinity conflict")
                })
            })
        })
        .await?;
        let stuck = s.pod(&name)?;
        println!("e2e:   {name} is {}: {}", stuck.phase, stuck.unschedulable.unwrap_or_default());
        s.kubectl(&["annotate", "pod", &name, "-n", NS, "dynamokv.io/replace=true"])?;
    }
    // The old member must leave the ring before the new, empty one joins under the same name.
    let mut seen: Vec<Option<MemberState>> = Vec::new();
    // What the operator said meanwhile (Progressing reason and message), for failures.
    let mut said: Vec<String> = Vec::new();
    let start = Instant::now();
    let took = loop {
        s.env.control_plane.check_alive()?;
        let status = s.cluster_status();
        for c in status["conditions"].as_array().into_iter().flatten() {
            if c["type"] == "Progressing" && c["status"] == "True" {
                let line = format!("{}: {}", c["reason"], c["message"]);
                if said.last() != Some(&line) {
                    said.push(line);
                }
            }
        }
        // A status call that fails says nothing about the membership (not "gone").
        if let Ok(m) = Suite::membership(&observer, &name).await {
            if seen.last() != Some(&m) {
                seen.push(m);
            }
        }
        let placed = s.pod(&name).is_ok_and(|p| p.ready && p.node == machine);
        if placed && s.cluster_ready(3) {
            break start.elapsed();
        }
        if start.elapsed() > REPLACE {
            bail!(
                "{name} not replaced on {machine} after {REPLACE:?}; its membership went {seen:?}; \
                 the operator said {said:#?}\n{}",
                s.diagnosis()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let log = watcher.stop().await;
    println!(
        "e2e:   {name} replaced ({how:?}) on {machine} {:.1} s after the machine was added; \
         its membership went {seen:?}",
        took.as_secs_f64()
    );
    ensure!(
        seen.iter().any(|m| matches!(m, None | Some(MemberState::Left))),
        "{name} was never removed from the ring before it rejoined: its membership went \
         {seen:?}; the operator said {said:#?}"
    );
    let pvc = s.get_json(&["pvc", &claim, "-n", NS])?;
    ensure!(pvc["metadata"]["uid"] != claim_uid, "{claim} is the old claim");
    let volume = s.get_json(&["pv", pvc["spec"]["volumeName"].as_str().unwrap_or_default()])?;
    let pinned = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]
        ["matchExpressions"][0]["values"][0]
        .clone();
    ensure!(pinned == machine.as_str(), "the new volume is pinned to {pinned}, not {machine}");
    let ring = client(&observer).ring().await?;
    ensure!(ring.epoch > epoch, "the ring did not change ({epoch} -> {})", ring.epoch);
    let peak = log.max_not_ready(&others);
    ensure!(peak.count == 0, "other pods went down meanwhile ({:?}):\n{log}", peak.pods);
    // N=3 on three nodes: the new node holds every key, streamed from the others.
    let address = s.pod(&name)?.peer_address()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut missing = 0;
        for key in s.written.keys() {
            if local_replica_at(&address, &access().peer, key.as_bytes())
                .await?
                .live_values()
                .is_empty()
            {
                missing += 1;
            }
        }
        if missing == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the new {name} still lacks {missing} of {} keys after 120 s",
            s.written.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

async fn pause(s: &mut Suite) -> anyhow::Result<()> {
    let traffic = s.traffic("s15-").await?;
    let outcome = paused_scale_up(s).await;
    s.finish_traffic(traffic, outcome).await
}

async fn paused_scale_up(s: &mut Suite) -> anyhow::Result<()> {
    let members = s.members()?;
    let watcher = s.readiness().await?;
    s.patch(&json!({"spec": {"paused": true}}))?;
    s.wait(Duration::from_secs(60), "Progressing: Paused", |s| {
        s.condition("Progressing").is_some_and(|(_, reason)| reason == "Paused")
    })
    .await?;
    let pods_before: Vec<(String, String)> =
        s.pods()?.into_iter().map(|p| (p.name, p.uid)).collect();
    s.scale(2, 2)?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        let replicas =
            s.get_json(&["statefulset", "demo-zone-c", "-n", NS])?["spec"]["replicas"].clone();
        ensure!(replicas == 1, "paused, yet demo-zone-c was scaled to {replicas}");
        let pods: Vec<(String, String)> = s.pods()?.into_iter().map(|p| (p.name, p.uid)).collect();
        ensure!(pods == pods_before, "paused, yet the pods changed: {pods_before:?} -> {pods:?}");
        let progressing = s.condition("Progressing");
        ensure!(
            progressing.as_ref().is_some_and(|(_, reason)| reason == "Paused"),
            "paused, yet Progressing is {progressing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("e2e:   nothing changed in 15 s while paused");
    s.patch(&json!({"spec": {"paused": false}}))?;
    let took = s.wait(SETTLE, "4 nodes Ready after unpausing", |s| s.cluster_ready(4)).await?;
    println!("e2e:   unpaused: the new node joined in {:.1} s", took.as_secs_f64());
    let new = s.pod("demo-zone-c-1")?;
    let status = client(&new.address()?).status().await?;
    // Nodes removed by earlier scenarios stay in the view as `left`; every pod is `normal`.
    let pods = s.members()?;
    ensure!(
        pods.len() == 4
            && pods.iter().all(|p| status.membership_of(p) == Some(MemberState::Normal)),
        "pods {pods:?}; memberships as the new node sees them: {:?}",
        status.nodes.iter().map(|n| (&n.id, &n.membership)).collect::<Vec<_>>()
    );
    s.scale(2, 1)?;
    s.wait(SETTLE, "back to 3 nodes", |s| {
        s.cluster_ready(3)
            && s.pod("demo-zone-c-1").is_err()
            && !s.exists("pvc", "data-demo-zone-c-1", NS)
    })
    .await?;
    let log = watcher.stop().await;
    let peak = log.max_not_ready(&members);
    ensure!(peak.count == 0, "existing pods went down ({:?}):\n{log}", peak.pods);
    ensure!(
        log.restarts().iter().filter(|(name, _)| members.contains(*name)).all(|(_, r)| *r == 0),
        "existing pods were restarted: {:?}",
        log.restarts()
    );
    Ok(())
}

async fn delete_cluster(s: &mut Suite) -> anyhow::Result<()> {
    let pvcs_before: BTreeSet<String> =
        s.get_json(&["pvc", "-n", NS, "-l", &format!("dynamokv.io/cluster={CLUSTER}")])?["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["metadata"]["name"].as_str().map(Into::into))
            .collect();
    s.kubectl(&["delete", "dynamocluster", CLUSTER, "-n", NS, "--timeout=120s"])?;
    let selector = format!("dynamokv.io/cluster={CLUSTER}");
    s.wait(SETTLE, "every child garbage-collected", |s| {
        s.kubectl(&[
            "get",
            "statefulsets,services,configmaps,poddisruptionbudgets,pods",
            "-n",
            NS,
            "-l",
            &selector,
            "-o",
            "name",
        ])
        .is_ok_and(|out| out.trim().is_empty())
    })
    .await?;
    let netns = run(Command::new("ip").args(["netns", "list"]))?;
    ensure!(
        !netns.lines().any(|l| l.starts_with(dynamo_e2e::network::PREFIX)),
        "pod network namespaces remain: {netns}"
    );
    // whenDeleted: Retain (the default): the volumes stay, still bound, for a later cluster.
    for pvc in &pvcs_before {
        let phase = s.kubectl(&["get", "pvc", pvc, "-n", NS, "-o", "jsonpath={.status.phase}"])?;
        ensure!(phase == "Bound", "PVC {pvc} is {phase:?} after the cluster was deleted");
    }
    ensure!(pvcs_before.len() == 3, "PVCs before deletion: {pvcs_before:?}");
    Ok(())
}
