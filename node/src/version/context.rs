//! Sealed client contexts: a version vector made opaque and tamper-evident with HMAC-SHA256.
//!
//! A client gets a context from `get` and hands it back on `put`/`delete`; the write then
//! supersedes exactly what the context covers. A context that was altered, cut short, or taken
//! from another key would silently supersede the wrong values (or none), so it is sealed:
//!
//! ```text
//! sealed = 0x01 vector tag        ; vector as in `codec`, tag = 16 bytes
//! tag    = HMAC-SHA256(secret, 0x01 || u64be(key.len()) || key || vector)[..16]
//! ```
//!
//! The key is inside the MAC (length-prefixed, so key/vector boundaries cannot shift) and not
//! in the sealed bytes. A 128-bit truncated tag is ample against forgery (RFC 2104 section 5
//! allows truncation to half the hash). An empty context means "nothing seen" (a blind write).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::codec::{decode_vector_prefix, VersionError};
use super::VersionVector;

type HmacSha256 = Hmac<Sha256>;

/// The format byte this build seals with and accepts.
const SEAL_FORMAT: u8 = 1;

/// Bytes of HMAC-SHA256 output kept in a sealed context.
const TAG_LEN: usize = 16;

/// Why a context presented by a client cannot be used. Nothing was written; every message says
/// what the client should do.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ContextError {
    /// The first byte is not a format this build issues: not a context at all, or from a newer
    /// build.
    #[error(
        "the context has unknown format {found:#04x} (this cluster issues format {supported}): \
         it is not a context returned by a read; pass the context exactly as a read returned it, \
         or read the key again and use the context that read returns"
    )]
    UnknownFormat {
        /// The first byte found.
        found: u8,
        /// The format this build issues.
        supported: u8,
    },
    /// The context ends before its end: it was cut when copied.
    #[error(
        "the context is truncated ({len} bytes): pass the whole context exactly as a read \
         returned it, or read the key again and use the context that read returns"
    )]
    Truncated {
        /// Length of the context received.
        len: usize,
    },
    /// The context's structure is invalid (corrupted or hand-made).
    #[error(
        "the context is malformed ({0}): pass the context exactly as a read returned it, or read \
         the key again and use the context that read returns"
    )]
    Malformed(VersionError),
    /// The structure is fine but the seal does not match this key and this cluster's secret.
    #[error(
        "the context is not valid for this key: it was altered, taken from another key, or \
         issued by a cluster with a different secret; read the key again and use the context \
         that read returns"
    )]
    NotValidForKey,
}

/// Contexts are opaque to clients and sealed so that a malformed, truncated or forged one (or
/// one taken from another key) is a clear error, never a panic or silent loss.
///
/// Every node of a cluster must share the secret, since any node may coordinate the write that
/// presents a context another node issued.
#[derive(Clone)]
pub struct ContextSealer {
    /// HMAC state already keyed with the cluster secret; cloned per use so the key schedule
    /// is computed once.
    mac: HmacSha256,
}

impl std::fmt::Debug for ContextSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("ContextSealer { .. }")
    }
}

impl ContextSealer {
    /// A sealer keyed with the cluster secret (the HMAC-SHA256 key; any length is accepted,
    /// 32 random bytes are right).
    pub fn new(secret: &[u8]) -> ContextSealer {
        // HMAC accepts keys of every length (long keys are hashed), so this cannot fail.
        #[allow(clippy::expect_used)]
        let mac = <HmacSha256 as Mac>::new_from_slice(secret)
            .expect("HMAC-SHA256 accepts keys of any length");
        ContextSealer { mac }
    }

    /// Seals `vv` for `key`: format byte, encoded vector, then a 16-byte truncated HMAC over
    /// (format byte, key length, key, vector bytes).
    pub fn seal(&self, key: &[u8], vv: &VersionVector) -> Vec<u8> {
        let body = vv.encode();
        let tag = self.mac_for(key, &body).finalize().into_bytes();
        let mut out = Vec::with_capacity(1 + body.len() + TAG_LEN);
        out.push(SEAL_FORMAT);
        out.extend_from_slice(&body);
        out.extend(tag.iter().take(TAG_LEN));
        out
    }

    /// Opens a context a client presented with a write to `key`. Empty input = empty context
    /// (blind write). Errors say what was wrong and what to do.
    pub fn open(&self, key: &[u8], sealed: &[u8]) -> Result<VersionVector, ContextError> {
        let Some((&format, rest)) = sealed.split_first() else {
            return Ok(VersionVector::new());
        };
        if format != SEAL_FORMAT {
            return Err(ContextError::UnknownFormat { found: format, supported: SEAL_FORMAT });
        }
        let truncated = ContextError::Truncated { len: sealed.len() };
        // Parse the vector first so a cut-off context is reported as truncated, not forged.
        let (vv, used) = decode_vector_prefix(rest).map_err(|e| match e {
            VersionError::Truncated { .. } | VersionError::LengthBeyondInput { .. } => {
                truncated.clone()
            }
            other => ContextError::Malformed(other),
        })?;
        let (body, tag) = rest.split_at_checked(used).ok_or_else(|| truncated.clone())?;
        if tag.len() < TAG_LEN {
            return Err(truncated);
        }
        if tag.len() > TAG_LEN {
            return Err(ContextError::Malformed(VersionError::TrailingBytes {
                extra: tag.len() - TAG_LEN,
                offset: sealed.len() - (tag.len() - TAG_LEN),
            }));
        }
        // Constant-time comparison: no timing oracle for forging a tag byte by byte.
        self.mac_for(key, body)
            .verify_truncated_left(tag)
            .map_err(|_| ContextError::NotValidForKey)?;
        Ok(vv)
    }

    /// The MAC over (format byte, key length, key, vector bytes), not yet finalised.
    fn mac_for(&self, key: &[u8], body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(&[SEAL_FORMAT]);
        mac.update(&u64::try_from(key.len()).unwrap_or(u64::MAX).to_be_bytes());
        mac.update(key);
        mac.update(body);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv() -> VersionVector {
        VersionVector::from_entries([(0xdead_beef, 3), (0x1234, 9), (u64::MAX, 1)])
    }

    #[test]
    fn round_trip() {
        let s = ContextSealer::new(b"cluster secret");
        let sealed = s.seal(b"cart:42", &vv());
        assert_eq!(sealed.len(), 1 + vv().encode().len() + TAG_LEN);
        assert_eq!(s.open(b"cart:42", &sealed), Ok(vv()));
        let empty = s.seal(b"cart:42", &VersionVector::new());
        assert_eq!(s.open(b"cart:42", &empty), Ok(VersionVector::new()));
    }

    #[test]
    fn empty_input_is_a_blind_write() {
        let s = ContextSealer::new(b"k");
        assert_eq!(s.open(b"any", &[]), Ok(VersionVector::new()));
    }

    #[test]
    fn flipping_any_bit_of_any_byte_fails() {
        let s = ContextSealer::new(b"cluster secret");
        let sealed = s.seal(b"cart:42", &vv());
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut forged = sealed.clone();
                if let Some(b) = forged.get_mut(i) {
                    *b ^= 1 << bit;
                }
                assert!(s.open(b"cart:42", &forged).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn context_of_another_key_or_secret_is_rejected() {
        let s = ContextSealer::new(b"cluster secret");
        let sealed = s.seal(b"cart:42", &vv());
        assert_eq!(s.open(b"cart:43", &sealed), Err(ContextError::NotValidForKey));
        assert_eq!(s.open(b"", &sealed), Err(ContextError::NotValidForKey));
        let other = ContextSealer::new(b"another cluster");
        assert_eq!(other.open(b"cart:42", &sealed), Err(ContextError::NotValidForKey));
        let msg = ContextError::NotValidForKey.to_string();
        assert!(msg.contains("read the key again"), "{msg}");
    }

    #[test]
    fn key_length_prefix_prevents_boundary_shifts() {
        // Key "ab" + vector bytes vs key "a" + "b" + vector bytes must not collide: the vector
        // bytes would differ anyway, but the length prefix makes it structural.
        let s = ContextSealer::new(b"x");
        let sealed = s.seal(b"ab", &VersionVector::new());
        assert_eq!(s.open(b"a", &sealed), Err(ContextError::NotValidForKey));
    }

    #[test]
    fn garbage_and_truncation_give_the_right_error() {
        let s = ContextSealer::new(b"cluster secret");
        let sealed = s.seal(b"cart:42", &vv());
        assert!(matches!(
            s.open(b"cart:42", b"hello"),
            Err(ContextError::UnknownFormat { found: b'h', supported: 1 })
        ));
        for len in 1..sealed.len() {
            let cut = sealed.get(..len).unwrap_or_default();
            assert_eq!(s.open(b"cart:42", cut), Err(ContextError::Truncated { len }), "len {len}");
        }
        let mut long = sealed.clone();
        long.push(0);
        assert!(matches!(
            s.open(b"cart:42", &long),
            Err(ContextError::Malformed(VersionError::TrailingBytes { extra: 1, .. }))
        ));
        // Structurally invalid vector (zero counter) under a format byte.
        let mut bad = vec![1, 1, 1];
        bad.extend_from_slice(&5u64.to_be_bytes());
        bad.push(0);
        bad.extend_from_slice(&[0; TAG_LEN]);
        assert!(matches!(s.open(b"cart:42", &bad), Err(ContextError::Malformed(_))));
        assert!(s.open(b"cart:42", &[1, 0]).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        assert_eq!(format!("{:?}", ContextSealer::new(b"hunter2")), "ContextSealer { .. }");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_input_never_panics_nor_verifies(
            bytes in proptest::collection::vec(any::<u8>(), 0..120),
            key in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let s = ContextSealer::new(b"secret");
            match s.open(&key, &bytes) {
                Ok(vv) => prop_assert!(bytes.is_empty() && vv.is_empty()),
                Err(_) => prop_assert!(!bytes.is_empty()),
            }
        }

        #[test]
        fn seal_open_round_trips(
            pairs in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..8),
            key in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let s = ContextSealer::new(b"secret");
            let vv = VersionVector::from_entries(pairs);
            prop_assert_eq!(s.open(&key, &s.seal(&key, &vv)), Ok(vv));
        }
    }
}
