//! The object store on top of an [`Engine`]: each key's replica is one encoded version clock,
//! read-modify-written under a striped lock so concurrent writes to one key on this node never
//! lose each other's updates.
//!
//! It also keeps, in memory, one Merkle tree per partition over (key, digest of the stored
//! version), updated on every write (anti-entropy compares them; built once by a scan at
//! start-up), and the hint store: writes held for unreachable nodes, kept apart from the
//! replicas this node owns, with per-target counts.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::lineage::{self, CleanStop, Found};
use super::{Budget, Engine, Keyspace, WriteOp};
use crate::error::{Error, Result};
use crate::merkle::{self, Hash, MerkleTree, TreeShape};
use crate::ring::{NodeId, PartitionId};
use crate::version::{own_actor_in, Actor, Clock, EPOCH_BITS};

/// Shape of every partition's Merkle tree (cluster-wide: both sides of an exchange must agree):
/// 16 x 16 = 256 leaves, a few KiB per partition that holds data.
pub const TREE_SHAPE: TreeShape = TreeShape { fanout: 16, depth: 2 };

/// Hints held for one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HintStats {
    pub count: u64,
    pub bytes: u64,
}

fn hint_prefix(target: &NodeId) -> Vec<u8> {
    let id = target.0.as_bytes();
    let mut k = Vec::with_capacity(1 + id.len() + 4);
    k.push(id.len().min(255) as u8);
    k.extend_from_slice(&id[..id.len().min(255)]);
    k
}

fn hint_key(target: &NodeId, partition: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = hint_prefix(target);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Splits a hint key into (target, partition, user key).
fn parse_hint_key(k: &[u8]) -> Option<(NodeId, PartitionId, Vec<u8>)> {
    let len = *k.first()? as usize;
    let id = std::str::from_utf8(k.get(1..1 + len)?).ok()?.to_string();
    let p = u32::from_be_bytes(k.get(1 + len..5 + len)?.try_into().ok()?);
    Some((NodeId(id), p, k.get(5 + len..)?.to_vec()))
}

/// Splits a data key into (partition, user key).
fn parse_data_key(k: &[u8]) -> Option<(PartitionId, &[u8])> {
    let p = u32::from_be_bytes(k.get(..4)?.try_into().ok()?);
    Some((p, &k[4..]))
}

const META_ACTOR: &[u8] = b"actor";
/// The clean-stop record of [`lineage`]: present only between a clean stop and the next start.
const META_CLEAN_STOP: &[u8] = b"clean-stop";
/// The per-key epoch high-water mark: `actor (8 bytes BE) ++ epoch (u32 BE)`, an epoch of
/// that actor never used yet, persisted (fsync) before any epoch below it is used.
const META_EPOCH: &[u8] = b"epoch";
/// Epochs reserved by one durable write.
const EPOCH_BLOCK: u32 = 4096;

/// Per-key epochs of this run (see `crate::version`'s actor rule).
#[derive(Debug)]
struct Epochs {
    /// The node actor they belong to (its high bits).
    actor: Actor,
    /// The next epoch to hand out.
    next: u32,
    /// Epochs below this one are reserved durably.
    reserved: u32,
}
const META_PARTITIONS: &[u8] = b"partitions";
/// The tombstone index, in [`Keyspace::Meta`]: `TOMB_PREFIX ++ data key` -> the time (ms since
/// the Unix epoch, this node's clock, u64 BE) this replica first held the key as deleted. One
/// entry exactly for each key whose stored clock is a tombstone, written in the same batch.
const TOMB_PREFIX: &[u8] = b"tomb/";

fn tomb_key(partition: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = TOMB_PREFIX.to_vec();
    k.extend_from_slice(&data_key(partition, key));
    k
}

/// Whether a stored clock is a tombstone (every value is one; an empty clock is not stored).
fn is_tombstone(clock: &Clock) -> bool {
    clock.is_deleted()
}

/// This node's wall clock, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Tombstones held and reaped, for `Admin.Status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TombstoneStats {
    /// Keys this node holds as tombstones now.
    pub held: u64,
    /// Tombstones this node has reaped since it started.
    pub reaped: u64,
}

/// Lock stripes: enough that unrelated keys rarely share one.
const STRIPES: usize = 1024;

/// The data-keyspace key of a user key: partition first, so partitions scan contiguously.
pub fn data_key(partition: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// See the module docs.
pub struct Store {
    engine: Arc<dyn Engine>,
    /// Serialises read-modify-write cycles per key (by hash of the key).
    stripes: Vec<Mutex<()>>,
    /// The actor under which this run creates versions: the stored one only when the last run
    /// stopped cleanly on this very directory ([`lineage`]), else a fresh one.
    actor: Actor,
    /// Why this run took a fresh actor (`None`: it kept the last run's).
    fresh: Option<lineage::Fresh>,
    /// The data directory (None for the in-memory engine), where a clean stop leaves its marker.
    dir: Option<PathBuf>,
    /// Set by [`Store::stop_cleanly`]: no version is created under `actor` any more.
    stopped: AtomicBool,
    /// Per-key epochs handed out by [`Store::update_as`].
    epochs: Mutex<Epochs>,
    /// One Merkle tree per partition (allocated only once the partition holds data).
    trees: Vec<Mutex<MerkleTree>>,
    /// Hints per target node, kept in step with the hint keyspace.
    hint_stats: Mutex<BTreeMap<NodeId, HintStats>>,
    /// What a replica merge may leave in one key, and the hints kept for one node.
    caps: StoreCaps,
    /// Keys held as tombstones (entries of the tombstone index).
    tombstones: std::sync::atomic::AtomicU64,
    /// Keys held (replicas, tombstones included).
    keys: std::sync::atomic::AtomicU64,
    /// Tombstones reaped since start.
    reaped: std::sync::atomic::AtomicU64,
}

/// What the store keeps at most: in one key after a replica merge, and in hints for one node.
///
/// A client write is checked against the
/// sibling and object limits by its coordinator, but writes through different coordinators can
/// each pass and then meet in a merge, so merges get more room (4x the limits); past that (only
/// reachable by hostile replication or a long partition), the merge is refused with an error and
/// the key keeps a readable version on every replica, to be resolved by a client write. A merge
/// never produces an object the decoder or one message cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreCaps {
    pub siblings: usize,
    /// Encoded bytes of the merged version.
    pub bytes: usize,
    /// Most bytes of hints kept for one node.
    pub hint_bytes_per_target: u64,
}

impl StoreCaps {
    /// 4x the client limits, within the decoder's limits and half the message limit.
    pub fn from_limits(limits: &crate::config::Limits) -> StoreCaps {
        StoreCaps {
            siblings: limits.max_siblings.saturating_mul(4).min(crate::version::MAX_VALUES),
            bytes: limits
                .max_object_bytes
                .saturating_mul(4)
                .min(dynamo_api::contract::MAX_MESSAGE_BYTES / 2),
            hint_bytes_per_target: 1 << 30,
        }
    }
}

/// (key, version digest) items, in key order.
pub type Items = Vec<(Vec<u8>, Hash)>;

fn storage(e: super::StorageError) -> Error {
    Error::Storage(e.0)
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| Error::Internal("a storage lock was poisoned by a panic".into()))
}

impl Store {
    /// Opens a store without a data directory (the in-memory engine, tests): see
    /// [`Store::open_in`].
    pub fn open(engine: Arc<dyn Engine>, partitions: u32) -> Result<Store> {
        Store::open_in(engine, partitions, None)
    }

    /// Opens the store on the engine whose data lives in `dir`, checking that the data was laid
    /// out with the configured partition count, and chooses the actor of this run
    /// ([`lineage::choose`]): the stored one when the last run stopped cleanly on this very
    /// directory, a fresh one otherwise. The choice is made durable, and the clean-stop record
    /// consumed, before anything else is written.
    pub fn open_in(engine: Arc<dyn Engine>, partitions: u32, dir: Option<&Path>) -> Result<Store> {
        let stored = match engine.get(Keyspace::Meta, META_ACTOR).map_err(storage)? {
            Some(bytes) => {
                let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    Error::Storage("the stored actor id is corrupt (not 8 bytes)".into())
                })?;
                Some(u64::from_be_bytes(raw))
            }
            None => None,
        };
        let record = engine
            .get(Keyspace::Meta, META_CLEAN_STOP)
            .map_err(storage)?
            .and_then(|b| CleanStop::decode(&b));
        let found = match dir {
            None => Found::NoDirectory,
            Some(d) => Found::Marker(lineage::read_marker(d).map_err(|e| {
                Error::Storage(format!(
                    "cannot read {}: {e}",
                    d.join(lineage::MARKER_FILE).display()
                ))
            })?),
        };
        let (actor, fresh) = match lineage::choose(stored, record, found) {
            lineage::Choice::Keep(actor) => (actor, None),
            lineage::Choice::Fresh(why) => {
                // Never the stored one's node bits again, never 0; epoch bits zero.
                let actor = std::iter::repeat_with(rand::random::<u64>)
                    .map(|a| a >> EPOCH_BITS << EPOCH_BITS)
                    .find(|&a| a != 0 && Some(a >> EPOCH_BITS) != stored.map(|s| s >> EPOCH_BITS))
                    .unwrap_or(1 << EPOCH_BITS);
                (actor, Some(why))
            }
        };
        engine
            .write_durable(vec![
                WriteOp::Put {
                    space: Keyspace::Meta,
                    key: META_ACTOR.to_vec(),
                    value: actor.to_be_bytes().to_vec(),
                },
                WriteOp::Delete { space: Keyspace::Meta, key: META_CLEAN_STOP.to_vec() },
            ])
            .map_err(storage)?;
        if let Some(d) = dir {
            lineage::remove_marker(d).map_err(|e| {
                Error::Storage(format!(
                    "cannot remove {}: {e}",
                    d.join(lineage::MARKER_FILE).display()
                ))
            })?;
        }
        match engine.get(Keyspace::Meta, META_PARTITIONS).map_err(storage)? {
            Some(bytes) => {
                let stored =
                    bytes.as_slice().try_into().map(u32::from_be_bytes).map_err(|_| {
                        Error::Storage("the stored partition count is corrupt".into())
                    })?;
                if stored != partitions {
                    return Err(Error::Storage(format!(
                        "this data directory was created for {stored} partitions but the node is \
                         configured with {partitions}; the partition count is fixed when a \
                         cluster is created: set partitions = {stored}"
                    )));
                }
            }
            None => engine
                .write(vec![WriteOp::Put {
                    space: Keyspace::Meta,
                    key: META_PARTITIONS.to_vec(),
                    value: partitions.to_be_bytes().to_vec(),
                }])
                .map_err(storage)?,
        }
        // Epochs continue from the mark only under the same actor (a fresh one starts over).
        let next_epoch = engine
            .get(Keyspace::Meta, META_EPOCH)
            .map_err(storage)?
            .filter(|b| b.len() == 12 && b[..8] == actor.to_be_bytes())
            .map_or(1, |b| u32::from_be_bytes([b[8], b[9], b[10], b[11]]));
        let store = Store {
            epochs: Mutex::new(Epochs { actor, next: next_epoch, reserved: next_epoch }),
            engine,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            actor,
            fresh,
            dir: dir.map(Path::to_path_buf),
            stopped: AtomicBool::new(false),
            trees: (0..partitions).map(|_| Mutex::new(MerkleTree::new(TREE_SHAPE))).collect(),
            hint_stats: Mutex::new(BTreeMap::new()),
            caps: StoreCaps::from_limits(&crate::config::Limits::default()),
            tombstones: Default::default(),
            keys: Default::default(),
            reaped: Default::default(),
        };
        store.load()?;
        Ok(store)
    }

    /// Builds the Merkle trees and hint counts from what is on disk.
    fn load(&self) -> Result<()> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .engine
                .scan(Keyspace::Data, b"", after.as_deref(), Budget::items(1024))
                .map_err(storage)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, v) in &page {
                if let Some((p, key)) = parse_data_key(k) {
                    self.keys.fetch_add(1, Ordering::Relaxed);
                    if let Some(tree) = self.trees.get(p as usize) {
                        lock(tree)?.update(key, None, Some(&merkle::version_digest(v)));
                    }
                    if is_tombstone(&Clock::decode(v)?) {
                        self.tombstones.fetch_add(1, Ordering::Relaxed);
                        // Tombstones written before the index existed get an entry now.
                        let tk = tomb_key(p, key);
                        if self.engine.get(Keyspace::Meta, &tk).map_err(storage)?.is_none() {
                            self.meta_put(&tk, &now_ms().to_be_bytes())?;
                        }
                    }
                }
            }
        }
        let mut stats = lock(&self.hint_stats)?;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .engine
                .scan(Keyspace::Hints, b"", after.as_deref(), Budget::items(1024))
                .map_err(storage)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, v) in &page {
                if let Some((target, _, _)) = parse_hint_key(k) {
                    let s = stats.entry(target).or_default();
                    s.count += 1;
                    s.bytes += v.len() as u64;
                }
            }
        }
        Ok(())
    }

    /// Sets what a replica merge may leave in one key (from the node's limits).
    pub fn with_caps(mut self, caps: StoreCaps) -> Store {
        self.caps = caps;
        self
    }

    /// A consistent copy of the whole store in `dir` (which must not exist), for a backup.
    pub fn checkpoint(&self, dir: &std::path::Path) -> Result<()> {
        self.engine.checkpoint(dir).map_err(storage)
    }

    /// The actor id under which this node creates versions.
    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// Why this run took a fresh actor; `None` when it kept the last run's.
    pub fn fresh_actor(&self) -> Option<lineage::Fresh> {
        self.fresh
    }

    /// The last thing a node does when it stops cleanly: refuses every later version under its
    /// actor (waiting for those being written), then leaves a new marker file and the
    /// clean-stop record naming it, both fsynced, so the next start on this directory, and only
    /// on it, may keep the actor. A node that stops without this takes a fresh actor next time.
    pub fn stop_cleanly(&self) -> Result<()> {
        self.stopped.store(true, Ordering::SeqCst);
        // An update that checked the flag before it was set holds its stripe until written.
        for stripe in &self.stripes {
            drop(lock(stripe)?);
        }
        let marker = match &self.dir {
            Some(d) => Some(lineage::write_marker(d).map_err(|e| {
                Error::Storage(format!(
                    "cannot write {}: {e}",
                    d.join(lineage::MARKER_FILE).display()
                ))
            })?),
            None => None,
        };
        let record = CleanStop { actor: self.actor, marker };
        self.engine
            .write_durable(vec![WriteOp::Put {
                space: Keyspace::Meta,
                key: META_CLEAN_STOP.to_vec(),
                value: record.encode(),
            }])
            .map_err(storage)
    }

    fn stripe(&self, key: &[u8]) -> &Mutex<()> {
        // FNV-1a: cheap and good enough to spread keys over stripes.
        let h = key
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    fn read_raw(&self, partition: PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(Keyspace::Data, &data_key(partition, key)).map_err(storage)
    }

    fn read(&self, partition: PartitionId, key: &[u8]) -> Result<(Clock, Option<Hash>)> {
        match self.read_raw(partition, key)? {
            Some(bytes) => Ok((Clock::decode(&bytes)?, Some(merkle::version_digest(&bytes)))),
            None => Ok((Clock::new(), None)),
        }
    }

    /// Writes a replica over `local` (`old` is its digest) and updates its partition's tree
    /// and the tombstone index.
    fn write(
        &self,
        partition: PartitionId,
        key: &[u8],
        clock: &Clock,
        local: &Clock,
        old: Option<Hash>,
    ) -> Result<()> {
        self.write_encoded(partition, key, clock, clock.encode(), local, old)
    }

    /// [`Store::write`] of a clock already encoded (`bytes`).
    fn write_encoded(
        &self,
        partition: PartitionId,
        key: &[u8],
        clock: &Clock,
        bytes: Vec<u8>,
        local: &Clock,
        old: Option<Hash>,
    ) -> Result<()> {
        let new = merkle::version_digest(&bytes);
        let mut ops = vec![WriteOp::Put {
            space: Keyspace::Data,
            key: data_key(partition, key),
            value: bytes,
        }];
        let (was, is) = (old.is_some() && is_tombstone(local), is_tombstone(clock));
        if is && !was {
            let since = now_ms().to_be_bytes().to_vec();
            ops.push(WriteOp::Put {
                space: Keyspace::Meta,
                key: tomb_key(partition, key),
                value: since,
            });
        } else if was && !is {
            ops.push(WriteOp::Delete { space: Keyspace::Meta, key: tomb_key(partition, key) });
        }
        self.engine.write(ops).map_err(storage)?;
        if old.is_none() {
            self.keys.fetch_add(1, Ordering::Relaxed);
        }
        match (was, is) {
            (false, true) => {
                self.tombstones.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.tombstones.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if let Some(tree) = self.trees.get(partition as usize) {
            lock(tree)?.update(key, old.as_ref().map(|h| &h[..]), Some(&new));
        }
        Ok(())
    }

    /// Tombstones held now and reaped since start.
    pub fn tombstone_stats(&self) -> TombstoneStats {
        TombstoneStats {
            held: self.tombstones.load(Ordering::Relaxed),
            reaped: self.reaped.load(Ordering::Relaxed),
        }
    }

    /// Up to `limit` tombstones this replica has held since at least `held_since` (ms, this
    /// node's clock), after `after` (a previous answer's last entry), as (partition, key).
    pub fn tombstones_since(
        &self,
        held_since: u64,
        after: Option<(PartitionId, &[u8])>,
        limit: usize,
    ) -> Result<Vec<(PartitionId, Vec<u8>)>> {
        let after = after.map(|(p, k)| tomb_key(p, k));
        let page = self
            .engine
            .scan(Keyspace::Meta, TOMB_PREFIX, after.as_deref(), Budget::items(limit))
            .map_err(storage)?;
        Ok(page
            .into_iter()
            .filter_map(|(k, v)| {
                let since = u64::from_be_bytes(v.as_slice().try_into().ok()?);
                let (p, key) = parse_data_key(&k[TOMB_PREFIX.len()..])?;
                (since <= held_since).then(|| (p, key.to_vec()))
            })
            .collect())
    }

    /// Removes this replica's tombstone of a key if it is still exactly `expected` (nothing
    /// was written since the reaper checked the other replicas); returns whether it did.
    pub fn reap(&self, partition: PartitionId, key: &[u8], expected: &Clock) -> Result<bool> {
        let _guard = lock(self.stripe(key))?;
        let (local, old) = self.read(partition, key)?;
        let Some(old) = old else { return Ok(false) };
        if local != *expected || !is_tombstone(&local) {
            return Ok(false);
        }
        self.engine
            .write(vec![
                WriteOp::Delete { space: Keyspace::Data, key: data_key(partition, key) },
                WriteOp::Delete { space: Keyspace::Meta, key: tomb_key(partition, key) },
            ])
            .map_err(storage)?;
        self.tombstones.fetch_sub(1, Ordering::Relaxed);
        self.keys.fetch_sub(1, Ordering::Relaxed);
        self.reaped.fetch_add(1, Ordering::Relaxed);
        if let Some(tree) = self.trees.get(partition as usize) {
            lock(tree)?.update(key, Some(&old[..]), None);
        }
        Ok(true)
    }

    /// This replica's clock for a key (empty when it has none).
    pub fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Clock> {
        Ok(self.read(partition, key)?.0)
    }

    /// Merges a version received from another node into this replica; returns the result.
    /// Writes only when something changed. A merge that would grow the key past the
    /// [`StoreCaps`] is refused (nothing written); one that just takes the incoming version
    /// (this replica had nothing newer) is not, so what exists elsewhere can always be copied.
    pub fn merge(&self, partition: PartitionId, key: &[u8], incoming: &Clock) -> Result<Clock> {
        let _guard = lock(self.stripe(key))?;
        let (local, old) = self.read(partition, key)?;
        let merged = local.sync(incoming);
        if merged != local {
            let bytes = merged.encode();
            if merged != *incoming {
                self.check_caps(&merged, bytes.len())?;
            }
            self.write_encoded(partition, key, &merged, bytes, &local, old)?;
        }
        Ok(merged)
    }

    fn check_caps(&self, merged: &Clock, encoded: usize) -> Result<()> {
        let caps = self.caps;
        if merged.sibling_count() > caps.siblings {
            return Err(Error::TooManySiblings {
                siblings: merged.sibling_count(),
                max: caps.siblings,
            });
        }
        if encoded > caps.bytes {
            return Err(Error::ObjectTooLarge { bytes: encoded, max: caps.bytes });
        }
        Ok(())
    }

    /// A fresh per-key epoch actor: never handed out before under this node actor.
    fn fresh_epoch(&self) -> Result<Actor> {
        let mut e = lock(&self.epochs)?;
        let max = 1u32 << EPOCH_BITS;
        // The node actor's own epoch bits (an actor from before epochs) are never handed out.
        let own = (e.actor & ((1 << EPOCH_BITS) - 1)) as u32;
        if e.next == own {
            e.next += 1;
        }
        if e.next >= max {
            return Err(Error::NotReady(
                "this node has used every per-key epoch of its actor; restart it (it takes a \
                 fresh actor after an unclean stop: kill it)"
                    .into(),
            ));
        }
        if e.next >= e.reserved {
            let reserved = e.next.saturating_add(EPOCH_BLOCK).min(max);
            let mut mark = e.actor.to_be_bytes().to_vec();
            mark.extend_from_slice(&reserved.to_be_bytes());
            self.engine
                .write_durable(vec![WriteOp::Put {
                    space: Keyspace::Meta,
                    key: META_EPOCH.to_vec(),
                    value: mark,
                }])
                .map_err(storage)?;
            e.reserved = reserved;
        }
        let epoch = e.next;
        e.next += 1;
        Ok((e.actor >> EPOCH_BITS << EPOCH_BITS) | u64::from(epoch))
    }

    /// [`Store::update`] for a coordinator: `f` also gets the actor to write under, one of this
    /// node's own actors already in the local clock, or a fresh per-key epoch (see the actor
    /// rule in `crate::version`).
    pub fn update_as(
        &self,
        partition: PartitionId,
        key: &[u8],
        f: impl FnOnce(&Clock, Actor) -> Result<Clock>,
    ) -> Result<Clock> {
        self.update(partition, key, |local| {
            let actor = match own_actor_in(local, self.actor) {
                Some(a) => a,
                None => self.fresh_epoch()?,
            };
            f(local, actor)
        })
    }

    /// Read-modify-write of one key: `f` gets the local clock and returns the new one (or an
    /// error, in which case nothing is written). This is how a coordinator creates versions
    /// under [`Store::actor`]; refused once [`Store::stop_cleanly`] has begun.
    pub fn update(
        &self,
        partition: PartitionId,
        key: &[u8],
        f: impl FnOnce(&Clock) -> Result<Clock>,
    ) -> Result<Clock> {
        let _guard = lock(self.stripe(key))?;
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Error::NotReady(
                "this node is stopping and takes no more writes; retry through another node".into(),
            ));
        }
        let (local, old) = self.read(partition, key)?;
        let new = f(&local)?;
        self.write(partition, key, &new, &local, old)?;
        Ok(new)
    }

    /// Runs `f` on a partition's Merkle tree.
    pub fn with_tree<R>(
        &self,
        partition: PartitionId,
        f: impl FnOnce(&mut MerkleTree) -> R,
    ) -> Result<R> {
        let tree = self.trees.get(partition as usize).ok_or_else(|| {
            Error::InvalidArgument(format!("partition {partition} does not exist"))
        })?;
        Ok(f(&mut *lock(tree)?))
    }

    /// The (key, version digest) items of a partition whose keys fall in `leaves`, in key
    /// order, strictly after `after` and up to `upto` (inclusive) when given, as many as
    /// `budget` admits (counting each item's key and digest); and whether the range was
    /// exhausted (nothing in it follows the items returned).
    pub fn items_in_leaves(
        &self,
        partition: PartitionId,
        leaves: &[u32],
        after: Option<&[u8]>,
        upto: Option<&[u8]>,
        budget: Budget,
    ) -> Result<(Items, bool)> {
        let wanted: HashSet<u32> = leaves.iter().copied().collect();
        let prefix = partition.to_be_bytes();
        let mut out = Vec::new();
        let mut used = 0;
        let mut after: Option<Vec<u8>> = after.map(|k| data_key(partition, k));
        loop {
            let page = self
                .engine
                .scan(Keyspace::Data, &prefix, after.as_deref(), Budget::items(1024))
                .map_err(storage)?;
            let Some(last) = page.last() else { return Ok((out, true)) };
            after = Some(last.0.clone());
            for (k, v) in page {
                let key = &k[4..];
                if upto.is_some_and(|u| key > u) {
                    return Ok((out, true));
                }
                if !wanted.contains(&TREE_SHAPE.leaf_of(key)) {
                    continue;
                }
                let size = key.len() + 32;
                if !budget.admits(out.len(), used, size) {
                    return Ok((out, false));
                }
                used += size;
                out.push((key.to_vec(), merkle::version_digest(&v)));
            }
        }
    }

    /// Keeps a write meant for `target` (sloppy quorum), merged with any hint already held.
    pub fn store_hint(
        &self,
        target: &NodeId,
        partition: PartitionId,
        key: &[u8],
        clock: &Clock,
    ) -> Result<()> {
        let hk = hint_key(target, partition, key);
        let _guard = lock(self.stripe(&hk))?;
        let old = self.engine.get(Keyspace::Hints, &hk).map_err(storage)?;
        let merged = match &old {
            Some(bytes) => Clock::decode(bytes)?.sync(clock),
            None => clock.clone(),
        };
        let bytes = merged.encode();
        let (old_len, new_len) = (old.as_ref().map_or(0, Vec::len) as u64, bytes.len() as u64);
        let held = lock(&self.hint_stats)?.get(target).map_or(0, |s| s.bytes);
        let cap = self.caps.hint_bytes_per_target;
        if new_len > old_len && (held + new_len).saturating_sub(old_len) > cap {
            crate::metrics::METRICS.hint_dropped("over_cap");
            return Err(Error::HintRefused(format!(
                "this node already holds {held} bytes of hints for '{target}', the most it keeps \
                 for one node ({cap}); anti-entropy repairs it when it returns"
            )));
        }
        self.engine
            .write(vec![WriteOp::Put { space: Keyspace::Hints, key: hk, value: bytes }])
            .map_err(storage)?;
        crate::metrics::METRICS.hints_stored.inc();
        let mut stats = lock(&self.hint_stats)?;
        let s = stats.entry(target.clone()).or_default();
        if old.is_none() {
            s.count += 1;
        }
        s.bytes = (s.bytes + new_len).saturating_sub(old_len);
        Ok(())
    }

    /// Takes a version sent by another node: merged into this replica, or, when `hint_for`
    /// names a node other than `me`, kept as a hint for that node (sloppy quorum).
    pub fn accept(
        &self,
        me: &NodeId,
        partition: PartitionId,
        key: &[u8],
        clock: &Clock,
        hint_for: Option<&NodeId>,
    ) -> Result<()> {
        match hint_for {
            Some(target) if target != me => self.store_hint(target, partition, key, clock),
            _ => self.merge(partition, key, clock).map(|_| ()),
        }
    }

    /// This replica of a key, for another node's read; when `hint_for` names a node other than
    /// `me`, merged with the hint held for that node.
    pub fn replica(
        &self,
        me: &NodeId,
        partition: PartitionId,
        key: &[u8],
        hint_for: Option<&NodeId>,
    ) -> Result<Clock> {
        let local = self.get(partition, key)?;
        match hint_for {
            Some(target) if target != me => Ok(local.sync(&self.hint(target, partition, key)?)),
            _ => Ok(local),
        }
    }

    /// The hint held for `target` for one key (empty when none).
    pub fn hint(&self, target: &NodeId, partition: PartitionId, key: &[u8]) -> Result<Clock> {
        match self
            .engine
            .get(Keyspace::Hints, &hint_key(target, partition, key))
            .map_err(storage)?
        {
            Some(bytes) => Ok(Clock::decode(&bytes)?),
            None => Ok(Clock::new()),
        }
    }

    /// Up to `limit` hints for `target`, after the given (partition, key) when paging.
    pub fn hints_for(
        &self,
        target: &NodeId,
        after: Option<(PartitionId, &[u8])>,
        limit: usize,
    ) -> Result<Vec<(PartitionId, Vec<u8>, Clock)>> {
        let after = after.map(|(p, k)| hint_key(target, p, k));
        let page = self
            .engine
            .scan(Keyspace::Hints, &hint_prefix(target), after.as_deref(), Budget::items(limit))
            .map_err(storage)?;
        let mut out = Vec::with_capacity(page.len());
        for (k, v) in page {
            if let Some((_, p, key)) = parse_hint_key(&k) {
                out.push((p, key, Clock::decode(&v)?));
            }
        }
        Ok(out)
    }

    /// Deletes a delivered hint, unless a newer write for the same key was hinted meanwhile
    /// (then it stays, to be delivered on the next pass). Returns whether it was deleted.
    pub fn remove_hint_if_unchanged(
        &self,
        target: &NodeId,
        partition: PartitionId,
        key: &[u8],
        delivered: &Clock,
    ) -> Result<bool> {
        let hk = hint_key(target, partition, key);
        let _guard = lock(self.stripe(&hk))?;
        let Some(bytes) = self.engine.get(Keyspace::Hints, &hk).map_err(storage)? else {
            return Ok(false);
        };
        if Clock::decode(&bytes)? != *delivered {
            return Ok(false);
        }
        self.engine
            .write(vec![WriteOp::Delete { space: Keyspace::Hints, key: hk }])
            .map_err(storage)?;
        let mut stats = lock(&self.hint_stats)?;
        if let Some(s) = stats.get_mut(target) {
            s.count = s.count.saturating_sub(1);
            s.bytes = s.bytes.saturating_sub(bytes.len() as u64);
            if s.count == 0 {
                stats.remove(target);
            }
        }
        Ok(true)
    }

    /// Hints held, per target node.
    pub fn hint_stats(&self) -> BTreeMap<NodeId, HintStats> {
        self.hint_stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A node metadata value.
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(Keyspace::Meta, key).map_err(storage)
    }

    /// Writes a node metadata value.
    pub fn meta_put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.engine
            .write(vec![WriteOp::Put {
                space: Keyspace::Meta,
                key: key.to_vec(),
                value: value.to_vec(),
            }])
            .map_err(storage)
    }

    /// The replicas of a partition after `after`, in key order, as (key, clock), as many as
    /// `budget` admits (at least one when there is one).
    pub fn scan_partition(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        budget: Budget,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = partition.to_be_bytes();
        let after = after.map(|k| data_key(partition, k));
        let page =
            self.engine.scan(Keyspace::Data, &prefix, after.as_deref(), budget).map_err(storage)?;
        Ok(page.into_iter().map(|(k, v)| (k[4..].to_vec(), v)).collect())
    }

    /// One page of a partition for a transfer: what `budget` admits after `after`, and whether
    /// it is the last page (nothing follows it).
    pub fn partition_page(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        budget: Budget,
    ) -> Result<(super::Entries, bool)> {
        let page = self.scan_partition(partition, after, budget)?;
        let done = match page.last() {
            None => true,
            Some((last, _)) => {
                self.scan_partition(partition, Some(last), Budget::items(1))?.is_empty()
            }
        };
        Ok((page, done))
    }

    /// Deletes this node's copy of every key of `partition` (one it no longer replicates),
    /// keeping its Merkle tree in step; returns how many keys went. Hints are not touched.
    pub fn drop_partition(&self, partition: PartitionId) -> Result<u64> {
        let mut removed = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan_partition(partition, after.as_deref(), Budget::items(256))?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, _) in page {
                let _guard = lock(self.stripe(&key))?;
                let Some(bytes) = self.read_raw(partition, &key)? else { continue };
                let tombstone = is_tombstone(&Clock::decode(&bytes)?);
                let mut ops =
                    vec![WriteOp::Delete { space: Keyspace::Data, key: data_key(partition, &key) }];
                if tombstone {
                    ops.push(WriteOp::Delete {
                        space: Keyspace::Meta,
                        key: tomb_key(partition, &key),
                    });
                }
                self.engine.write(ops).map_err(storage)?;
                self.keys.fetch_sub(1, Ordering::Relaxed);
                if tombstone {
                    self.tombstones.fetch_sub(1, Ordering::Relaxed);
                }
                if let Some(tree) = self.trees.get(partition as usize) {
                    let old = merkle::version_digest(&bytes);
                    lock(tree)?.update(&key, Some(&old[..]), None);
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Whether this node holds any key of `partition`.
    pub fn holds(&self, partition: PartitionId) -> Result<bool> {
        Ok(!self.scan_partition(partition, None, Budget::items(1))?.is_empty())
    }

    /// Estimated number of keys held (replicas only, not hints), from the engine: RocksDB's
    /// estimate counts deletions poorly, so it stays high after many; see [`Store::keys`].
    pub fn approximate_keys(&self) -> u64 {
        self.engine.approximate_len(Keyspace::Data)
    }

    /// Keys held (replicas only, not hints), tombstones included: counted at start and kept
    /// in step with every write and removal.
    pub fn keys(&self) -> u64 {
        self.keys.load(Ordering::Relaxed)
    }

    /// The engine's health figures, for `/metrics`.
    pub fn engine_stats(&self) -> crate::metrics::EngineStats {
        self.engine.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;
    use crate::version::{Value, VersionVector};

    #[test]
    fn the_actor_is_kept_only_across_a_clean_stop_and_partition_count_is_checked() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let first = Store::open(engine.clone(), 64).unwrap();
        let a = first.actor();
        assert_eq!(first.fresh_actor(), Some(lineage::Fresh::NewDirectory));
        first.stop_cleanly().unwrap();
        let refused = first.update(1, b"k", |c| Ok(c.clone())).unwrap_err();
        assert!(matches!(refused, Error::NotReady(_)), "{refused}");
        let second = Store::open(engine.clone(), 64).unwrap();
        assert_eq!((second.actor(), second.fresh_actor()), (a, None));
        // No clean stop this time (a crash): the next run must not reuse `a`.
        let third = Store::open(engine.clone(), 64).unwrap();
        assert_ne!(third.actor(), a);
        assert_eq!(third.fresh_actor(), Some(lineage::Fresh::UncleanStop));
        let err = Store::open(engine, 128).err().unwrap().to_string();
        assert!(err.contains("created for 64 partitions"), "{err}");
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// KV679 on one node: a copy of a cleanly stopped directory, restored after the node wrote
    /// more, must not write under the actor again (its dots were issued after the copy).
    #[test]
    fn a_directory_restored_from_a_copy_writes_under_a_fresh_actor() {
        let root = tempfile::tempdir().unwrap();
        let (dir, copy) = (root.path().join("data"), root.path().join("copy"));
        let open = || {
            let engine: Arc<dyn Engine> =
                Arc::new(super::super::RocksEngine::open(&dir, false).unwrap());
            Store::open_in(engine, 8, Some(&dir)).unwrap()
        };
        let store = open();
        let a = store.actor();
        store
            .update(1, b"k", |c| {
                Ok(c.update(&VersionVector::new(), Value::Data(b"v1".to_vec()), a))
            })
            .unwrap();
        store.stop_cleanly().unwrap();
        drop(store);
        copy_dir(&dir, &copy);
        // Restarted in place after a clean stop: same actor.
        let store = open();
        assert_eq!((store.actor(), store.fresh_actor()), (a, None));
        let v2 = store
            .update(1, b"k", |c| Ok(c.update(&c.context(), Value::Data(b"v2".to_vec()), a)))
            .unwrap();
        store.stop_cleanly().unwrap();
        drop(store);
        // The copy comes back in its place.
        std::fs::remove_dir_all(&dir).unwrap();
        copy_dir(&copy, &dir);
        let store = open();
        assert_ne!(store.actor(), a);
        assert_eq!(store.fresh_actor(), Some(lineage::Fresh::CopiedOrRestored));
        let b = store.actor();
        let v3 = store
            .update(1, b"k", |c| {
                Ok(c.update(&VersionVector::new(), Value::Data(b"v3".to_vec()), b))
            })
            .unwrap();
        // The other replicas hold v2; v3 is concurrent with it, not a repeat of its dot.
        let merged = v2.sync(&v3);
        let mut values = merged.live_values();
        values.sort();
        assert_eq!(values, [&b"v2"[..], b"v3"]);
        // A crash (no clean stop): fresh again.
        drop(store);
        let store = open();
        assert!(store.actor() != b && store.actor() != a);
        assert_eq!(store.fresh_actor(), Some(lineage::Fresh::UncleanStop));
    }

    #[test]
    fn tombstones_are_indexed_counted_and_reaped_only_unchanged() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let store = Store::open(engine.clone(), 8).unwrap();
        let live = write("v", 1);
        let tomb = live.update(&live.context(), Value::Tombstone, 1);
        store.merge(1, b"a", &live).unwrap();
        store.merge(1, b"b", &tomb).unwrap();
        store.merge(2, b"c", &live).unwrap();
        store.merge(2, b"c", &tomb).unwrap();
        assert_eq!(store.keys(), 3);
        assert_eq!(store.tombstone_stats(), TombstoneStats { held: 2, reaped: 0 });
        // Held since now: not due for a grace period that ends before it.
        assert!(store.tombstones_since(now_ms() - 60_000, None, 10).unwrap().is_empty());
        let due = store.tombstones_since(now_ms(), None, 10).unwrap();
        assert_eq!(due, [(1, b"b".to_vec()), (2, b"c".to_vec())]);
        assert_eq!(
            store.tombstones_since(now_ms(), Some((1, b"b")), 10).unwrap(),
            [(2, b"c".to_vec())]
        );
        // A write after the check (here: a concurrent value) keeps the key.
        let concurrent = write("w", 2);
        store.merge(2, b"c", &concurrent).unwrap();
        assert_eq!(store.tombstone_stats().held, 1, "c is live again");
        assert!(!store.reap(2, b"c", &tomb).unwrap());
        assert!(!store.reap(1, b"a", &live).unwrap(), "only tombstones are reaped");
        let empty_root = Store::open(Arc::new(MemoryEngine::default()), 8)
            .unwrap()
            .with_tree(1, |t| t.root())
            .unwrap();
        store.merge(1, b"a", &live.update(&live.context(), Value::Tombstone, 1)).unwrap();
        let a = store.get(1, b"a").unwrap();
        assert!(store.reap(1, b"a", &a).unwrap());
        assert!(store.reap(1, b"b", &tomb).unwrap());
        assert!(store.get(1, b"b").unwrap().is_empty());
        assert_eq!(store.with_tree(1, |t| t.root()).unwrap(), empty_root, "the tree forgets them");
        assert_eq!(store.tombstone_stats(), TombstoneStats { held: 0, reaped: 2 });
        assert_eq!(store.keys(), 1);
        assert!(store.tombstones_since(u64::MAX, None, 10).unwrap().is_empty());
        // Counts and the index are rebuilt from disk.
        store.merge(3, b"d", &tomb).unwrap();
        let reopened = Store::open(engine, 8).unwrap();
        assert_eq!((reopened.keys(), reopened.tombstone_stats().held), (2, 1));
        assert_eq!(reopened.drop_partition(3).unwrap(), 1);
        assert_eq!((reopened.keys(), reopened.tombstone_stats().held), (1, 0));
        assert!(reopened.tombstones_since(u64::MAX, None, 10).unwrap().is_empty());
    }

    /// Reaping forgets a key's history on one replica while another may still hold it: the
    /// next write there must not count under the actor of the forgotten dots.
    #[test]
    fn a_key_written_again_after_its_reaping_gets_a_fresh_epoch_never_reused() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let store = Store::open(engine.clone(), 8).unwrap();
        let put = |value: Value| {
            store
                .update_as(1, b"k", |local, actor| Ok(local.update(&local.context(), value, actor)))
                .unwrap()
        };
        let first = put(Value::Data(b"v".to_vec()));
        let tomb = put(Value::Tombstone);
        let actor = first.context().entries()[0].0;
        assert_eq!(tomb.context().entries(), [(actor, 2)], "the key's own epoch continues");
        assert_eq!(actor >> EPOCH_BITS, store.actor() >> EPOCH_BITS);
        // Another replica still holds the tombstone; this one reaps it and is written again.
        assert!(store.reap(1, b"k", &tomb).unwrap());
        let again = put(Value::Data(b"w".to_vec()));
        let fresh = again.context().entries()[0].0;
        assert_ne!(fresh, actor);
        let merged = tomb.sync(&again);
        assert_eq!(merged.live_values(), [&b"w"[..]], "the new write is not taken for a seen one");
        // After a clean restart, epochs continue above everything handed out.
        store.stop_cleanly().unwrap();
        let reopened = Store::open(engine, 8).unwrap();
        assert_eq!(reopened.actor(), store.actor());
        let other = reopened
            .update_as(2, b"x", |l, a| Ok(l.update(&l.context(), Value::Data(b"x".to_vec()), a)))
            .unwrap();
        let epoch = |a: Actor| a & ((1 << EPOCH_BITS) - 1);
        assert!(epoch(other.context().entries()[0].0) > epoch(fresh));
    }

    #[test]
    fn drop_partition_removes_its_keys_and_leaves_the_tree_as_if_empty() {
        let store = Store::open(Arc::new(MemoryEngine::default()), 8).unwrap();
        let empty_root = store.with_tree(2, |t| t.root()).unwrap();
        let kept_root_before = {
            let v = Clock::new().update(&VersionVector::default(), Value::Data(b"v".to_vec()), 7);
            for i in 0..600 {
                store.merge(2, format!("k{i}").as_bytes(), &v).unwrap();
                store.merge(3, format!("k{i}").as_bytes(), &v).unwrap();
            }
            store.with_tree(3, |t| t.root()).unwrap()
        };
        assert!(store.holds(2).unwrap());
        assert_eq!(store.drop_partition(2).unwrap(), 600);
        assert!(!store.holds(2).unwrap());
        assert!(store.get(2, b"k1").unwrap().is_empty());
        assert_eq!(store.with_tree(2, |t| t.root()).unwrap(), empty_root);
        // Other partitions are untouched.
        assert_eq!(store.get(3, b"k1").unwrap().live_values().len(), 1);
        assert_eq!(store.with_tree(3, |t| t.root()).unwrap(), kept_root_before);
        assert_eq!(store.drop_partition(2).unwrap(), 0);
    }

    #[test]
    fn partition_pages_are_cut_at_their_byte_budget_and_end_exactly() {
        let store = Store::open(Arc::new(MemoryEngine::default()), 8).unwrap();
        // 10 values of 100 KiB: one 256-key page would be 1 MB.
        let big =
            Clock::new().update(&VersionVector::default(), Value::Data(vec![7; 100 << 10]), 7);
        for i in 0..10 {
            store.merge(1, format!("k{i}").as_bytes(), &big).unwrap();
        }
        let budget = Budget { items: 256, bytes: 350 << 10 };
        let (mut after, mut pages, mut keys) = (None::<Vec<u8>>, 0, 0);
        loop {
            let (page, done) = store.partition_page(1, after.as_deref(), budget).unwrap();
            let bytes: usize = page.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
            assert!(page.len() == 1 || bytes <= budget.bytes, "page of {bytes} bytes");
            pages += 1;
            keys += page.len();
            after = page.last().map(|(k, _)| k.clone());
            if done {
                break;
            }
        }
        assert_eq!((keys, pages), (10, 4), "3 values per page, and no empty last page");
        // A value over the budget still moves, one per page.
        let tiny = Budget { items: 256, bytes: 1 };
        let (page, done) = store.partition_page(1, None, tiny).unwrap();
        assert_eq!((page.len(), done), (1, false));
        assert_eq!(store.partition_page(2, None, tiny).unwrap(), (vec![], true));
    }

    #[test]
    fn a_replica_merge_past_the_caps_is_refused_and_the_key_stays_readable() {
        let caps = StoreCaps { siblings: 4, bytes: 1 << 20, hint_bytes_per_target: 1 << 20 };
        let store = Store::open(Arc::new(MemoryEngine::default()), 8).unwrap().with_caps(caps);
        let siblings = |actor, n: usize| {
            (0..n).fold(Clock::new(), |c, i| {
                c.update(&VersionVector::default(), Value::Data(vec![i as u8; 10]), actor)
            })
        };
        let (a, b) = (siblings(1, 3), siblings(2, 3));
        assert_eq!(a.sibling_count(), 3);
        store.merge(1, b"k", &a).unwrap();
        // Together they would hold 6 concurrent values: refused, nothing written.
        let err = store.merge(1, b"k", &b).unwrap_err();
        assert!(matches!(err, Error::TooManySiblings { siblings: 6, max: 4 }), "{err}");
        assert_eq!(store.get(1, b"k").unwrap(), a, "the key keeps a readable version");
        // An object over the caps that exists elsewhere is still copied to an empty replica.
        let five = siblings(3, 5);
        assert_eq!(store.merge(1, b"other", &five).unwrap(), five);
        // Bytes: two concurrent 600 KiB values exceed 1 MiB together.
        let big = |actor| {
            Clock::new().update(&VersionVector::default(), Value::Data(vec![0; 600 << 10]), actor)
        };
        store.merge(2, b"big", &big(1)).unwrap();
        let err = store.merge(2, b"big", &big(2)).unwrap_err();
        assert!(matches!(err, Error::ObjectTooLarge { max, .. } if max == 1 << 20), "{err}");
        assert_eq!(store.get(2, b"big").unwrap().sibling_count(), 1);
        // The defaults keep every merge decodable and within one message.
        let caps = StoreCaps::from_limits(&crate::config::Limits::default());
        assert!(caps.siblings <= crate::version::MAX_VALUES);
        assert!(caps.bytes <= dynamo_api::contract::MAX_MESSAGE_BYTES / 2);
    }

    #[test]
    fn hints_for_one_node_stop_at_the_cap_and_room_returns_as_they_are_delivered() {
        let cap = StoreCaps {
            hint_bytes_per_target: 1000,
            ..StoreCaps::from_limits(&Default::default())
        };
        let store = Store::open(Arc::new(MemoryEngine::default()), 8).unwrap().with_caps(cap);
        let (t, other) = (NodeId("t".into()), NodeId("u".into()));
        let v = Clock::new().update(&VersionVector::default(), Value::Data(vec![1; 300]), 7);
        let mut kept = 0;
        let err = loop {
            match store.store_hint(&t, 1, format!("k{kept}").as_bytes(), &v) {
                Ok(()) => kept += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(kept, 3, "3 hints of ~300 bytes fit in 1000");
        assert!(matches!(err, Error::HintRefused(_)), "{err}");
        assert!(store.hint_stats()[&t].bytes <= 1000);
        // Another target has its own room; the same hint again changes nothing and is fine.
        store.store_hint(&other, 1, b"k0", &v).unwrap();
        store.store_hint(&t, 1, b"k0", &v).unwrap();
        // Delivering one makes room for one more.
        assert!(store.remove_hint_if_unchanged(&t, 1, b"k0", &v).unwrap());
        store.store_hint(&t, 1, b"k9", &v).unwrap();
    }

    #[test]
    fn merge_and_update_round_trip() {
        let store = Store::open(Arc::new(MemoryEngine::default()), 64).unwrap();
        let c = store
            .update(3, b"k", |local| {
                Ok(local.update(&VersionVector::default(), Value::Data(b"v".to_vec()), 7))
            })
            .unwrap();
        assert_eq!(store.get(3, b"k").unwrap(), c);
        assert!(store.get(4, b"k").unwrap().is_empty());
        let other = Clock::new().update(&VersionVector::default(), Value::Data(b"w".to_vec()), 9);
        let merged = store.merge(3, b"k", &other).unwrap();
        assert_eq!(merged.sibling_count(), 2);
        assert_eq!(store.get(3, b"k").unwrap(), merged);
        let failed = store.update(3, b"k", |_| Err(Error::Internal("no".into())));
        assert!(failed.is_err());
        assert_eq!(store.get(3, b"k").unwrap(), merged);
    }

    fn write(v: &str, actor: u64) -> Clock {
        Clock::new().update(&VersionVector::default(), Value::Data(v.as_bytes().to_vec()), actor)
    }

    #[test]
    fn trees_follow_writes_and_are_rebuilt_identically_on_reopen() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let store = Store::open(engine.clone(), 8).unwrap();
        let empty = store.with_tree(2, |t| t.root()).unwrap();
        for i in 0..50 {
            store.merge(2, format!("k{i}").as_bytes(), &write("v", 1)).unwrap();
        }
        store.merge(2, b"k7", &write("w", 2)).unwrap();
        let root = store.with_tree(2, |t| t.root()).unwrap();
        assert_ne!(root, empty);
        let reopened = Store::open(engine, 8).unwrap();
        assert_eq!(reopened.with_tree(2, |t| t.root()).unwrap(), root);
        assert_eq!(reopened.with_tree(3, |t| t.root()).unwrap(), empty);
        let leaf = TREE_SHAPE.leaf_of(b"k7");
        let all = Budget { items: usize::MAX, bytes: usize::MAX };
        let (items, done) = store.items_in_leaves(2, &[leaf], None, None, all).unwrap();
        assert!(done);
        assert!(items.iter().any(|(k, _)| k == b"k7"));
        assert!(items.iter().all(|(k, _)| TREE_SHAPE.leaf_of(k) == leaf));
        // Paged by bytes (each item: key + 32-byte digest), the pages add up to the whole.
        let every_leaf: Vec<u32> = (0..TREE_SHAPE.level_len(TREE_SHAPE.depth)).collect();
        let (whole, _) = store.items_in_leaves(2, &every_leaf, None, None, all).unwrap();
        assert_eq!(whole.len(), 50);
        let small = Budget { items: usize::MAX, bytes: 100 };
        let (mut paged, mut after) = (Vec::new(), None::<Vec<u8>>);
        loop {
            let (page, done) =
                store.items_in_leaves(2, &every_leaf, after.as_deref(), None, small).unwrap();
            assert!(!page.is_empty() && page.len() <= 3, "{} items", page.len());
            after = page.last().map(|(k, _)| k.clone());
            paged.extend(page);
            if done {
                break;
            }
        }
        assert_eq!(paged, whole);
        // A range ends at `upto`, inclusive.
        let (upto, done) =
            store.items_in_leaves(2, &every_leaf, None, Some(&whole[9].0), all).unwrap();
        assert_eq!((upto.as_slice(), done), (&whole[..10], true));
    }

    #[test]
    fn hints_are_kept_apart_merged_counted_and_removed_only_when_unchanged() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let store = Store::open(engine.clone(), 8).unwrap();
        let target = NodeId("node-9".into());
        store.store_hint(&target, 1, b"a", &write("x", 1)).unwrap();
        store.store_hint(&target, 1, b"a", &write("y", 2)).unwrap();
        store.store_hint(&target, 2, b"b", &write("z", 1)).unwrap();
        assert!(store.get(1, b"a").unwrap().is_empty(), "hints are not replicas");
        assert_eq!(store.hint(&target, 1, b"a").unwrap().sibling_count(), 2);
        assert_eq!(store.hint_stats()[&target].count, 2);
        let page = store.hints_for(&target, None, 1).unwrap();
        assert_eq!((page[0].0, page[0].1.as_slice()), (1, &b"a"[..]));
        let rest = store.hints_for(&target, Some((1, b"a")), 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, b"b");
        // A stale delivery does not delete a newer hint.
        assert!(!store.remove_hint_if_unchanged(&target, 1, b"a", &write("x", 1)).unwrap());
        let current = store.hint(&target, 1, b"a").unwrap();
        assert!(store.remove_hint_if_unchanged(&target, 1, b"a", &current).unwrap());
        // Counts survive a restart (rebuilt from disk).
        let reopened = Store::open(engine, 8).unwrap();
        assert_eq!(reopened.hint_stats()[&target].count, 1);
        assert!(reopened.remove_hint_if_unchanged(&target, 2, b"b", &write("z", 1)).unwrap());
        assert!(reopened.hint_stats().is_empty());
    }
}
