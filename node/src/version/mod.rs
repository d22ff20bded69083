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
//! **The actor rule (no reused dots).** A dot `(actor, n)` names one write forever: a replica
//! that has seen `(a, n)` discards any other value arriving under that dot as already seen. So
//! an actor must never issue a dot twice, and a node whose data rolled back (a crash with
//! `sync_writes = false` losing the last writes, a data directory restored from a backup or a
//! copy) would issue again dots it already issued, and the other replicas would discard the new,
//! acknowledged writes as seen (Riak's KV679). Hence: *a node writes under the actor of its
//! last run only if that run stopped cleanly on this very directory; after any other stop, and
//! on any copy or restore, it writes under a fresh random actor.* A fresh actor's dots are new,
//! so they meet the old ones as concurrent (siblings or superseded by context), never as
//! duplicates. `storage::lineage` applies the rule (a clean-stop record plus a marker file
//! whose inode, change time and token a copy cannot reproduce); the laws with actor changes
//! are property-tested in `laws.rs`.
//!
//! **Per-key epochs.** Reaping a tombstone (or dropping a partition) makes a replica forget a
//! key's history while another replica may still hold it, so a write coordinated on the
//! forgetting replica must not count under an actor whose counters it no longer knows: its
//! first dot would be one the other replica has seen (KV679 again, through reaping). So a
//! coordinator writes a key under one of its own actors already in its local clock of the key
//! (it knows that actor's highest counter: all its dots were stored locally first), and when
//! there is none, under a fresh epoch of its actor ([`EPOCH_BITS`]), from a counter persisted
//! with fsync ahead of use, so no epoch is ever issued twice. A key's vector thus still has
//! one entry per node that coordinated it (per reaping, at most one more).
//!
//! Growth: each fresh actor adds one entry to the vectors of the keys it then coordinates.
//! Clean restarts (rollouts, upgrades) keep the actor, so entries accumulate only with crashes
//! and restores, a few per node per year, each about 10 bytes per key written afterwards.
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

/// Identifies who created an event: a random u64 chosen by a node when its data directory is
/// new, and again whenever the directory may have rolled back (see the actor rule above).
pub type Actor = u64;

/// Low bits of an actor that name one of its node's per-key epochs (see the actor rule): the
/// high 40 bits are the node's, the low 24 an epoch.
pub const EPOCH_BITS: u32 = 24;

/// The actor a node whose actor is `node` writes a key under, given the key's local clock:
/// one of the node's own actors (same high bits) already in it, the one with the highest
/// counter; `None` when there is none and the caller must take a fresh epoch.
pub fn own_actor_in(local: &Clock, node: Actor) -> Option<Actor> {
    local
        .context()
        .entries()
        .iter()
        .filter(|(a, _)| a >> EPOCH_BITS == node >> EPOCH_BITS)
        .max_by_key(|(a, n)| (*n, *a))
        .map(|(a, _)| *a)
}

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
