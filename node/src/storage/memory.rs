//! In-memory engine: a `BTreeMap` per keyspace behind a lock. For tests and throw-away nodes;
//! everything is lost when the process exits.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::RwLock;

use super::{Budget, Engine, Entries, Keyspace, StorageError, WriteOp};

/// One keyspace: ordered keys to values.
type Space = BTreeMap<Vec<u8>, Vec<u8>>;

/// See the module docs.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    spaces: RwLock<HashMap<Keyspace, Space>>,
}

impl Engine for MemoryEngine {
    fn get(&self, space: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let spaces = self.spaces.read().map_err(|_| StorageError("lock poisoned".into()))?;
        Ok(spaces.get(&space).and_then(|m| m.get(key).cloned()))
    }

    fn write(&self, ops: Vec<WriteOp>) -> Result<(), StorageError> {
        let mut spaces = self.spaces.write().map_err(|_| StorageError("lock poisoned".into()))?;
        for op in ops {
            match op {
                WriteOp::Put { space, key, value } => {
                    spaces.entry(space).or_default().insert(key, value);
                }
                WriteOp::Delete { space, key } => {
                    spaces.entry(space).or_default().remove(&key);
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        space: Keyspace,
        prefix: &[u8],
        after: Option<&[u8]>,
        budget: Budget,
    ) -> Result<Entries, StorageError> {
        let spaces = self.spaces.read().map_err(|_| StorageError("lock poisoned".into()))?;
        let Some(map) = spaces.get(&space) else { return Ok(Vec::new()) };
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let mut out = Vec::new();
        let mut used = 0;
        for (k, v) in
            map.range((start, Bound::Unbounded)).take_while(|(k, _)| k.starts_with(prefix))
        {
            let size = k.len() + v.len();
            if !budget.admits(out.len(), used, size) {
                break;
            }
            used += size;
            out.push((k.clone(), v.clone()));
        }
        Ok(out)
    }

    fn approximate_len(&self, space: Keyspace) -> u64 {
        self.spaces.read().map(|s| s.get(&space).map_or(0, |m| m.len() as u64)).unwrap_or(0)
    }
}
