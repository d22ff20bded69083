//! The admin API's backup calls: the node that receives `Backup` or `Restore` asks every member
//! of the committed ring for its part (this node included) and, for a backup, writes the
//! manifest once every part is uploaded; `ListBackups` and `DeleteBackup` work on the
//! destination alone. The work itself is in [`crate::backup`].

use std::path::Path;
use std::time::Duration;

use futures::future::join_all;

use super::pb::admin;
use super::service::Shared;
use crate::backup::{self, BackupManifest, Destination, NodeManifest, NodeSummary};
use crate::error::Error;
use crate::net::Net;
use crate::ring::{NodeId, Ring};

/// How long a member may take for its part (a checkpoint of a large node uploads for a while).
const PART_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// This node's data directory, or why it cannot take part.
fn data_dir<N>(shared: &Shared<N>) -> Result<&Path, Error> {
    shared.data_dir.as_deref().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} runs the memory engine, which keeps nothing on disk to back up or restore into: \
             run it with engine = rocksdb",
            shared.me
        ))
    })
}

/// The committed ring, refusing while a layout change is under way (keys would be placed by a
/// ring about to change).
fn settled_ring<N: Net>(shared: &Shared<N>, what: &str) -> Result<(u64, Ring), Error> {
    let placement = shared.coordinator.placement();
    match (&placement.current, &placement.next) {
        (Some(ring), None) => Ok((placement.epoch, ring.clone())),
        (None, _) => Err(Error::NotReady(format!(
            "{} has not joined a cluster yet: {what} needs the cluster's ring",
            shared.me
        ))),
        (Some(_), Some(_)) => Err(Error::NotReady(format!(
            "a layout change is under way: {what} waits until it ends (`dynamoctl status` shows \
             no pending partitions), then retry"
        ))),
    }
}

/// A node's part as its answer reports it.
fn node_backup(m: &NodeManifest) -> admin::NodeBackup {
    admin::NodeBackup {
        node_id: m.node_id.clone(),
        files: m.files.len() as u32,
        bytes_total: m.bytes_total(),
        bytes_uploaded: m.bytes_uploaded,
    }
}

/// A node's line in the backup manifest: its part, and the partitions it replicates.
fn summary(b: admin::NodeBackup, ring: &Ring, n: usize) -> NodeSummary {
    let partitions = (0..ring.partitions())
        .filter(|p| ring.preference_list(*p).iter().take(n).any(|x| x.id.0 == b.node_id))
        .collect();
    NodeSummary {
        node_id: b.node_id,
        partitions,
        files: b.files,
        bytes_total: b.bytes_total,
        bytes_uploaded: b.bytes_uploaded,
    }
}

fn wire_summary(s: &NodeSummary) -> admin::NodeBackup {
    admin::NodeBackup {
        node_id: s.node_id.clone(),
        files: s.files,
        bytes_total: s.bytes_total,
        bytes_uploaded: s.bytes_uploaded,
    }
}

/// Asks every member but this node for its part with `call`, and this node with `local`;
/// fails naming every member that failed.
async fn every_member<N, T, L, C, LF, CF>(
    shared: &Shared<N>,
    ring: &Ring,
    what: &str,
    local: L,
    call: C,
) -> Result<Vec<T>, Error>
where
    N: Net,
    L: FnOnce() -> LF,
    LF: std::future::Future<Output = Result<T, Error>>,
    C: Fn(admin::admin_client::AdminClient<tonic::transport::Channel>) -> CF,
    CF: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let view = shared.membership.view();
    let mut remote = Vec::new();
    for member in ring.members().iter().filter(|m| m.id != shared.me) {
        let address = view.nodes.get(&member.id).map(|n| n.address.clone()).ok_or_else(|| {
            Error::Backup(format!("{} is in the ring but not in the membership view", member.id))
        })?;
        let channel = super::peers::channel(&address, PART_TIMEOUT, &shared.credentials)
            .map_err(Error::Internal)?;
        let client = admin::admin_client::AdminClient::new(channel)
            .max_decoding_message_size(dynamo_api::contract::MAX_MESSAGE_BYTES);
        let id = member.id.clone();
        let fut = call(client);
        remote.push(async move { (id, address, fut.await) });
    }
    let (mine, theirs) = futures::join!(local(), join_all(remote));
    let mut out = Vec::new();
    let mut errors = Vec::new();
    match mine {
        Ok(t) => out.push(t),
        Err(e) => errors.push(format!("{}: {e}", shared.me)),
    }
    for (id, address, result) in theirs {
        match result {
            Ok(t) => out.push(t),
            Err(s) => errors.push(format!("{id} at {address}: {}", s.message())),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Error::Backup(format!(
            "the {what} failed on {} of {} nodes: {}; every member must be running and able to \
             reach the destination",
            errors.len(),
            ring.members().len(),
            errors.join("; ")
        )))
    }
}

/// `Admin.Backup`.
pub async fn backup<N: Net>(
    shared: &Shared<N>,
    req: admin::BackupRequest,
) -> Result<admin::BackupResponse, Error> {
    let dest = Destination::open(&req.destination)?;
    let id = match req.backup_id.as_str() {
        "" => backup::new_id(),
        id => id.to_string(),
    };
    backup::check_id(&id)?;
    let started_at = backup::now_rfc3339();
    if req.this_node_only {
        let m =
            backup::backup_node(&shared.store, data_dir(shared)?, &dest, &id, &shared.me).await?;
        let node = admin::NodeBackup {
            node_id: m.node_id.clone(),
            files: m.files.len() as u32,
            bytes_total: m.bytes_total(),
            bytes_uploaded: m.bytes_uploaded,
        };
        return Ok(admin::BackupResponse {
            backup_id: id,
            nodes: vec![node],
            started_at,
            finished_at: backup::now_rfc3339(),
        });
    }
    if dest.size(&backup::manifest_object(&id)).await?.is_some() {
        return Err(Error::InvalidArgument(format!(
            "{} already holds a backup '{id}': choose another id, or delete that one first",
            dest.url()
        )));
    }
    data_dir(shared)?;
    let (epoch, ring) = settled_ring(shared, "a backup")?;
    let n = shared.quorum.n;
    let parts = every_member(
        shared,
        &ring,
        "backup",
        || async {
            let dir = data_dir(shared)?;
            let m = backup::backup_node(&shared.store, dir, &dest, &id, &shared.me).await?;
            Ok(node_backup(&m))
        },
        |mut client| {
            let request = admin::BackupRequest {
                destination: req.destination.clone(),
                backup_id: id.clone(),
                this_node_only: true,
            };
            async move {
                let reply = client.backup(request).await?.into_inner();
                reply.nodes.into_iter().next().ok_or_else(|| {
                    tonic::Status::internal("a member answered a backup without its report")
                })
            }
        },
    )
    .await?;
    let mut nodes: Vec<NodeSummary> = parts.into_iter().map(|b| summary(b, &ring, n)).collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let manifest = BackupManifest {
        format: backup::MANIFEST_FORMAT,
        data_format: backup::DATA_FORMAT,
        backup_id: id.clone(),
        cluster: shared.cluster.name.clone(),
        started_at,
        finished_at: backup::now_rfc3339(),
        partitions: ring.partitions(),
        n,
        layout_epoch: epoch,
        nodes,
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    dest.put(&backup::manifest_object(&id), body).await?;
    tracing::info!(backup = %id, destination = %dest.url(), "backup complete");
    Ok(response(&manifest))
}

fn response(m: &BackupManifest) -> admin::BackupResponse {
    admin::BackupResponse {
        backup_id: m.backup_id.clone(),
        nodes: m.nodes.iter().map(wire_summary).collect(),
        started_at: m.started_at.clone(),
        finished_at: m.finished_at.clone(),
    }
}

/// `Admin.Restore`.
pub async fn restore<N: Net>(
    shared: &Shared<N>,
    req: admin::RestoreRequest,
) -> Result<admin::RestoreResponse, Error> {
    let dest = Destination::open(&req.source)?;
    let (_, ring) = settled_ring(shared, "a restore")?;
    let n = shared.quorum.n;
    let dir = data_dir(shared)?;
    let manifest = backup::manifest(&dest, &req.backup_id).await?;
    if manifest.partitions != shared.partitions {
        tracing::info!(
            backup = %req.backup_id,
            from = manifest.partitions,
            to = shared.partitions,
            "restoring into a cluster with another partition count: keys are placed anew"
        );
    }
    let here = |me: NodeId| {
        let (dest, ring, id) = (dest.clone(), ring.clone(), req.backup_id.clone());
        async move {
            let r = backup::restore_node(&shared.store, dir, &dest, &id, &me, &ring, n).await?;
            Ok(admin::NodeRestore { node_id: me.0, keys_read: r.read, keys_kept: r.kept })
        }
    };
    if req.this_node_only {
        let node = here(shared.me.clone()).await?;
        return Ok(admin::RestoreResponse { nodes: vec![node] });
    }
    let mut nodes = every_member(
        shared,
        &ring,
        "restore",
        || here(shared.me.clone()),
        |mut client| {
            let request = admin::RestoreRequest {
                source: req.source.clone(),
                backup_id: req.backup_id.clone(),
                this_node_only: true,
            };
            async move {
                let reply = client.restore(request).await?.into_inner();
                reply.nodes.into_iter().next().ok_or_else(|| {
                    tonic::Status::internal("a member answered a restore without its report")
                })
            }
        },
    )
    .await?;
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    tracing::info!(backup = %req.backup_id, source = %dest.url(), "restore complete");
    Ok(admin::RestoreResponse { nodes })
}

/// `Admin.ListBackups`.
pub async fn list(req: admin::ListBackupsRequest) -> Result<admin::ListBackupsResponse, Error> {
    let dest = Destination::open(&req.destination)?;
    let backups = backup::list(&dest)
        .await?
        .iter()
        .map(|m| admin::BackupSummary {
            backup_id: m.backup_id.clone(),
            cluster: m.cluster.clone(),
            started_at: m.started_at.clone(),
            finished_at: m.finished_at.clone(),
            nodes: m.nodes.iter().map(wire_summary).collect(),
        })
        .collect();
    Ok(admin::ListBackupsResponse { backups })
}

/// `Admin.DeleteBackup`.
pub async fn delete(req: admin::DeleteBackupRequest) -> Result<admin::DeleteBackupResponse, Error> {
    let dest = Destination::open(&req.destination)?;
    let (objects_deleted, bytes_freed) = backup::delete(&dest, &req.backup_id).await?;
    Ok(admin::DeleteBackupResponse { objects_deleted, bytes_freed })
}
