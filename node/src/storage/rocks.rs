//! RocksDB engine: one database per node data directory, one column family per keyspace.
//! Writes go through the write-ahead log, so an acknowledged write survives `kill -9`; with
//! `sync_writes` the log is also fsynced, so it survives power loss.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions, DB,
};

use super::{Budget, Engine, Entries, Keyspace, StorageError, WriteOp};

/// See the module docs.
pub struct RocksEngine {
    db: DB,
    sync_writes: bool,
    /// The options the database was opened with: they hold its statistics (block cache hits,
    /// write stalls) for `/metrics`.
    opts: Options,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine").field("path", &self.db.path()).finish()
    }
}

fn err(e: rocksdb::Error) -> StorageError {
    StorageError(e.into_string())
}

/// Column-family options for point lookups (every get and every write's read-modify-write is
/// one): Bloom filters on the memtable and on each table file let a lookup skip the memtable
/// and the files that cannot hold the key instead of searching them.
fn cf_options() -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    let mut opts = Options::default();
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_block_based_table_factory(&table);
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_memtable_whole_key_filtering(true);
    opts
}

impl RocksEngine {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path, sync_writes: bool) -> Result<RocksEngine, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StorageError(format!("cannot create data directory {}: {e}", dir.display()))
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        // Tickers only (no timers): cache hits and stall time for `/metrics`, at a cost of a
        // few atomic increments per operation.
        opts.enable_statistics();
        opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
        let cfs = Keyspace::ALL.iter().map(|s| ColumnFamilyDescriptor::new(s.name(), cf_options()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
            StorageError(format!(
                "cannot open RocksDB in {}: {} (is another dynamo-node using this directory?)",
                dir.display(),
                e.into_string()
            ))
        })?;
        Ok(RocksEngine { db, sync_writes, opts })
    }

    /// Opens a database read-only (a checkpoint being restored); never writes to `dir`.
    pub fn open_read_only(dir: &Path) -> Result<RocksEngine, StorageError> {
        let opts = Options::default();
        let names = Keyspace::ALL.iter().map(|s| s.name());
        let db = DB::open_cf_for_read_only(&opts, dir, names, false).map_err(|e| {
            StorageError(format!(
                "cannot read the RocksDB files in {}: {}",
                dir.display(),
                e.into_string()
            ))
        })?;
        Ok(RocksEngine { db, sync_writes: false, opts })
    }

    fn cf(&self, space: Keyspace) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(space.name())
            .ok_or_else(|| StorageError(format!("column family {} is missing", space.name())))
    }

    /// One atomic batch, fsynced when `sync`.
    fn write_with(&self, ops: Vec<WriteOp>, sync: bool) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        for op in &ops {
            match op {
                WriteOp::Put { space, key, value } => batch.put_cf(self.cf(*space)?, key, value),
                WriteOp::Delete { space, key } => batch.delete_cf(self.cf(*space)?, key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo).map_err(err)
    }
}

impl Engine for RocksEngine {
    fn get(&self, space: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get_cf(self.cf(space)?, key).map_err(err)
    }

    fn write(&self, ops: Vec<WriteOp>) -> Result<(), StorageError> {
        self.write_with(ops, self.sync_writes)
    }

    fn write_durable(&self, ops: Vec<WriteOp>) -> Result<(), StorageError> {
        self.write_with(ops, true)
    }

    fn scan(
        &self,
        space: Keyspace,
        prefix: &[u8],
        after: Option<&[u8]>,
        budget: Budget,
    ) -> Result<Entries, StorageError> {
        let start = after.unwrap_or(prefix);
        let iter =
            self.db.iterator_cf(self.cf(space)?, IteratorMode::From(start, Direction::Forward));
        let mut out = Vec::new();
        let mut used = 0;
        for item in iter {
            let (k, v) = item.map_err(err)?;
            if !k.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|a| &*k == a) {
                continue;
            }
            let size = k.len() + v.len();
            if !budget.admits(out.len(), used, size) {
                break;
            }
            used += size;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        // Flushes the memtables first, so the table files hold every write applied so far.
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(err)?;
        checkpoint.create_checkpoint(dir).map_err(|e| {
            StorageError(format!(
                "cannot take a checkpoint in {}: {}",
                dir.display(),
                e.into_string()
            ))
        })
    }

    fn approximate_len(&self, space: Keyspace) -> u64 {
        self.cf(space)
            .ok()
            .and_then(|cf| {
                self.db.property_int_value_cf(cf, "rocksdb.estimate-num-keys").ok().flatten()
            })
            .unwrap_or(0)
    }

    fn stats(&self) -> crate::metrics::EngineStats {
        use rocksdb::properties as p;
        use rocksdb::statistics::Ticker;
        // Summed over the column families (each keyspace is one).
        let sum = |name: &p::PropName| -> u64 {
            Keyspace::ALL
                .iter()
                .filter_map(|s| self.cf(*s).ok())
                .filter_map(|cf| self.db.property_int_value_cf(cf, name).ok().flatten())
                .sum()
        };
        // RocksDB's default number of levels.
        let sst_files = (0..7).map(|level| sum(&p::num_files_at_level(level))).sum();
        crate::metrics::EngineStats {
            live_data_bytes: sum(p::ESTIMATE_LIVE_DATA_SIZE),
            sst_files,
            memtable_bytes: sum(p::CUR_SIZE_ALL_MEM_TABLES),
            pending_compaction_bytes: sum(p::ESTIMATE_PENDING_COMPACTION_BYTES),
            write_stopped: sum(p::IS_WRITE_STOPPED).min(1),
            write_stall_micros: self.opts.get_ticker_count(Ticker::StallMicros),
            block_cache_hits: self.opts.get_ticker_count(Ticker::BlockCacheHit),
            block_cache_misses: self.opts.get_ticker_count(Ticker::BlockCacheMiss),
            keys: Keyspace::ALL.iter().map(|s| self.approximate_len(*s)).sum(),
        }
    }
}
