//! Version vectors: the causal context a client has seen (`dvvset:vector()`, output of `join`).

use super::Actor;

/// A causal context: what a client has seen. Sorted by actor, no duplicate actors, no zero
/// counters.
///
/// `(actor, n)` means "every event of `actor` numbered 1..=n has been seen". A put carrying
/// this context supersedes exactly the values whose dots it covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionVector {
    /// Sorted strictly by actor, every counter >= 1: the canonical form, so that equal
    /// histories compare and encode equal.
    entries: Vec<(Actor, u64)>,
}

impl VersionVector {
    /// The empty context (nothing seen): a put with it is a blind write.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// Builds a vector from `(actor, counter)` pairs in any order: duplicates keep the larger
    /// counter and zero counters are dropped (they say nothing), so the result is canonical.
    pub fn from_entries(pairs: impl IntoIterator<Item = (Actor, u64)>) -> VersionVector {
        let mut entries: Vec<(Actor, u64)> = pairs.into_iter().filter(|&(_, n)| n > 0).collect();
        entries.sort_unstable();
        // After sorting, the last pair of each actor holds its largest counter.
        let mut canonical: Vec<(Actor, u64)> = Vec::with_capacity(entries.len());
        for (actor, n) in entries {
            match canonical.last_mut() {
                Some(last) if last.0 == actor => last.1 = n,
                _ => canonical.push((actor, n)),
            }
        }
        VersionVector { entries: canonical }
    }

    /// Wraps entries already known to be canonical (sorted strictly by actor, counters >= 1).
    /// Callers inside this module guarantee it; `debug_assert` catches mistakes in tests.
    pub(super) fn from_canonical(entries: Vec<(Actor, u64)>) -> VersionVector {
        debug_assert!(entries.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0)));
        debug_assert!(entries.iter().all(|&(_, n)| n > 0));
        VersionVector { entries }
    }

    /// The `(actor, counter)` pairs, sorted by actor.
    pub fn entries(&self) -> &[(Actor, u64)] {
        &self.entries
    }

    /// True when nothing has been seen (a blind write's context).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counter for `actor`: how many of its events are covered (0 if none).
    pub fn get(&self, actor: Actor) -> u64 {
        match self.entries.binary_search_by_key(&actor, |&(a, _)| a) {
            Ok(i) => self.entries.get(i).map_or(0, |&(_, n)| n),
            Err(_) => 0,
        }
    }

    /// True when `self` has seen everything `other` has (`self >= other` pointwise; equal
    /// vectors descend each other).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|&(actor, n)| self.get(actor) >= n)
    }

    /// Pointwise maximum: the context that has seen what either has seen.
    pub fn merge(&self, other: &VersionVector) -> VersionVector {
        VersionVector::from_entries(self.entries.iter().chain(other.entries.iter()).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_entries_is_canonical() {
        let vv = VersionVector::from_entries([(3, 1), (1, 2), (3, 5), (2, 0), (1, 1)]);
        assert_eq!(vv.entries(), &[(1, 2), (3, 5)]);
        assert_eq!(vv.get(3), 5);
        assert_eq!(vv.get(2), 0);
        assert!(VersionVector::from_entries([(7, 0)]).is_empty());
    }

    #[test]
    fn descends_is_pointwise() {
        let a = VersionVector::from_entries([(1, 2), (2, 1)]);
        let b = VersionVector::from_entries([(1, 1)]);
        let c = VersionVector::from_entries([(1, 1), (3, 1)]);
        assert!(a.descends(&b));
        assert!(!b.descends(&a));
        assert!(a.descends(&a));
        assert!(!a.descends(&c) && !c.descends(&a));
        assert!(a.descends(&VersionVector::new()));
        assert_eq!(a.merge(&c).entries(), &[(1, 2), (2, 1), (3, 1)]);
    }
}
