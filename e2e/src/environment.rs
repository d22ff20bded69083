//! The whole e2e environment: the pod network, the control plane, one fake Node per zone (kept
//! Ready by kwok) with the default StorageClass, and the kubelet running the pods. Machines can
//! be lost for good ([`Environment::lose_node`]) and added ([`Environment::add_node`]). Dropping
//! it stops the kubelet's processes, then the control plane, then removes the network.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::control_plane::{ControlPlane, KWOK_ANNOTATION};
use crate::kubelet::{Kubelet, KubeletConfig, Machines};
use crate::network::Network;
use crate::storage::{host_path, storage_class, volume_node, HOSTNAME_LABEL};

/// The zones the fake Nodes are labelled with (`topology.kubernetes.io/zone`), as in
/// `examples/cluster.yaml` and `e2e/kind/kind-config.yaml`.
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// The host's address on the pod network (pods get 10.244.1.x and up).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

/// Everything running.
pub struct Environment {
    // Field order is drop order: the kubelet's processes first, the network last.
    kubelet: Option<(CancellationToken, JoinHandle<()>)>,
    /// The machines the kubelet serves.
    machines: Machines,
    /// The [`Machines`] version the kubelet has acted on.
    acted: watch::Receiver<u64>,
    /// Replacement machines made so far, to name the next one.
    added: usize,
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The pod network.
    pub network: Arc<Network>,
    /// The names of the fake Nodes that exist now.
    pub nodes: Vec<String>,
}

/// What went with a machine taken away by [`Environment::lose_node`].
#[derive(Debug, Clone, Default)]
pub struct LostNode {
    /// Pods that ran there (namespace/name), force-deleted.
    pub pods: Vec<String>,
    /// Volume directories that were on its disk, deleted.
    pub volumes: Vec<PathBuf>,
}

/// A fake Node in `zone`, managed by kwok.
fn node_object(name: &str, zone: &str) -> anyhow::Result<Node> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION.0: KWOK_ANNOTATION.1},
            "labels": {
                HOSTNAME_LABEL: name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "topology.kubernetes.io/zone": zone,
            },
        },
    }))?)
}

impl Environment {
    /// Starts it all in `dir`; `images` maps image repository names to local programs.
    pub async fn start(
        dir: &Path,
        images: BTreeMap<String, PathBuf>,
    ) -> anyhow::Result<Environment> {
        let network = Arc::new(Network::create(HOST_IP, 16, "cluster.local")?);
        let control_plane = ControlPlane::start(dir, HOST_IP).await?;
        let client = control_plane.client().await?;

        let classes: Api<StorageClass> = Api::all(client.clone());
        classes
            .create(&PostParams::default(), &storage_class()?)
            .await
            .context("creating the StorageClass")?;

        let nodes_api: Api<Node> = Api::all(client.clone());
        let machines = Machines::default();
        let mut nodes = Vec::new();
        for zone in ZONES {
            let name = format!("e2e-{zone}");
            nodes_api
                .create(&PostParams::default(), &node_object(&name, zone)?)
                .await
                .context("creating a Node")?;
            machines.add(&name);
            nodes.push(name);
        }
        let kubelet = Kubelet::new(
            client,
            network.clone(),
            KubeletConfig { machines: machines.clone(), images, dir: control_plane.dir.clone() },
        );
        let acted = kubelet.acted();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(kubelet.run(cancel.clone()));
        let env = Environment {
            kubelet: Some((cancel, task)),
            machines,
            acted,
            added: 0,
            control_plane,
            network,
            nodes,
        };
        for node in &env.nodes {
            env.wait_node_ready(node).await?;
        }
        Ok(env)
    }

    async fn wait_node_ready(&self, node: &str) -> anyhow::Result<()> {
        self.control_plane
            .wait_for(Duration::from_secs(60), &format!("Node {node} Ready"), || {
                let mut c = self.control_plane.kubectl();
                c.args([
                    "get",
                    "node",
                    node,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ]);
                crate::process::run(&mut c).is_ok_and(|s| s.trim() == "True")
            })
            .await
    }

    /// A new machine in `zone` (a replacement for a lost one): a fake Node named
    /// `e2e-<zone>-<n>`, kept Ready by kwok, whose pods the kubelet runs. Returns its name once
    /// it is Ready.
    pub async fn add_node(&mut self, zone: &str) -> anyhow::Result<String> {
        self.added += 1;
        let name = format!("e2e-{zone}-{}", self.added + 1);
        let client = self.control_plane.client().await?;
        Api::<Node>::all(client)
            .create(&PostParams::default(), &node_object(&name, zone)?)
            .await
            .with_context(|| format!("creating Node {name}"))?;
        self.machines.add(&name);
        self.nodes.push(name.clone());
        self.wait_node_ready(&name).await?;
        Ok(name)
    }

    /// Loses the machine `node` for good, as when a VM and its local disk are gone: the
    /// processes of its pods are killed (SIGKILL), the directories of the volumes pinned to it
    /// are deleted (their PersistentVolumes stay, pointing at a disk that no longer exists), and
    /// its Node object is deleted. Then its pods are deleted the way the pod garbage collector
    /// deletes the pods of a Node that no longer exists (phase Failed with a `DisruptionTarget`
    /// condition, deleted with grace 0), without waiting for its 40 s quarantine and 20 s period.
    pub async fn lose_node(&mut self, node: &str) -> anyhow::Result<LostNode> {
        ensure!(
            self.nodes.iter().any(|n| n == node),
            "{node} is not a machine of this environment"
        );
        let version = self.machines.remove(node);
        self.nodes.retain(|n| n != node);
        tokio::time::timeout(Duration::from_secs(30), self.acted.wait_for(|v| *v >= version))
            .await
            .context("the kubelet did not stop the lost machine's pods within 30 s")?
            .context("the kubelet stopped")?;

        let client = self.control_plane.client().await?;
        let mut lost = LostNode::default();
        for pv in Api::<PersistentVolume>::all(client.clone()).list(&ListParams::default()).await? {
            if volume_node(&pv).as_deref() == Some(node) {
                if let Some(dir) = host_path(&pv) {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("deleting volume {}", dir.display()))?;
                    lost.volumes.push(dir);
                }
            }
        }
        Api::<Node>::all(client.clone())
            .delete(node, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting Node {node}"))?;

        let pods: Api<Pod> = Api::all(client.clone());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
        for pod in pods.list(&on_node).await? {
            let namespace = pod.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let name = pod.name_any();
            let failed = json!({"status": {
                "phase": "Failed",
                "conditions": [{
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "DeletionByPodGC",
                    "message": "PodGC: node no longer exists",
                }],
            }});
            // Best effort, as pod GC does: the pod may be gone already.
            let _ =
                api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(failed)).await;
            match api
                .delete(
                    &name,
                    &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() },
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("deleting pod {namespace}/{name}"))
                }
            }
            lost.pods.push(format!("{namespace}/{name}"));
        }
        Ok(lost)
    }

    /// Stops the kubelet and every pod process (the control plane stops on drop).
    pub async fn stop_pods(&mut self) {
        if let Some((cancel, task)) = self.kubelet.take() {
            cancel.cancel();
            let _ = task.await;
        }
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        if let Some((cancel, _)) = &self.kubelet {
            // The kubelet task stops its processes when it sees this; PodNetwork drops kill
            // whatever is left in the namespaces.
            cancel.cancel();
        }
    }
}
