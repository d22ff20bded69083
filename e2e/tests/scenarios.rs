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
//!      take its partitions over from the surviving replicas) instead of waiting forever;
//!   6. deleting the DynamoCluster garbage-collects its children and keeps the volumes.
//!
//! Run it with `scripts/e2e` (root, Go-built tools, release of the workspace's binaries).

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
use dynamo_operator::crd::messages;
use dynamo_tests::cluster::{local_replica_at, target_binary, Placement};
use dynamo_tests::history;
use dynamo_tests::nemesis::{converge_nodes, NodeAddress};
use dynamo_tests::workload::{Endpoint, Recorder, Workload, WorkloadOptions};
use serde_json::Value;

const NS: &str = "default";
const CLUSTER: &str = "demo";
/// Longest a cluster may take to settle after a change (joins and leaves move data).
const SETTLE: Duration = Duration::from_secs(240);

struct Suite {
    env: Environment,
    repo: PathBuf,
    operator: Option<Operator>,
    /// Keys written in scenario 1 with their values; every later scenario reads them back.
    written: BTreeMap<String, String>,
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
}

impl PodInfo {
    fn address(&self) -> anyhow::Result<String> {
        Ok(format!("{}:7070", self.ip.as_deref().context("pod has no IP yet")?))
    }
}

fn client(address: &str) -> Client {
    Client::new(address, Duration::from_secs(10)).expect("valid address")
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
        ready
            && status["observedGeneration"] == dc["metadata"]["generation"]
            && status["readyNodes"].as_i64() == Some(nodes)
            && status["desiredNodes"].as_i64() == Some(nodes)
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
            pods.push(PodInfo {
                name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
                uid: p["metadata"]["uid"].as_str().unwrap_or_default().into(),
                ip: p["status"]["podIP"].as_str().map(Into::into),
                node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
                ready,
                terminating: p["metadata"]["deletionTimestamp"].is_string(),
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
                bail!(
                    "{what}: not after {timeout:?}\ncluster status: {}\npods: {:#?}\noperator log:\n{}",
                    serde_json::to_string_pretty(&self.cluster_status()).unwrap_or_default(),
                    self.pods().unwrap_or_default(),
                    self.operator.as_ref().map(|o| o.tail(30)).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
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
    let mut suite = Suite { env, repo, operator: None, written: BTreeMap::new() };
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
    step("6 delete the DynamoCluster", delete_cluster(s)).await?;
    Ok(())
}

async fn step(
    name: &str,
    f: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
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
    let endpoints = s.service_endpoints()?;
    ensure!(endpoints.len() == 3, "client Service endpoints: {endpoints:?}");
    let ring = client(&endpoints[0]).ring().await?;
    ensure!(ring.members.len() == 3, "ring members: {:?}", ring.members);

    // dynamoctl, as a user would, through the Service's endpoints.
    let dynamoctl = target_binary("dynamoctl")?;
    run(Command::new(&dynamoctl).args(["--endpoint", &endpoints[0], "put", "hello", "world"]))?;
    let got = run(Command::new(&dynamoctl).args(["--endpoint", &endpoints[1], "get", "hello"]))?;
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
    let recorder = Arc::new(Recorder::new());
    let stable: Vec<PodInfo> =
        s.pods()?.into_iter().filter(|p| p.name != "demo-zone-a-1").collect();
    let endpoints: Vec<Endpoint> = stable
        .iter()
        .map(|p| {
            Ok(Endpoint {
                node: p.name.clone(),
                client: Client::new(&p.address()?, Duration::from_secs(5))?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let options = WorkloadOptions {
        clients: 4,
        keys: 40,
        max_think: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        seed: 20_261_125,
        prefix: "e2e".into(),
    };
    let workload = Workload::start(endpoints, &options, recorder.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = scale_down_and_watch(s, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    workload.stop().await;
    outcome?;

    let nodes: Vec<NodeAddress> = s
        .pods()?
        .iter()
        .map(|p| Ok(NodeAddress { id: p.name.clone(), address: p.address()? }))
        .collect::<anyhow::Result<_>>()?;
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let placement = Placement::of(&client(&nodes[0].address), &ids).await?;
    let final_state = converge_nodes(&nodes, &placement, &options.key_names(), &recorder).await?;
    let history = recorder.history();
    let report = history::check(&history, &final_state);
    let stats = history::Stats::of(&history, &final_state);
    println!(
        "e2e:   workload during the scale-down: {} ops, {} acknowledged writes, {} ok",
        stats.total(),
        stats.acked_writes(),
        stats.ok()
    );
    ensure!(report.is_ok(), "history check failed:\n{report}");
    ensure!(stats.acked_writes() > 50, "too few acknowledged writes to mean anything");
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
    let address = after.address()?;
    // Its data came back with it (same volume): every key is there, read locally at once.
    let mut missing = Vec::new();
    for key in s.written.keys() {
        if local_replica_at(&address, key.as_bytes()).await?.live_values().is_empty() {
            missing.push(key.clone());
        }
    }
    ensure!(
        missing.is_empty(),
        "the recreated node lacks {} keys, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let ring = client(&address).ring().await?;
    ensure!(
        ring.epoch == epoch,
        "the ring changed ({epoch} -> {}): the node rejoined as new",
        ring.epoch
    );
    s.wait(SETTLE, "3 nodes Ready", |s| s.cluster_ready(3)).await?;
    s.check_written(&address).await
}

async fn remove_crashed_node(s: &mut Suite) -> anyhow::Result<()> {
    s.scale(0, 2)?;
    s.wait(SETTLE, "4 nodes Ready", |s| s.cluster_ready(4)).await?;
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
        let address = p.address()?;
        for key in s.written.keys() {
            ensure!(
                !local_replica_at(&address, key.as_bytes()).await?.live_values().is_empty(),
                "{key} is missing on {}",
                p.name
            );
        }
        s.check_written(&address).await?;
    }
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
