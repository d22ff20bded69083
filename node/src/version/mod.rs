//! Versions of a key: dotted version vector sets (DVVSet), sibling values, client contexts.
//!
//! The algorithm is the compact dotted version vector set of Almeida, Baquero, Gonçalves,
//! Preguiça and Fonte, "Scalable and Accurate Causality Tracking for Eventually Consistent
//! Stores" (DAIS 2014), exactly as Riak 2.0 ships it in `dvvset.erl` (riak_core, from
//! ricardobcl/Dotted-Version-Vectors). It keeps the Dynamo paper's semantics (concurrent writes
//! become siblings; a write carrying a context supersedes exactly what that context saw)
//! without the sibling explosion of server-id vector clocks and without client-id vector
//! clocks' growth.
//!
//! How the pieces map onto the store:
//! - [`Clock`] is the stored state of one key (`dvvset:clock()`); replicas merge with
//!   [`Clock::sync`] (read repair, hinted handoff, anti-entropy) and a coordinator applies a put
//!   or delete with [`Clock::update`] (`dvvset:update/3` applied to `dvvset:new/2`).
//! - [`VersionVector`] is what a client has seen (`dvvset:join/1`), returned by `get` as a
//!   context, sealed by [`ContextSealer`] so it is opaque and tamper-evident.
//! - A delete is an update whose value is [`Value::Tombstone`]; it obeys the same rules.
//!
//! Encodings (format version 1; varint = minimal unsigned LEB128, actor = 8 bytes big-endian;
//! decoders accept only canonical bytes, so equal states have equal bytes):
//!
//! ```text
//! clock   = 0x01 varint(n_entries) entry* varint(n_anonymous) value*
//! entry   = actor varint(counter >= 1) varint(n_values <= counter) value*   ; newest first
//! value   = 0x00 (tombstone) | 0x01 varint(len) byte{len} (data)
//! vector  = 0x01 varint(n_entries) (actor varint(counter >= 1))*
//! sealed  = 0x01 vector HMAC-SHA256(secret, 0x01 || u64be(key.len) || key || vector)[..16]
//! ```
//!
//! Everything here is pure: no I/O, no clocks, no randomness (actors are chosen by the caller).

mod codec;
mod context;
mod dvvset;
mod vector;

#[cfg(test)]
mod laws;

pub use codec::{VersionError, MAX_ACTORS, MAX_VALUES, MAX_VALUE_BYTES};
pub use context::{ContextError, ContextSealer};
pub use dvvset::Clock;
pub use vector::VersionVector;

/// Identifies who created an event: a random u64 chosen when a node's data directory is created
/// (so a node whose disk was wiped never reuses old dots).
pub type Actor = u64;

/// One sibling value of a key: the bytes a client wrote, or the marker a delete leaves behind.
///
/// The order (`Tombstone` after every `Data`, data bytes lexicographic) only serves to make
/// the canonical form of anonymous values deterministic; it says nothing about causality.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// Bytes written by a put.
    Data(Vec<u8>),
    /// Written by a delete: supersedes what the delete's context covered, like any write, so
    /// a concurrent put survives next to it as a sibling.
    Tombstone,
}

impl Value {
    /// The payload length in bytes (0 for a tombstone), used for object-size limits.
    pub fn byte_len(&self) -> usize {
        match self {
            Value::Data(bytes) => bytes.len(),
            Value::Tombstone => 0,
        }
    }

    /// True for [`Value::Tombstone`].
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Value::Tombstone)
    }
}
