//! Backups and restores of a node's data.
//!
//! A backup of one node is a RocksDB checkpoint (hard links to the live table files after a
//! memtable flush: writes go on while it is taken) uploaded to a [`Destination`]. Its table
//! files are immutable and named uniquely within one database, so they are stored once per
//! database identity and shared by every later backup (incremental backups); the checkpoint's
//! other files (MANIFEST, CURRENT, OPTIONS, the write-ahead log) are small and stored per backup.
//! Layout at the destination:
//!
//! ```text
//! files/<database identity>/<table file>       uploaded once, used by every backup that lists it
//! backups/<id>/nodes/<node id>/<other file>    this backup's small files of one node
//! backups/<id>/nodes/<node id>.json            the node's manifest (every file and its object)
//! backups/<id>/backup.json                     written last: marks the backup complete
//! ```
//!
//! A backup without `backup.json` failed or is still running: it is never listed nor
//! restored. What a backup holds: every write a node had applied when its checkpoint was
//! taken, so every write acknowledged before the backup started (W replicas had applied it,
//! and each takes its checkpoint after the start) is in the checkpoints of W nodes.
//!
//! A restore reads every node's files of a backup, as a read-only database, and each node of
//! the restoring cluster keeps the keys it replicates under its own ring, merged (version
//! clocks are joined, so siblings and deletes come back as they were). The restoring nodes
//! write under their own actors, never the backed-up nodes' (no version dot is reused), and
//! contexts from the old cluster still decode when the cluster secret is the same.

pub mod destination;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use destination::Destination;

use crate::error::Error;
use crate::ring::{NodeId, PartitionId, Ring};
use crate::storage::{Budget, Engine, Keyspace, RocksEngine, Store};
use crate::version::Clock;

/// Revision of the manifests' format.
pub const MANIFEST_FORMAT: u32 = 1;

/// Revision of the data layout and version encoding in the files (a restore refuses another).
pub const DATA_FORMAT: u32 = 1;

/// One file of a node's checkpoint and where it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    /// The object's name at the destination.
    pub object: String,
}

/// One node's part of a backup (`backups/<id>/nodes/<node>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeManifest {
    pub format: u32,
    pub node_id: String,
    /// RocksDB's identity of the database the checkpoint was taken from.
    pub identity: String,
    pub files: Vec<FileEntry>,
    /// Bytes this backup uploaded for the node (the rest was uploaded by earlier backups).
    pub bytes_uploaded: u64,
}

impl NodeManifest {
    pub fn bytes_total(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A node's line in the backup manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub node_id: String,
    /// Partitions the node replicated under the layout of the backup.
    pub partitions: Vec<PartitionId>,
    pub files: u32,
    pub bytes_total: u64,
    pub bytes_uploaded: u64,
}

/// The manifest of a complete backup (`backups/<id>/backup.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    pub data_format: u32,
    pub backup_id: String,
    pub cluster: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub partitions: u32,
    pub n: usize,
    pub layout_epoch: u64,
    pub nodes: Vec<NodeSummary>,
}

/// The manifest's object name.
pub fn manifest_object(id: &str) -> String {
    format!("backups/{id}/backup.json")
}

fn node_manifest_object(id: &str, node: &str) -> String {
    format!("backups/{id}/nodes/{node}.json")
}

/// A backup id: 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'.
pub fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "backup id '{id}' is not valid: use 1 to 64 letters, digits, '-', '_' or '.' (or \
             none: the start time is used)"
        )))
    }
}

/// Now, RFC 3339 in UTC to the second.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The default id of a backup started now: `20261202T153000Z`.
pub fn new_id() -> String {
    now_rfc3339().replace(['-', ':'], "")
}

/// Whether a checkpoint file is a table file (immutable, stored once per database).
fn is_table(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob")
}

/// Takes this node's checkpoint and uploads what the destination does not hold yet; writes
/// the node's manifest. The checkpoint lives in `<data_dir>/checkpoints/<id>` (on the data
/// volume, so it is made of hard links) until the upload ends.
pub async fn backup_node(
    store: &Arc<Store>,
    data_dir: &Path,
    dest: &Destination,
    id: &str,
    node: &NodeId,
) -> Result<NodeManifest, Error> {
    let dir = data_dir.join("checkpoints").join(id);
    // RocksDB's identity of the live database (a checkpoint does not always copy the file).
    let identity = std::fs::read_to_string(data_dir.join("IDENTITY"))
        .map(|s| s.trim().to_string())
        .map_err(|e| io("read", &data_dir.join("IDENTITY"), e))?;
    let result = upload_checkpoint(store, &dir, dest, id, node, identity).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn upload_checkpoint(
    store: &Arc<Store>,
    dir: &Path,
    dest: &Destination,
    id: &str,
    node: &NodeId,
    identity: String,
) -> Result<NodeManifest, Error> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io("remove", dir, e))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    let (store2, dir2) = (store.clone(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || store2.checkpoint(&dir2))
        .await
        .map_err(|e| Error::Internal(format!("the checkpoint task failed: {e}")))??;
    let mut names: Vec<(String, u64)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io("list", dir, e))? {
        let entry = entry.map_err(|e| io("list", dir, e))?;
        let meta = entry.metadata().map_err(|e| io("read", &entry.path(), e))?;
        if meta.is_file() {
            names.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    names.sort();
    let mut files = Vec::new();
    let mut uploaded = 0;
    for (name, size) in names {
        let object = if is_table(&name) {
            format!("files/{identity}/{name}")
        } else {
            format!("backups/{id}/nodes/{node}/{name}")
        };
        // A table file already stored (by an earlier backup of the same database) is not
        // sent again.
        if !(is_table(&name) && dest.size(&object).await? == Some(size)) {
            dest.upload(&object, &dir.join(&name)).await?;
            uploaded += size;
        }
        files.push(FileEntry { name, size, object });
    }
    let manifest = NodeManifest {
        format: MANIFEST_FORMAT,
        node_id: node.0.clone(),
        identity,
        files,
        bytes_uploaded: uploaded,
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    dest.put(&node_manifest_object(id, &node.0), body).await?;
    Ok(manifest)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("cannot {what} {}: {e}", path.display()))
}

/// Reads a complete backup's manifest; an error naming the backups there if it has none.
pub async fn manifest(dest: &Destination, id: &str) -> Result<BackupManifest, Error> {
    check_id(id)?;
    let Some(body) = dest.get(&manifest_object(id)).await? else {
        let known: Vec<String> = list(dest).await?.into_iter().map(|m| m.backup_id).collect();
        return Err(Error::InvalidArgument(format!(
            "there is no complete backup '{id}' at {}; complete backups there: {}",
            dest.url(),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )));
    };
    let manifest: BackupManifest = serde_json::from_slice(&body).map_err(|e| {
        Error::Backup(format!("the manifest of backup '{id}' at {} is unreadable: {e}", dest.url()))
    })?;
    if manifest.format != MANIFEST_FORMAT || manifest.data_format != DATA_FORMAT {
        return Err(Error::Backup(format!(
            "backup '{id}' was written in format {}/{} and this node reads {MANIFEST_FORMAT}/\
             {DATA_FORMAT}: restore it with the version of dynamo that wrote it",
            manifest.format, manifest.data_format
        )));
    }
    Ok(manifest)
}

/// Every complete backup at the destination, oldest first.
pub async fn list(dest: &Destination) -> Result<Vec<BackupManifest>, Error> {
    let mut out = Vec::new();
    for object in dest.list("backups").await? {
        if object.name.ends_with("/backup.json") && object.name.matches('/').count() == 2 {
            if let Some(body) = dest.get(&object.name).await? {
                if let Ok(m) = serde_json::from_slice::<BackupManifest>(&body) {
                    out.push(m);
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.started_at, &a.backup_id).cmp(&(&b.started_at, &b.backup_id)));
    Ok(out)
}

/// Deletes a backup: its manifest first (so it is no longer listed), then its own objects,
/// then the table files that no other backup's node manifest lists. Returns the objects
/// deleted and their bytes. Do not delete a backup while another one is being taken to the
/// same destination: a table file it found already stored may be among those deleted.
pub async fn delete(dest: &Destination, id: &str) -> Result<(u32, u64), Error> {
    manifest(dest, id).await?;
    let own = dest.list(&format!("backups/{id}")).await?;
    let released = objects_listed(dest, &own).await?;
    dest.delete(&manifest_object(id)).await?;
    let (mut count, mut bytes) = (0u32, 0u64);
    for object in &own {
        dest.delete(&object.name).await?;
        count += 1;
        bytes += object.size;
    }
    // Table files still used by another backup (complete or not) stay.
    let used = objects_listed(dest, &dest.list("backups").await?).await?;
    for object in released.into_iter().filter(|o| o.starts_with("files/") && !used.contains(o)) {
        if let Some(size) = dest.size(&object).await? {
            dest.delete(&object).await?;
            count += 1;
            bytes += size;
        }
    }
    Ok((count, bytes))
}

/// Every object the node manifests among `objects` list.
async fn objects_listed(
    dest: &Destination,
    objects: &[destination::Object],
) -> Result<std::collections::BTreeSet<String>, Error> {
    let mut listed = std::collections::BTreeSet::new();
    for object in objects {
        if object.name.ends_with(".json") && object.name.contains("/nodes/") {
            if let Some(body) = dest.get(&object.name).await? {
                if let Ok(m) = serde_json::from_slice::<NodeManifest>(&body) {
                    listed.extend(m.files.into_iter().map(|f| f.object));
                }
            }
        }
    }
    Ok(listed)
}

/// What a node did in a restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Keys read from the backup's files (every node's).
    pub read: u64,
    /// Keys this node replicates, merged into its store.
    pub kept: u64,
}

/// Restores a backup into this node: downloads each backed-up node's files to
/// `<data_dir>/restore/<id>/<node>`, reads them as a read-only database, and merges every key
/// that `ring` places on `me` (among the first `n` of its preference list).
pub async fn restore_node(
    store: &Arc<Store>,
    data_dir: &Path,
    dest: &Destination,
    id: &str,
    me: &NodeId,
    ring: &Ring,
    n: usize,
) -> Result<Restored, Error> {
    let manifest = manifest(dest, id).await?;
    let base = data_dir.join("restore").join(id);
    let mut total = Restored::default();
    for node in &manifest.nodes {
        let dir = base.join(&node.node_id);
        let result = restore_one(store, dest, id, &node.node_id, &dir, me, ring, n).await;
        let _ = std::fs::remove_dir_all(&dir);
        let r = result?;
        total.read += r.read;
        total.kept += r.kept;
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(total)
}

#[allow(clippy::too_many_arguments)]
async fn restore_one(
    store: &Arc<Store>,
    dest: &Destination,
    id: &str,
    node: &str,
    dir: &Path,
    me: &NodeId,
    ring: &Ring,
    n: usize,
) -> Result<Restored, Error> {
    let body = dest.get(&node_manifest_object(id, node)).await?.ok_or_else(|| {
        Error::Backup(format!(
            "backup '{id}' at {} lists {node} but has no manifest for it: the backup is damaged",
            dest.url()
        ))
    })?;
    let manifest: NodeManifest = serde_json::from_slice(&body).map_err(|e| {
        Error::Backup(format!("the manifest of {node} in backup '{id}' is unreadable: {e}"))
    })?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io("remove", dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    for file in &manifest.files {
        let size = dest.download(&file.object, &dir.join(&file.name)).await?;
        if size != file.size {
            return Err(Error::Backup(format!(
                "{} of {node} in backup '{id}' is {size} bytes, its manifest says {}: the \
                 backup is damaged",
                file.object, file.size
            )));
        }
    }
    let (store, dir, me, ring) = (store.clone(), dir.to_path_buf(), me.clone(), ring.clone());
    tokio::task::spawn_blocking(move || merge_files(&store, &dir, &me, &ring, n))
        .await
        .map_err(|e| Error::Internal(format!("the restore task failed: {e}")))?
}

/// Reads every data key of a downloaded checkpoint and merges the ones `me` replicates.
fn merge_files(
    store: &Store,
    dir: &Path,
    me: &NodeId,
    ring: &Ring,
    n: usize,
) -> Result<Restored, Error> {
    let engine = RocksEngine::open_read_only(dir).map_err(|e| Error::Backup(e.0))?;
    let mut out = Restored::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = engine
            .scan(Keyspace::Data, b"", after.as_deref(), Budget::items(4096))
            .map_err(|e| Error::Backup(e.0))?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (data_key, encoded) in &page {
            let Some(key) = data_key.get(4..) else { continue };
            out.read += 1;
            let partition = ring.partition_of(key);
            if !ring.preference_list(partition).iter().take(n).any(|m| m.id == *me) {
                continue;
            }
            let clock = Clock::decode(encoded).map_err(|e| {
                Error::Backup(format!("a version in the backup does not decode: {e}"))
            })?;
            store.accept(me, partition, key, &clock, None)?;
            out.kept += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_default_to_the_start_time() {
        for ok in ["20261202T153000Z", "nightly-1", "a.b_c"] {
            check_id(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "x".repeat(65).as_str(), "sp ace"] {
            let err = check_id(bad).unwrap_err().to_string();
            assert!(err.contains("letters, digits"), "{bad}: {err}");
        }
        let id = new_id();
        check_id(&id).unwrap();
        assert!(id.len() == 16 && id.ends_with('Z') && id.as_bytes()[8] == b'T', "{id}");
    }
}
