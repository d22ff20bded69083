//! The whole e2e environment: the pod network, the control plane, one fake Node per zone (kept
//! Ready by kwok) with the default StorageClass, and the kubelet running the pods. Dropping it
//! stops the kubelet's processes, then the control plane, then removes the network.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::control_plane::{ControlPlane, KWOK_ANNOTATION};
use crate::kubelet::{Kubelet, KubeletConfig, PROVISIONER, STORAGE_CLASS};
use crate::network::Network;

/// The zones the fake Nodes are labelled with (`topology.kubernetes.io/zone`), as in
/// `examples/cluster.yaml` and `e2e/kind/kind-config.yaml`.
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// The host's address on the pod network (pods get 10.244.1.x and up).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

/// Everything running.
pub struct Environment {
    // Field order is drop order: the kubelet's processes first, the network last.
    kubelet: Option<(CancellationToken, JoinHandle<()>)>,
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The pod network.
    pub network: Arc<Network>,
    /// The names of the fake Nodes.
    pub nodes: Vec<String>,
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
        let class: StorageClass = serde_json::from_value(json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }))?;
        classes
            .create(&PostParams::default(), &class)
            .await
            .context("creating the StorageClass")?;

        let nodes_api: Api<Node> = Api::all(client.clone());
        let mut nodes = Vec::new();
        for zone in ZONES {
            let name = format!("e2e-{zone}");
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {KWOK_ANNOTATION.0: KWOK_ANNOTATION.1},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                        "topology.kubernetes.io/zone": zone,
                    },
                },
            }))?;
            nodes_api.create(&PostParams::default(), &node).await.context("creating a Node")?;
            nodes.push(name);
        }
        let kubelet = Kubelet::new(
            client,
            network.clone(),
            KubeletConfig { nodes: nodes.clone(), images, dir: control_plane.dir.clone() },
        );
        let cancel = CancellationToken::new();
        let task = tokio::spawn(kubelet.run(cancel.clone()));
        let env = Environment { kubelet: Some((cancel, task)), control_plane, network, nodes };
        for node in &env.nodes {
            env.control_plane
                .wait_for(Duration::from_secs(60), &format!("Node {node} Ready"), || {
                    let mut c = env.control_plane.kubectl();
                    c.args([
                        "get",
                        "node",
                        node,
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ]);
                    crate::process::run(&mut c).is_ok_and(|s| s.trim() == "True")
                })
                .await?;
        }
        Ok(env)
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
