//! Local persistence: an [`Engine`] trait over ordered key-value keyspaces, a RocksDB engine
//! (default, durable) and an in-memory engine, and the [`Store`] that lays Dynamo objects out
//! on top of them.
//!
//! Layout: data keys are `partition (u32, big-endian) ++ user key` in [`Keyspace::Data`], so a
//! whole partition is one contiguous, cheaply scannable range (the unit of transfer, hinting and
//! Merkle trees). Node metadata (actor id, the partition count the data was laid out with, the
//! clean-stop record of [`lineage`]) lives in [`Keyspace::Meta`], hints for other nodes in
//! [`Keyspace::Hints`].

pub mod lineage;
mod memory;
mod rocks;
mod store;

pub use memory::MemoryEngine;
pub use rocks::RocksEngine;
pub use store::{data_key, now_ms, HintStats, Store, StoreCaps, TombstoneStats, TREE_SHAPE};

/// Runs long storage work (a partition scan, a partition's deletion) without stalling the async
/// worker thread it is called from: on the multi-thread runtime the worker hands its other tasks
/// to a fresh thread from tokio's bounded blocking pool for the duration (`block_in_place`),
/// so requests, gossip and health keep being served; elsewhere (single-thread test runtimes) it
/// just runs. How many such calls run at once is bounded by admission control (background
/// requests) and by the one worker per background job.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Separate key spaces (RocksDB column families).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Keyspace {
    /// Replicas of user objects: encoded version clocks.
    Data,
    /// Node metadata.
    Meta,
    /// Hinted writes held for unreachable nodes (sloppy quorum), apart from regular data:
    /// `target id length (u8) ++ target id ++ partition (u32 BE) ++ user key`.
    Hints,
}

impl Keyspace {
    pub const ALL: [Keyspace; 3] = [Keyspace::Data, Keyspace::Meta, Keyspace::Hints];

    pub fn name(self) -> &'static str {
        match self {
            Keyspace::Data => "data",
            Keyspace::Meta => "meta",
            Keyspace::Hints => "hints",
        }
    }
}

/// One write in an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put { space: Keyspace, key: Vec<u8>, value: Vec<u8> },
    Delete { space: Keyspace, key: Vec<u8> },
}

/// Key-value pairs, as a scan returns them.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// How much one scan may return: at most `items` entries, and no more than `bytes` of keys and
/// values together, except that the first entry is always returned (a page always makes
/// progress, whatever the size of one object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub items: usize,
    pub bytes: usize,
}

/// The byte budget of scans the node makes for itself (tree rebuilds, cleanup, hint delivery):
/// bounds the memory one page holds whatever the size of the values.
pub const SCAN_BYTES: usize = 4 << 20;

impl Budget {
    /// `items` entries, at most [`SCAN_BYTES`].
    pub const fn items(items: usize) -> Budget {
        Budget { items, bytes: SCAN_BYTES }
    }

    /// Whether an entry of `size` bytes fits after `count` entries of `used` bytes.
    pub fn admits(&self, count: usize, used: usize, size: usize) -> bool {
        count == 0 || (count < self.items && used.saturating_add(size) <= self.bytes)
    }
}

/// A storage engine failure. The message comes from the engine.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// An ordered key-value store with keyspaces. Implementations are thread-safe; calls block
/// (they are short: a memtable write, or a point read that may touch disk).
pub trait Engine: Send + Sync + 'static {
    /// Point read.
    fn get(&self, space: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Applies every op atomically (all or none, also across a crash).
    fn write(&self, ops: Vec<WriteOp>) -> Result<(), StorageError>;
    /// [`Engine::write`], durable before it returns (fsynced, whatever `sync_writes` says):
    /// for the few writes a node's safety rests on (its actor, its clean-stop record).
    fn write_durable(&self, ops: Vec<WriteOp>) -> Result<(), StorageError> {
        self.write(ops)
    }
    /// Entries whose key starts with `prefix`, in key order, strictly after `after` when given,
    /// as many as `budget` admits. Paging this way never holds an iterator across calls.
    fn scan(
        &self,
        space: Keyspace,
        prefix: &[u8],
        after: Option<&[u8]>,
        budget: Budget,
    ) -> Result<Entries, StorageError>;
    /// An estimate of the number of keys in a keyspace.
    fn approximate_len(&self, space: Keyspace) -> u64;
    /// A consistent copy of the whole store in `dir` (which must not exist), for a backup.
    fn checkpoint(&self, dir: &std::path::Path) -> Result<(), StorageError> {
        let _ = dir;
        Err(StorageError(
            "this node runs the memory engine, which keeps nothing on disk to back up: run it \
             with engine = rocksdb"
                .into(),
        ))
    }
    /// The engine's health figures, for `/metrics` (none by default).
    fn stats(&self) -> crate::metrics::EngineStats {
        crate::metrics::EngineStats::default()
    }
}

#[cfg(test)]
mod tests {
    //! The engine contract, run against both engines.
    use super::*;

    fn contract(engine: &dyn Engine) {
        assert_eq!(engine.get(Keyspace::Data, b"a").unwrap(), None);
        engine
            .write(vec![
                WriteOp::Put {
                    space: Keyspace::Data,
                    key: b"p1k1".to_vec(),
                    value: b"v1".to_vec(),
                },
                WriteOp::Put {
                    space: Keyspace::Data,
                    key: b"p1k2".to_vec(),
                    value: b"v2".to_vec(),
                },
                WriteOp::Put {
                    space: Keyspace::Data,
                    key: b"p2k1".to_vec(),
                    value: b"v3".to_vec(),
                },
                WriteOp::Put { space: Keyspace::Meta, key: b"p1k1".to_vec(), value: b"m".to_vec() },
            ])
            .unwrap();
        assert_eq!(engine.get(Keyspace::Data, b"p1k1").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(engine.get(Keyspace::Meta, b"p1k1").unwrap(), Some(b"m".to_vec()));
        let all = engine.scan(Keyspace::Data, b"p1", None, Budget::items(10)).unwrap();
        assert_eq!(all.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), [b"p1k1", b"p1k2"]);
        let page = engine.scan(Keyspace::Data, b"p1", Some(b"p1k1"), Budget::items(10)).unwrap();
        assert_eq!(page.len(), 1);
        // Byte budgets: entries are 6 bytes (4 of key, 2 of value); the first always comes.
        let bytes = |bytes| Budget { items: 10, bytes };
        assert_eq!(engine.scan(Keyspace::Data, b"", None, bytes(1)).unwrap().len(), 1);
        assert_eq!(engine.scan(Keyspace::Data, b"", None, bytes(11)).unwrap().len(), 1);
        assert_eq!(engine.scan(Keyspace::Data, b"", None, bytes(12)).unwrap().len(), 2);
        assert_eq!(engine.scan(Keyspace::Data, b"", None, bytes(18)).unwrap().len(), 3);
        assert_eq!(page[0].0, b"p1k2");
        assert_eq!(engine.scan(Keyspace::Data, b"", None, Budget::items(2)).unwrap().len(), 2);
        engine
            .write(vec![WriteOp::Delete { space: Keyspace::Data, key: b"p1k1".to_vec() }])
            .unwrap();
        assert_eq!(engine.get(Keyspace::Data, b"p1k1").unwrap(), None);
        assert_eq!(engine.get(Keyspace::Meta, b"p1k1").unwrap(), Some(b"m".to_vec()));
    }

    #[test]
    fn memory_engine_meets_the_contract() {
        contract(&MemoryEngine::default());
    }

    #[test]
    fn rocksdb_engine_meets_the_contract_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = RocksEngine::open(dir.path(), false).unwrap();
            contract(&engine);
        }
        let engine = RocksEngine::open(dir.path(), false).unwrap();
        assert_eq!(engine.get(Keyspace::Data, b"p2k1").unwrap(), Some(b"v3".to_vec()));
    }
}
