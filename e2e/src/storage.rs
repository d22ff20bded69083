//! The harness's storage: the default StorageClass and a provisioner and resizer of hostPath
//! volumes for it, doing what a local-volume CSI driver's external provisioner and external
//! resizer do.
//!
//! The class binds late (`volumeBindingMode: WaitForFirstConsumer`): a claim is provisioned once
//! the scheduler has picked a node for its first pod and written it in the claim's
//! [`SELECTED_NODE`] annotation. The volume is a directory of the run (`volumes/<pv>`) and its
//! PersistentVolume is pinned to that node (`nodeAffinity` on `kubernetes.io/hostname`), as a
//! local disk is: a pod using it can only run there, and when that node is gone the pod stays
//! Pending ("volume node affinity conflict") until its claim is replaced.
//!
//! The class allows expansion. When a bound claim asks for more than its volume has, the
//! resizer grows the volume (there is no real quota: the new size is written to the volume's
//! [`SIZE_FILE`], which a test reads), sets the PersistentVolume's capacity, then the claim's
//! `status.capacity` and `status.allocatedResources`, clearing its resize conditions
//! ([`RESIZE_CONDITIONS`]), as the external resizer does for a volume that needs no file-system
//! resize on the node.
//!
//! A volume whose claim is deleted is deleted with its directory (reclaim policy Delete).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use dynamo_operator::quantity;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

/// The StorageClass provisioned here (the cluster's default).
pub const STORAGE_CLASS: &str = "standard";
/// Provisioner name on the StorageClass and on the volumes it makes.
pub const PROVISIONER: &str = "e2e.dynamokv.io/hostpath";
/// The claim annotation in which the scheduler names the node of a late-bound claim's first
/// pod.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The Node label a volume's node affinity selects on.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// File in each volume's directory holding its size in bytes (decimal): what a quota would
/// enforce, written at provisioning and on every expansion.
pub const SIZE_FILE: &str = ".size";
/// Claim conditions of an expansion, cleared once it is done (others, such as `Unused`, are
/// kept).
pub const RESIZE_CONDITIONS: [&str; 4] =
    ["Resizing", "FileSystemResizePending", "ControllerResizeError", "NodeResizeError"];
/// Annotation naming the provisioner on the volumes it made.
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The default StorageClass: late binding, expandable, volumes deleted with their claims.
pub fn storage_class() -> anyhow::Result<StorageClass> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": true,
    }))?)
}

/// Provisions, expands and deletes the volumes of [`STORAGE_CLASS`]; [`Provisioner::sync`] once
/// per pass of the kubelet.
pub struct Provisioner {
    client: kube::Client,
    /// Where volume directories are made (`<run>/volumes`).
    dir: PathBuf,
}

impl Provisioner {
    /// A provisioner making volumes under `dir`.
    pub fn new(client: kube::Client, dir: PathBuf) -> Provisioner {
        Provisioner { client, dir }
    }

    /// One pass: provisions the claims whose node is one of `nodes` (the machines that exist),
    /// expands bound claims that ask for more, deletes released volumes.
    pub async fn sync(&self, nodes: &BTreeSet<String>) -> anyhow::Result<()> {
        let claims: Api<PersistentVolumeClaim> = Api::all(self.client.clone());
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let existing = volumes.list(&ListParams::default()).await?.items;
        for pvc in claims.list(&ListParams::default()).await? {
            let spec = pvc.spec.clone().unwrap_or_default();
            if spec.storage_class_name.as_deref() != Some(STORAGE_CLASS)
                || pvc.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
            match (phase, &spec.volume_name) {
                (Some("Pending"), None) => self.provision(&pvc, &existing, nodes).await?,
                (Some("Bound"), Some(volume)) => {
                    if let Some(pv) = existing.iter().find(|pv| &pv.name_any() == volume) {
                        if ours(pv) {
                            self.expand(&pvc, pv).await.with_context(|| {
                                format!("expanding claim {} (volume {volume})", pvc.name_any())
                            })?;
                        }
                    }
                }
                _ => {}
            }
        }
        for pv in existing {
            let released = matches!(
                pv.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Released" | "Failed")
            );
            if ours(&pv) && released && pv.metadata.deletion_timestamp.is_none() {
                if let Some(path) = host_path(&pv) {
                    let _ = std::fs::remove_dir_all(path);
                }
                volumes.delete(&pv.name_any(), &DeleteParams::default()).await?;
            }
        }
        Ok(())
    }

    /// A volume for a claim the scheduler has placed on one of `nodes`, pinned to that node
    /// and pre-bound to the claim.
    async fn provision(
        &self,
        pvc: &PersistentVolumeClaim,
        existing: &[PersistentVolume],
        nodes: &BTreeSet<String>,
    ) -> anyhow::Result<()> {
        // Late binding: nothing until the scheduler has chosen the node of the first pod.
        let Some(node) = pvc.annotations().get(SELECTED_NODE) else { return Ok(()) };
        if !nodes.contains(node) {
            return Ok(());
        }
        let uid = pvc.uid().context("claim without uid")?;
        let pv_name = format!("pvc-{uid}");
        if existing.iter().any(|pv| pv.name_any() == pv_name) {
            return Ok(());
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        let size = requested(pvc).unwrap_or_else(|| Quantity("1Gi".into()));
        let bytes = quantity::bytes(&size.0)
            .with_context(|| format!("claim {} requests {:?}", pvc.name_any(), size.0))?;
        let dir = self.dir.join(&pv_name);
        std::fs::create_dir_all(&dir)?;
        write_size(&dir, bytes)?;
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: PROVISIONER}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "hostPath": {"path": dir.display().to_string(), "type": "Directory"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": HOSTNAME_LABEL, "operator": "In", "values": [node]},
                ]}]}},
                "claimRef": {"namespace": pvc.namespace(), "name": pvc.name_any(), "uid": uid},
            },
        }))?;
        Api::<PersistentVolume>::all(self.client.clone())
            .create(&PostParams::default(), &pv)
            .await?;
        Ok(())
    }

    /// Grows `pv` to what its bound claim requests, then reports the new size in the claim's
    /// status; finishes an expansion an earlier pass left half done.
    async fn expand(
        &self,
        pvc: &PersistentVolumeClaim,
        pv: &PersistentVolume,
    ) -> anyhow::Result<()> {
        let Some(request) = requested(pvc) else { return Ok(()) };
        let want = quantity::bytes(&request.0).context("unparsable request")?;
        let capacity = capacity_of(pv).context("volume without capacity")?;
        let has = quantity::bytes(&capacity.0).context("unparsable volume capacity")?;
        if want > has {
            let dir = host_path(pv).context("not a hostPath volume")?;
            if !dir.is_dir() {
                // The disk is gone with its machine: nothing can be resized.
                return Ok(());
            }
            write_size(&dir, want)?;
            Api::<PersistentVolume>::all(self.client.clone())
                .patch(
                    &pv.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"capacity": {"storage": request}}})),
                )
                .await?;
        }
        let size = if want > has { request } else { capacity };
        let status = pvc.status.clone().unwrap_or_default();
        let reported = status.capacity.as_ref().and_then(|c| c.get("storage"));
        let conditions = status.conditions.unwrap_or_default();
        let resizing = conditions.iter().any(|c| RESIZE_CONDITIONS.contains(&c.type_.as_str()));
        let behind = reported
            .and_then(|q| quantity::bytes(&q.0))
            .is_some_and(|r| r < quantity::bytes(&size.0).unwrap_or(0));
        if behind || resizing {
            let kept: Vec<_> = conditions
                .into_iter()
                .filter(|c| !RESIZE_CONDITIONS.contains(&c.type_.as_str()))
                .collect();
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), &pvc.namespace().unwrap_or_default());
            claims
                .patch_status(
                    &pvc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "capacity": {"storage": size},
                        "allocatedResources": {"storage": size},
                        "allocatedResourceStatuses": null,
                        "conditions": kept,
                    }})),
                )
                .await?;
        }
        Ok(())
    }
}

/// Whether this provisioner made `pv`.
fn ours(pv: &PersistentVolume) -> bool {
    pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER)
}

/// The storage a claim requests.
fn requested(pvc: &PersistentVolumeClaim) -> Option<Quantity> {
    pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").cloned()
}

/// A volume's capacity.
fn capacity_of(pv: &PersistentVolume) -> Option<Quantity> {
    pv.spec.as_ref()?.capacity.as_ref()?.get("storage").cloned()
}

/// The directory behind a hostPath volume.
pub fn host_path(pv: &PersistentVolume) -> Option<PathBuf> {
    pv.spec.as_ref()?.host_path.as_ref().map(|h| PathBuf::from(&h.path))
}

/// The node a volume is pinned to (its `kubernetes.io/hostname In [node]` affinity).
pub fn volume_node(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == HOSTNAME_LABEL && e.operator == "In")
        .and_then(|e| e.values.as_ref()?.first().cloned())
}

fn write_size(dir: &Path, bytes: u128) -> anyhow::Result<()> {
    let file = dir.join(SIZE_FILE);
    std::fs::write(&file, format!("{bytes}\n"))
        .with_context(|| format!("writing {}", file.display()))
}

/// The size recorded in a volume directory's [`SIZE_FILE`], in bytes.
pub fn recorded_size(dir: &Path) -> anyhow::Result<u128> {
    let file = dir.join(SIZE_FILE);
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.trim().parse().with_context(|| format!("{} holds {text:?}, not a size", file.display()))
}

/// Fails unless the volume directory `dir` records `size` (a quantity such as `20Gi`).
pub fn check_recorded(dir: &Path, size: &str) -> anyhow::Result<()> {
    let want = quantity::bytes(size).with_context(|| format!("{size:?} is not a quantity"))?;
    let got = recorded_size(dir)?;
    if got != want {
        bail!("{} records {got} bytes, expected {want} ({size})", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_node_is_read_from_its_affinity() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pvc-1"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-a"]},
                {"key": HOSTNAME_LABEL, "operator": "In", "values": ["e2e-zone-a"]},
            ]}]}}},
        }))
        .unwrap();
        assert_eq!(volume_node(&pv).as_deref(), Some("e2e-zone-a"));
        assert_eq!(volume_node(&PersistentVolume::default()), None);
    }

    #[test]
    fn the_recorded_size_is_checked_in_bytes() {
        let dir = tempfile_dir();
        write_size(&dir, 10 << 30).unwrap();
        check_recorded(&dir, "10Gi").unwrap();
        let err = check_recorded(&dir, "20Gi").unwrap_err().to_string();
        assert!(err.contains("records 10737418240 bytes, expected 21474836480"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dynamo-e2e-storage-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
