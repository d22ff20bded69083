//! Binary encoding of clocks and version vectors: compact, canonical, safe on hostile input.
//!
//! Format version 1 (all integers marked varint are unsigned LEB128, minimal length; actors
//! are fixed 8-byte big-endian because they are random and a varint would be longer):
//!
//! ```text
//! clock   = 0x01 varint(n_entries) entry* varint(n_anonymous) value*
//! entry   = actor:u64be varint(counter >= 1) varint(n_values <= counter) value*
//! value   = 0x00                              ; tombstone
//!         | 0x01 varint(len) byte{len}        ; data
//! vector  = 0x01 varint(n_entries) (actor:u64be varint(counter >= 1))*
//! ```
//!
//! Entries are strictly increasing by actor, an entry's values are newest first, anonymous
//! values strictly increasing by [`Value`]'s order. The decoder accepts exactly the canonical
//! encodings (minimal varints, sorted actors, no trailing bytes), so `encode(decode(b)) == b`
//! whenever decoding succeeds and equal states have equal bytes (Merkle hashes rely on it).
//!
//! Hostile lengths cannot make the decoder allocate more than the input's size: every count is
//! capped by a hard limit and every preallocation by what the remaining bytes could hold.

use super::dvvset::Entry;
use super::{Actor, Clock, Value, VersionVector};

/// The format version byte this build writes and reads.
pub(super) const FORMAT_VERSION: u8 = 1;

/// Most actors one clock or vector may list when decoded (every node that ever coordinated a
/// write to the key, including data directories since wiped).
pub const MAX_ACTORS: usize = 1 << 16;

/// Most values (siblings, tombstones included) one decoded clock may hold; the coordinator's
/// sibling limit is far lower, this only bounds hostile input.
pub const MAX_VALUES: usize = 1 << 16;

/// Largest single value a decoded clock may hold, in bytes; object size limits are far lower.
pub const MAX_VALUE_BYTES: usize = 1 << 30;

const TAG_TOMBSTONE: u8 = 0;
const TAG_DATA: u8 = 1;

/// Smallest encoding of one clock entry: actor, 1-byte counter, 1-byte value count.
const MIN_ENTRY_BYTES: usize = 8 + 1 + 1;
/// Smallest encoding of one vector entry: actor, 1-byte counter.
const MIN_VECTOR_ENTRY_BYTES: usize = 8 + 1;
/// Smallest encoding of one value: a tombstone tag.
const MIN_VALUE_BYTES: usize = 1;

/// Why bytes are not a valid clock or version vector. Decoding never changes any state; the
/// bytes were cut short, corrupted, or written by an incompatible build.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VersionError {
    /// The input ended in the middle of a field.
    #[error(
        "version data ends early: expected {what} at byte {offset}; the bytes were cut short \
         (partial write or truncated message)"
    )]
    Truncated {
        /// The field that was being read.
        what: &'static str,
        /// Where it should have started.
        offset: usize,
    },
    /// The leading format byte is not one this build knows.
    #[error(
        "version data has format version {found}, this build reads only version {supported}: \
         it was written by a newer build or is not version data"
    )]
    UnknownFormat {
        /// The byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// A varint is longer than needed or does not fit in 64 bits.
    #[error("version data has an invalid varint for {what} at byte {offset} (overlong or above 64 bits)")]
    BadVarint {
        /// The field that was being read.
        what: &'static str,
        /// Where the varint starts.
        offset: usize,
    },
    /// A count is above its hard limit.
    #[error("version data declares {count} {what}, above the limit of {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The declared count.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// A length prefix claims more bytes than the input has left.
    #[error("version data declares a {what} of {len} bytes at byte {offset} but only {remaining} bytes remain")]
    LengthBeyondInput {
        /// The field whose length was declared.
        what: &'static str,
        /// The declared length.
        len: u64,
        /// Where the length prefix starts.
        offset: usize,
        /// Bytes left after the prefix.
        remaining: usize,
    },
    /// Actors are not strictly increasing (unsorted or duplicated).
    #[error(
        "version data lists actor {actor:#018x} after actor {previous:#018x}: actors must be \
         strictly increasing (sorted, no duplicates)"
    )]
    UnsortedActors {
        /// The actor listed before.
        previous: Actor,
        /// The actor out of place.
        actor: Actor,
    },
    /// An entry has counter zero, which no event can produce.
    #[error("version data has a zero counter for actor {actor:#018x}")]
    ZeroCounter {
        /// The actor concerned.
        actor: Actor,
    },
    /// An entry lists more live values than its actor created events.
    #[error(
        "version data lists {values} values for actor {actor:#018x} whose counter is {counter}: \
         an actor cannot have more live values than events"
    )]
    ValuesExceedCounter {
        /// The actor concerned.
        actor: Actor,
        /// The declared number of values.
        values: u64,
        /// The actor's counter.
        counter: u64,
    },
    /// A value starts with an unknown tag.
    #[error("version data has unknown value tag {tag} at byte {offset} (0 = tombstone, 1 = data)")]
    BadValueTag {
        /// The tag found.
        tag: u8,
        /// Where it is.
        offset: usize,
    },
    /// Anonymous values are not strictly increasing (so not canonical).
    #[error("version data lists anonymous value {index} out of order or duplicated")]
    UnsortedAnonymousValues {
        /// Position of the offending value.
        index: usize,
    },
    /// Bytes follow a complete encoding.
    #[error("version data has {extra} unexpected bytes after its end at byte {offset}")]
    TrailingBytes {
        /// How many bytes are left over.
        extra: usize,
        /// Where the encoding ended.
        offset: usize,
    },
}

type Result<T> = std::result::Result<T, VersionError>;

impl Clock {
    /// Canonical binary encoding (format in the module doc of `codec`).
    ///
    /// A clock beyond the decoder's limits ([`MAX_ACTORS`], [`MAX_VALUES`],
    /// [`MAX_VALUE_BYTES`]) encodes but will not decode: callers enforce sibling and size limits
    /// far below them before storing.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.value_bytes() + 16 * self.sibling_count());
        out.push(FORMAT_VERSION);
        put_len(&mut out, self.entries.len());
        for entry in &self.entries {
            out.extend_from_slice(&entry.actor.to_be_bytes());
            put_varint(&mut out, entry.counter);
            put_len(&mut out, entry.values.len());
            for value in &entry.values {
                put_value(&mut out, value);
            }
        }
        put_len(&mut out, self.anonymous.len());
        for value in &self.anonymous {
            put_value(&mut out, value);
        }
        out
    }

    /// Decodes [`Clock::encode`]'s output. Never panics; rejects anything not canonical:
    /// truncation, trailing bytes, unknown format, unsorted or duplicate actors, zero counters,
    /// more values than a counter allows, overlong varints, counts or lengths beyond the
    /// limits or beyond the input.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Clock, VersionError> {
        let mut r = Reader::new(bytes);
        r.format()?;
        let n_entries = r.count("actor entries", MAX_ACTORS, MIN_ENTRY_BYTES)?;
        let mut entries: Vec<Entry> = Vec::with_capacity(r.capacity(n_entries, MIN_ENTRY_BYTES));
        let mut total_values = 0usize;
        let mut previous: Option<Actor> = None;
        for _ in 0..n_entries {
            let (actor, counter) = r.actor_and_counter(&mut previous)?;
            let n_values = r.count("values of one actor", MAX_VALUES, MIN_VALUE_BYTES)?;
            if u64::try_from(n_values).map_or(true, |n| n > counter) {
                return Err(VersionError::ValuesExceedCounter {
                    actor,
                    values: u64::try_from(n_values).unwrap_or(u64::MAX),
                    counter,
                });
            }
            total_values = r.add_values(total_values, n_values)?;
            let mut values = Vec::with_capacity(r.capacity(n_values, MIN_VALUE_BYTES));
            for _ in 0..n_values {
                values.push(r.value()?);
            }
            entries.push(Entry { actor, counter, values });
        }
        let n_anonymous = r.count("anonymous values", MAX_VALUES, MIN_VALUE_BYTES)?;
        r.add_values(total_values, n_anonymous)?;
        let mut anonymous: Vec<Value> =
            Vec::with_capacity(r.capacity(n_anonymous, MIN_VALUE_BYTES));
        for index in 0..n_anonymous {
            let value = r.value()?;
            if anonymous.last().is_some_and(|last| *last >= value) {
                return Err(VersionError::UnsortedAnonymousValues { index });
            }
            anonymous.push(value);
        }
        r.finish()?;
        Ok(Clock { entries, anonymous })
    }
}

impl VersionVector {
    /// Canonical binary encoding (format in the module doc of `codec`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 12 * self.entries().len());
        out.push(FORMAT_VERSION);
        put_len(&mut out, self.entries().len());
        for &(actor, counter) in self.entries() {
            out.extend_from_slice(&actor.to_be_bytes());
            put_varint(&mut out, counter);
        }
        out
    }

    /// Decodes [`VersionVector::encode`]'s output. Never panics; rejects anything not
    /// canonical, including trailing bytes.
    pub fn decode(bytes: &[u8]) -> std::result::Result<VersionVector, VersionError> {
        let (vv, used) = decode_vector_prefix(bytes)?;
        Reader { bytes, pos: used }.finish()?;
        Ok(vv)
    }
}

/// Decodes a version vector at the start of `bytes` and says how many bytes it took, so that
/// a sealed context can tell a truncated vector from a missing tag.
pub(super) fn decode_vector_prefix(bytes: &[u8]) -> Result<(VersionVector, usize)> {
    let mut r = Reader::new(bytes);
    r.format()?;
    let n = r.count("vector entries", MAX_ACTORS, MIN_VECTOR_ENTRY_BYTES)?;
    let mut entries = Vec::with_capacity(r.capacity(n, MIN_VECTOR_ENTRY_BYTES));
    let mut previous: Option<Actor> = None;
    for _ in 0..n {
        entries.push(r.actor_and_counter(&mut previous)?);
    }
    Ok((VersionVector::from_canonical(entries), r.pos))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        // Low 7 bits per byte, high bit set while more bytes follow (LEB128).
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    put_varint(out, u64::try_from(len).unwrap_or(u64::MAX));
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Tombstone => out.push(TAG_TOMBSTONE),
        Value::Data(bytes) => {
            out.push(TAG_DATA);
            put_len(out, bytes.len());
            out.extend_from_slice(bytes);
        }
    }
}

/// A cursor over untrusted input: every read is bounds-checked and reports where it failed.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8> {
        let b =
            *self.bytes.get(self.pos).ok_or(VersionError::Truncated { what, offset: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(len);
        let slice = end
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or(VersionError::Truncated { what, offset: self.pos })?;
        self.pos += len;
        Ok(slice)
    }

    fn format(&mut self) -> Result<()> {
        match self.byte("the format version byte")? {
            FORMAT_VERSION => Ok(()),
            found => Err(VersionError::UnknownFormat { found, supported: FORMAT_VERSION }),
        }
    }

    /// Minimal LEB128, at most 10 bytes, no bits above 64.
    fn varint(&mut self, what: &'static str) -> Result<u64> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10u32 {
            let byte = self.byte(what)?;
            let low = u64::from(byte & 0x7f);
            // The 10th byte may only carry the 64th bit.
            if i == 9 && low > 1 {
                return Err(VersionError::BadVarint { what, offset: start });
            }
            value |= low << (7 * i);
            if byte & 0x80 == 0 {
                // A zero last byte after the first means the encoding was padded.
                if i > 0 && byte == 0 {
                    return Err(VersionError::BadVarint { what, offset: start });
                }
                return Ok(value);
            }
        }
        Err(VersionError::BadVarint { what, offset: start })
    }

    /// A count, checked against its hard limit and against what the rest of the input could
    /// hold at `min_item_bytes` each.
    fn count(&mut self, what: &'static str, max: usize, min_item_bytes: usize) -> Result<usize> {
        let offset = self.pos;
        let count = self.varint(what)?;
        let n = usize::try_from(count).ok().filter(|&n| n <= max).ok_or(VersionError::TooMany {
            what,
            count,
            max,
        })?;
        if n.saturating_mul(min_item_bytes) > self.remaining() {
            return Err(VersionError::LengthBeyondInput {
                what,
                len: count,
                offset,
                remaining: self.remaining(),
            });
        }
        Ok(n)
    }

    /// How much to preallocate for `n` items: never more than the remaining input could hold.
    fn capacity(&self, n: usize, min_item_bytes: usize) -> usize {
        n.min(self.remaining() / min_item_bytes.max(1))
    }

    fn add_values(&self, total: usize, more: usize) -> Result<usize> {
        let sum = total.saturating_add(more);
        if sum > MAX_VALUES {
            return Err(VersionError::TooMany {
                what: "values in total",
                count: u64::try_from(sum).unwrap_or(u64::MAX),
                max: MAX_VALUES,
            });
        }
        Ok(sum)
    }

    /// An actor (strictly after `previous`) and its non-zero counter.
    fn actor_and_counter(&mut self, previous: &mut Option<Actor>) -> Result<(Actor, u64)> {
        let raw = self.take(8, "an actor id")?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(raw);
        let actor = u64::from_be_bytes(buf);
        if let Some(prev) = *previous {
            if actor <= prev {
                return Err(VersionError::UnsortedActors { previous: prev, actor });
            }
        }
        *previous = Some(actor);
        let counter = self.varint("a counter")?;
        if counter == 0 {
            return Err(VersionError::ZeroCounter { actor });
        }
        Ok((actor, counter))
    }

    fn value(&mut self) -> Result<Value> {
        let offset = self.pos;
        match self.byte("a value tag")? {
            TAG_TOMBSTONE => Ok(Value::Tombstone),
            TAG_DATA => {
                let len_offset = self.pos;
                let len = self.varint("a value length")?;
                let n = usize::try_from(len).ok().filter(|&n| n <= MAX_VALUE_BYTES).ok_or(
                    VersionError::TooMany { what: "value bytes", count: len, max: MAX_VALUE_BYTES },
                )?;
                if n > self.remaining() {
                    return Err(VersionError::LengthBeyondInput {
                        what: "value",
                        len,
                        offset: len_offset,
                        remaining: self.remaining(),
                    });
                }
                Ok(Value::Data(self.take(n, "value bytes")?.to_vec()))
            }
            tag => Err(VersionError::BadValueTag { tag, offset }),
        }
    }

    fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(VersionError::TrailingBytes { extra, offset: self.pos }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            1 => Just(Value::Tombstone),
            4 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Data),
        ]
    }

    /// Any canonical clock (not only reachable ones: the codec must carry every state).
    fn clock() -> impl Strategy<Value = Clock> {
        let entry = (1u64..=u64::MAX, proptest::collection::vec(value(), 0..4)).prop_map(
            |(counter, values)| {
                let len = u64::try_from(values.len()).unwrap_or(u64::MAX);
                (counter.max(len), values)
            },
        );
        (
            proptest::collection::btree_map(any::<u64>(), entry, 0..5),
            proptest::collection::btree_set(value(), 0..3),
        )
            .prop_map(|(entries, anonymous): (BTreeMap<_, _>, BTreeSet<_>)| Clock {
                entries: entries
                    .into_iter()
                    .map(|(actor, (counter, values))| Entry { actor, counter, values })
                    .collect(),
                anonymous: anonymous.into_iter().collect(),
            })
    }

    fn vector() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..6)
            .prop_map(VersionVector::from_entries)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn clock_round_trips(c in clock()) {
            let bytes = c.encode();
            prop_assert_eq!(Clock::decode(&bytes), Ok(c));
        }

        #[test]
        fn vector_round_trips(vv in vector()) {
            let bytes = vv.encode();
            prop_assert_eq!(VersionVector::decode(&bytes), Ok(vv));
        }

        #[test]
        fn every_proper_prefix_is_rejected(c in clock()) {
            let bytes = c.encode();
            for len in 0..bytes.len() {
                prop_assert!(Clock::decode(bytes.get(..len).unwrap_or_default()).is_err());
            }
        }

        /// Arbitrary bytes never panic, and whatever decodes is canonical.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(c) = Clock::decode(&bytes) {
                prop_assert_eq!(c.encode(), bytes.clone());
            }
            if let Ok(vv) = VersionVector::decode(&bytes) {
                prop_assert_eq!(vv.encode(), bytes);
            }
        }

        /// Mutations of valid encodings reach deep into the decoder; same guarantees.
        #[test]
        fn mutated_encodings_never_panic(
            c in clock(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = c.encode();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                if let Some(slot) = bytes.get_mut(i) {
                    *slot = b;
                }
            }
            if let Ok(decoded) = Clock::decode(&bytes) {
                prop_assert_eq!(decoded.encode(), bytes);
            }
        }
    }

    #[test]
    fn empty_clock_encoding() {
        assert_eq!(Clock::new().encode(), [1, 0, 0]);
        assert_eq!(VersionVector::new().encode(), [1, 0]);
        assert_eq!(
            Clock::decode(&[]),
            Err(VersionError::Truncated { what: "the format version byte", offset: 0 })
        );
    }

    #[test]
    fn known_encoding() {
        let c = Clock::new()
            .update(&VersionVector::new(), Value::Data(b"hi".to_vec()), 0x0102)
            .update(&VersionVector::new(), Value::Tombstone, 0x0102);
        let expected = [
            1, // format
            1, // one entry
            0, 0, 0, 0, 0, 0, 1, 2, // actor
            2, // counter
            2, // two values
            0, // tombstone (newest)
            1, 2, b'h', b'i', // data
            0,    // no anonymous values
        ];
        assert_eq!(c.encode(), expected);
    }

    fn entry_bytes(actor: u64, counter: u8, n_values: u8) -> Vec<u8> {
        let mut b = actor.to_be_bytes().to_vec();
        b.push(counter);
        b.push(n_values);
        b
    }

    fn clock_bytes(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![1, u8::try_from(entries.len()).unwrap_or(0)];
        for e in entries {
            b.extend_from_slice(e);
        }
        b.push(0);
        b
    }

    #[test]
    fn rejects_non_canonical_or_hostile_input() {
        let err = |b: &[u8]| Clock::decode(b).err();
        assert!(matches!(err(&[2, 0, 0]), Some(VersionError::UnknownFormat { found: 2, .. })));
        assert!(matches!(err(&[1, 0, 0, 0]), Some(VersionError::TrailingBytes { extra: 1, .. })));
        // Unsorted and duplicate actors.
        let b = clock_bytes(&[entry_bytes(5, 1, 0), entry_bytes(3, 1, 0)]);
        assert!(matches!(err(&b), Some(VersionError::UnsortedActors { previous: 5, actor: 3 })));
        let b = clock_bytes(&[entry_bytes(5, 1, 0), entry_bytes(5, 1, 0)]);
        assert!(matches!(err(&b), Some(VersionError::UnsortedActors { .. })));
        // Zero counter; more values than the counter.
        assert!(matches!(
            err(&clock_bytes(&[entry_bytes(5, 0, 0)])),
            Some(VersionError::ZeroCounter { actor: 5 })
        ));
        let mut e = entry_bytes(5, 1, 2);
        e.extend_from_slice(&[0, 0]);
        assert!(matches!(
            err(&clock_bytes(&[e])),
            Some(VersionError::ValuesExceedCounter { values: 2, counter: 1, .. })
        ));
        // Overlong and oversized varints.
        assert!(matches!(err(&[1, 0x80, 0x00, 0]), Some(VersionError::BadVarint { .. })));
        let too_big = [1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(err(&too_big), Some(VersionError::BadVarint { .. })));
        // A count that the input cannot hold, and one above the hard limit.
        assert!(matches!(
            err(&[1, 0xff, 0xff, 0x03]),
            Some(VersionError::LengthBeyondInput { .. })
        ));
        let huge = [1, 0x80, 0x80, 0x80, 0x80, 0x10];
        assert!(matches!(err(&huge), Some(VersionError::TooMany { .. })));
        // A value claiming gigabytes.
        let mut e = entry_bytes(5, 1, 1);
        e.extend_from_slice(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(err(&clock_bytes(&[e])), Some(VersionError::TooMany { .. })));
        let mut e = entry_bytes(5, 1, 1);
        e.extend_from_slice(&[1, 0x80, 0x01]);
        assert!(matches!(err(&clock_bytes(&[e])), Some(VersionError::LengthBeyondInput { .. })));
        // Bad tag; unsorted anonymous values.
        let mut e = entry_bytes(5, 1, 1);
        e.push(7);
        assert!(matches!(err(&clock_bytes(&[e])), Some(VersionError::BadValueTag { tag: 7, .. })));
        assert!(matches!(
            err(&[1, 0, 2, 0, 0]),
            Some(VersionError::UnsortedAnonymousValues { index: 1 })
        ));
        // Vectors: same checks.
        let mut v = vec![1, 2];
        v.extend_from_slice(&7u64.to_be_bytes());
        v.push(1);
        v.extend_from_slice(&7u64.to_be_bytes());
        v.push(1);
        assert!(matches!(VersionVector::decode(&v), Err(VersionError::UnsortedActors { .. })));
        assert!(matches!(
            VersionVector::decode(&[1, 0, 9]),
            Err(VersionError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn varint_edges() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.varint("test"), Ok(v));
            assert_eq!(r.finish(), Ok(()));
        }
    }
}
