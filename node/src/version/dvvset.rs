//! The dotted version vector set of one key (`dvvset.erl` from Riak / Almeida et al. 2014).
//!
//! A clock is a list of entries `(actor, counter, values)` sorted by actor, plus a list of
//! anonymous values. In an entry, `counter` is the number of events `actor` created for this
//! key and `values` are the live values of the newest of those events, newest first: the value
//! at position `i` has the dot `(actor, counter - i)`, and every dot `<= counter - values.len()`
//! is known and dead (superseded). This compact form is exact because the live dots of one
//! actor are always a contiguous suffix of its events.
//!
//! Anonymous values are values without a dot (`dvvset:new/1`). This store never creates them
//! (every write goes through [`Clock::update`], which gives the value a dot), but the format and
//! `sync` keep them with Riak's semantics so that the type is the complete DVVSet.

use super::{Actor, Value, VersionVector};

/// One actor's part of a clock: `dvvset:entries()` element `{Id, Counter, Values}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// The actor whose events these are.
    pub(super) actor: Actor,
    /// How many events `actor` created for this key (>= 1, >= `values.len()`).
    pub(super) counter: u64,
    /// Live values of the newest events, newest first (`values[i]` has dot `counter - i`).
    pub(super) values: Vec<Value>,
}

impl Entry {
    /// The highest dot of this actor that is known to be dead: dots `1..=floor` are
    /// superseded, dots `floor+1..=counter` are the live `values`.
    fn floor(&self) -> u64 {
        // `values.len() <= counter` is an invariant; saturate so a broken one cannot panic.
        self.counter.saturating_sub(len_u64(&self.values))
    }
}

/// The stored state of one key: DVVSet clock = entries (actor, counter, values newest first) +
/// anonymous values.
///
/// Canonical form (kept by every constructor, checked by `decode`): entries sorted strictly by
/// actor, counters >= 1, no entry with more values than its counter, anonymous values sorted
/// and without duplicates. Equal states therefore compare and encode equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    /// One entry per actor that ever wrote this key, sorted strictly by actor.
    pub(super) entries: Vec<Entry>,
    /// Values without a dot, sorted and deduplicated (Riak's `sets:from_list`, made
    /// deterministic).
    pub(super) anonymous: Vec<Value>,
}

impl Clock {
    /// The empty clock: no entries, no values (a key never written).
    pub fn new() -> Clock {
        Clock::default()
    }

    /// True when the clock has neither history nor values.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.anonymous.is_empty()
    }

    /// Merge two replicas' states (`dvvset:sync/2`): the causal histories are joined and a
    /// value is kept exactly when the other side has not superseded it, i.e. the result keeps
    /// exactly the values not dominated.
    ///
    /// Contract (the lattice laws anti-entropy, read repair and handoff rely on, checked by
    /// property tests over realistic histories):
    /// - commutative: `a.sync(b) == b.sync(a)`;
    /// - associative: `a.sync(b).sync(c) == a.sync(b.sync(c))`;
    /// - idempotent: `a.sync(a) == a`, and `a.sync(Clock::new()) == a`.
    ///
    /// Deviation from `dvvset.erl`, only reachable with hand-made states: when both sides have
    /// the same counter for an actor but different values at the same dots (impossible while
    /// actors are unique per data directory), Riak keeps the left side's; this keeps the
    /// smaller list so that the result is still commutative.
    pub fn sync(&self, other: &Clock) -> Clock {
        let anonymous = if self.less(other) {
            other.anonymous.clone()
        } else if other.less(self) {
            self.anonymous.clone()
        } else {
            let mut union: Vec<Value> =
                self.anonymous.iter().chain(other.anonymous.iter()).cloned().collect();
            union.sort_unstable();
            union.dedup();
            union
        };
        Clock { entries: sync_entries(&self.entries, &other.entries), anonymous }
    }

    /// The context covering everything in this clock (`dvvset:join/1`): what a client that
    /// read this state has seen.
    pub fn context(&self) -> VersionVector {
        VersionVector::from_canonical(self.entries.iter().map(|e| (e.actor, e.counter)).collect())
    }

    /// Coordinator-side write (`dvvset:update/3` applied to `dvvset:new/2`): a new value
    /// written with client context `ctx`, against this node's local clock `self`, creating the
    /// next event of `actor`. The result supersedes exactly the values covered by `ctx`; values
    /// not covered stay as siblings.
    ///
    /// `actor` must be the coordinating node's own actor and `self` its local state of the key:
    /// the new dot is one past the larger of `self`'s and `ctx`'s counters for `actor`, which is
    /// fresh only if no event of `actor` is missing from both (true when only this node's data
    /// directory ever creates events of `actor` and it stores each before acknowledging it).
    pub fn update(&self, ctx: &VersionVector, value: Value, actor: Actor) -> Clock {
        // new/2: the client's clock is its context with no values of its own.
        let client = Clock {
            entries: ctx
                .entries()
                .iter()
                .map(|&(actor, counter)| Entry { actor, counter, values: Vec::new() })
                .collect(),
            anonymous: Vec::new(),
        };
        // update/3: sync without the new value (this drops exactly the local values whose
        // dots the context covers), then make the value the next event of `actor`.
        let mut clock = client.sync(self);
        clock.event(actor, value);
        clock
    }

    /// All sibling values (including tombstones), deterministic order: anonymous values, then
    /// each actor's values in actor order, newest first (`dvvset:values/1`).
    pub fn values(&self) -> Vec<&Value> {
        self.anonymous.iter().chain(self.entries.iter().flat_map(|e| e.values.iter())).collect()
    }

    /// Only the Data values (what a get returns), in the order of [`Clock::values`].
    pub fn live_values(&self) -> Vec<&[u8]> {
        self.values()
            .into_iter()
            .filter_map(|v| match v {
                Value::Data(bytes) => Some(bytes.as_slice()),
                Value::Tombstone => None,
            })
            .collect()
    }

    /// Number of sibling values, tombstones included (`dvvset:size/1`).
    pub fn sibling_count(&self) -> usize {
        self.anonymous.len() + self.entries.iter().map(|e| e.values.len()).sum::<usize>()
    }

    /// Sum of value byte lengths (for size limits); tombstones count 0.
    pub fn value_bytes(&self) -> usize {
        self.values().into_iter().map(Value::byte_len).sum()
    }

    /// True when every value is a tombstone (and there is at least one).
    pub fn is_deleted(&self) -> bool {
        let values = self.values();
        !values.is_empty() && values.into_iter().all(Value::is_tombstone)
    }

    /// True if `sync(self, other) == other`: `other` already has everything `self` would
    /// contribute (equal, or strictly newer), so a replica holding `self` is stale and read
    /// repair should send it `other`.
    pub fn dominated_by(&self, other: &Clock) -> bool {
        // Cheap rejection first: `other` must have seen every event `self` has.
        other.context().descends(&self.context()) && self.sync(other) == *other
    }

    /// `dvvset:less/2`: the causal history of `self` is strictly older than `other`'s
    /// (values are ignored).
    fn less(&self, other: &Clock) -> bool {
        strictly_greater(&other.entries, &self.entries)
    }

    /// `dvvset:event/3`: the next event of `actor` carries `value`.
    fn event(&mut self, actor: Actor, value: Value) {
        match self.entries.binary_search_by_key(&actor, |e| e.actor) {
            Ok(i) => {
                if let Some(entry) = self.entries.get_mut(i) {
                    // A counter cannot reach u64::MAX by events (one per write); saturating
                    // only keeps hand-made states from panicking.
                    entry.counter = entry.counter.saturating_add(1);
                    entry.values.insert(0, value);
                }
            }
            Err(i) => self.entries.insert(i, Entry { actor, counter: 1, values: vec![value] }),
        }
    }
}

/// `dvvset:greater/3` with `Strict = false`: `a` has seen everything `b` has and more.
fn strictly_greater(a: &[Entry], b: &[Entry]) -> bool {
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    let mut strict = false;
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return strict,
            (Some(_), None) => return true,
            (None, Some(_)) => return false,
            (Some(x), Some(y)) => {
                if x.actor == y.actor {
                    if x.counter < y.counter {
                        return false;
                    }
                    strict |= x.counter > y.counter;
                    a.next();
                    b.next();
                } else if x.actor < y.actor {
                    // `a` knows an actor `b` has never heard of.
                    strict = true;
                    a.next();
                } else {
                    // `b` knows an actor `a` has never heard of.
                    return false;
                }
            }
        }
    }
}

/// `dvvset:sync2/2`: merge two actor-sorted entry lists.
fn sync_entries(a: &[Entry], b: &[Entry]) -> Vec<Entry> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(x), None) => {
                out.push((*x).clone());
                a.next();
            }
            (None, Some(y)) => {
                out.push((*y).clone());
                b.next();
            }
            (Some(x), Some(y)) => {
                if x.actor < y.actor {
                    out.push((*x).clone());
                    a.next();
                } else if x.actor > y.actor {
                    out.push((*y).clone());
                    b.next();
                } else {
                    out.push(merge_entry(x, y));
                    a.next();
                    b.next();
                }
            }
        }
    }
}

/// `dvvset:merge/5`: the same actor seen by two replicas. The result has the larger counter
/// and keeps the dots that neither side knows to be dead: the values above both floors, taken
/// from the side with the larger counter (the right suffix of its list is what it dropped).
fn merge_entry(x: &Entry, y: &Entry) -> Entry {
    let (hi, lo) = if x.counter >= y.counter { (x, y) } else { (y, x) };
    let floor = hi.floor().max(lo.floor());
    let keep = usize::try_from(hi.counter.saturating_sub(floor)).unwrap_or(usize::MAX);
    let mut values: Vec<Value> = hi.values.iter().take(keep).cloned().collect();
    if x.counter == y.counter {
        // Same events on both sides: for well-formed states the lists agree on the kept dots;
        // choose deterministically when they do not (see `Clock::sync`).
        let other: Vec<Value> = lo.values.iter().take(keep).cloned().collect();
        if other < values {
            values = other;
        }
    }
    Entry { actor: x.actor, counter: hi.counter, values }
}

/// A list length as a counter, for arithmetic with counters.
fn len_u64<T>(items: &[T]) -> u64 {
    u64::try_from(items.len()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    //! The EUnit tests of `dvvset.erl`, translated, plus the store-level scenarios.

    use super::*;

    const A: Actor = 0xa;
    const B: Actor = 0xb;
    const C: Actor = 0xc;
    const X: Actor = 0x24;

    fn v(name: &str) -> Value {
        Value::Data(name.as_bytes().to_vec())
    }

    fn entry(actor: Actor, counter: u64, values: &[&str]) -> Entry {
        Entry { actor, counter, values: values.iter().map(|s| v(s)).collect() }
    }

    fn clock(entries: Vec<Entry>) -> Clock {
        Clock { entries, anonymous: Vec::new() }
    }

    fn empty() -> VersionVector {
        VersionVector::new()
    }

    fn data(c: &Clock) -> Vec<&str> {
        c.live_values().into_iter().map(|b| std::str::from_utf8(b).unwrap_or("?")).collect()
    }

    #[test]
    fn erl_join() {
        let a1 = Clock::new().update(&empty(), v("v1"), A);
        let b1 = a1.update(&a1.context(), v("v2"), B);
        assert_eq!(Clock::new().context(), empty());
        assert_eq!(a1.context().entries(), &[(A, 1)]);
        assert_eq!(b1.context().entries(), &[(A, 1), (B, 1)]);
    }

    #[test]
    fn erl_update() {
        let a0 = Clock::new().update(&empty(), v("v1"), A);
        let a1 = a0.update(&a0.context(), v("v2"), A);
        let a2 = a1.update(&a1.context(), v("v3"), B);
        let a3 = a1.update(&a0.context(), v("v4"), B);
        let a4 = a1.update(&a0.context(), v("v5"), A);
        assert_eq!(a0, clock(vec![entry(A, 1, &["v1"])]));
        assert_eq!(a1, clock(vec![entry(A, 2, &["v2"])]));
        assert_eq!(a2, clock(vec![entry(A, 2, &[]), entry(B, 1, &["v3"])]));
        assert_eq!(a3, clock(vec![entry(A, 2, &["v2"]), entry(B, 1, &["v4"])]));
        assert_eq!(a4, clock(vec![entry(A, 3, &["v5", "v2"])]));
    }

    #[test]
    fn erl_sync() {
        let x = clock(vec![entry(X, 1, &[])]);
        let a = Clock::new().update(&empty(), v("v1"), A);
        let y = Clock::new().update(&empty(), v("v2"), B);
        let a1 = Clock::new().update(&a.context(), v("v2"), A);
        let a3 = Clock::new().update(&a1.context(), v("v3"), B);
        let a4 = Clock::new().update(&a1.context(), v("v3"), C);
        let w = clock(vec![entry(A, 1, &[])]);
        let z = clock(vec![entry(A, 2, &["v2", "v1"])]);
        assert_eq!(w.sync(&z), clock(vec![entry(A, 2, &["v2"])]));
        assert_eq!(w.sync(&z), z.sync(&w));
        assert_eq!(a.sync(&a1), a1.sync(&a));
        assert_eq!(a4.sync(&a3), a3.sync(&a4));
        assert_eq!(
            a4.sync(&a3),
            clock(vec![entry(A, 2, &[]), entry(B, 1, &["v3"]), entry(C, 1, &["v3"])])
        );
        assert_eq!(x.sync(&a), clock(vec![entry(A, 1, &["v1"]), entry(X, 1, &[])]));
        assert_eq!(x.sync(&a), a.sync(&x));
        assert_eq!(a.sync(&y), clock(vec![entry(A, 1, &["v1"]), entry(B, 1, &["v2"])]));
        assert_eq!(y.sync(&a), a.sync(&y));
    }

    #[test]
    fn erl_sync_update() {
        // Mary writes v1 without a context; Peter reads it; Mary writes v2 without a context;
        // Peter writes v3 with the context of v1: v1 goes, v2 (concurrent) stays.
        let a0 = Clock::new().update(&empty(), v("v1"), A);
        let vv1 = a0.context();
        let a1 = a0.update(&empty(), v("v2"), A);
        let a2 = a1.update(&vv1, v("v3"), A);
        assert_eq!(vv1.entries(), &[(A, 1)]);
        assert_eq!(a0, clock(vec![entry(A, 1, &["v1"])]));
        assert_eq!(a1, clock(vec![entry(A, 2, &["v2", "v1"])]));
        assert_eq!(a2, clock(vec![entry(A, 3, &["v3", "v2"])]));
    }

    #[test]
    fn erl_less() {
        let a = Clock::new().update(&empty(), v("v1"), A);
        let b = a.update(&a.context(), v("v2"), A);
        let c = a.update(&empty(), v("v3"), B);
        assert!(a.less(&b) && !b.less(&a));
        assert!(!a.less(&a));
        assert!(a.less(&c) && !b.less(&c) && !c.less(&b));
        assert!(Clock::new().less(&a));
    }

    #[test]
    fn anonymous_values_follow_dvvset() {
        let anon = |names: &[&str]| Clock {
            entries: Vec::new(),
            anonymous: names.iter().map(|s| v(s)).collect(),
        };
        // Equal (empty) histories: anonymous values are unioned.
        assert_eq!(anon(&["v1"]).sync(&anon(&["v2"])), anon(&["v1", "v2"]));
        assert_eq!(anon(&["v1"]).sync(&anon(&["v1"])), anon(&["v1"]));
        // A strictly newer history wins, with its anonymous values.
        let a = Clock::new().update(&empty(), v("v3"), A);
        assert_eq!(anon(&["v1"]).sync(&a), a);
        // update/3 keeps local anonymous values unless the context is strictly newer.
        let kept = anon(&["v1"]).update(&empty(), v("v2"), A);
        assert_eq!(kept.values(), vec![&v("v1"), &v("v2")]);
        assert_eq!(anon(&["v1"]).sync(&Clock::new()), anon(&["v1"]));
    }

    #[test]
    fn blind_write_next_to_data_is_a_sibling() {
        let c = Clock::new().update(&empty(), v("old"), A);
        let c = c.update(&empty(), v("new"), A);
        assert_eq!(data(&c), ["new", "old"]);
    }

    #[test]
    fn blind_writes_at_two_actors_collapse_with_the_synced_context() {
        let at_a = Clock::new().update(&empty(), v("a"), A);
        let at_b = Clock::new().update(&empty(), v("b"), B);
        let synced = at_a.sync(&at_b);
        assert_eq!(synced.sibling_count(), 2);
        assert_eq!(data(&synced), ["a", "b"]);
        let resolved = at_a.update(&synced.context(), v("ab"), A);
        assert_eq!(data(&resolved), ["ab"]);
        // The other replica learns the resolution and drops both.
        assert_eq!(data(&at_b.sync(&resolved)), ["ab"]);
        assert!(synced.dominated_by(&resolved));
        assert!(!resolved.dominated_by(&synced));
    }

    #[test]
    fn put_with_context_supersedes_what_it_saw() {
        let c = Clock::new().update(&empty(), v("v1"), A);
        let read = c.context();
        let concurrent = c.update(&empty(), v("v2"), A);
        let written = concurrent.update(&read, v("v3"), A);
        assert_eq!(data(&written), ["v3", "v2"]);
    }

    #[test]
    fn one_client_with_its_last_context_keeps_one_value() {
        let mut c = Clock::new();
        let mut ctx = VersionVector::new();
        for i in 0..50 {
            c = c.update(&ctx, v(&format!("v{i}")), A);
            ctx = c.context();
            assert_eq!(c.sibling_count(), 1);
        }
        assert_eq!(data(&c), ["v49"]);
    }

    /// Riak 1.x's sibling explosion: two clients interleave puts, each with the context its
    /// previous put returned. Server-id vector clocks cannot tell that each put saw the
    /// writer's own previous value, so every value looks concurrent with every other (false
    /// concurrency) and siblings grow without bound. DVVs keep at most the two truly concurrent
    /// latest values.
    #[test]
    fn interleaved_clients_do_not_explode() {
        let mut c = Clock::new();
        let (mut ctx1, mut ctx2) = (VersionVector::new(), VersionVector::new());
        for i in 0..100 {
            if i % 2 == 0 {
                c = c.update(&ctx1, v(&format!("c1-{i}")), A);
                ctx1 = c.context();
            } else {
                c = c.update(&ctx2, v(&format!("c2-{i}")), A);
                ctx2 = c.context();
            }
            assert!(c.sibling_count() <= 2, "round {i}: {:?}", data(&c));
        }
        assert_eq!(data(&c), ["c2-99", "c1-98"]);
        // One of them reads and writes with the full context: back to one value.
        let c = c.update(&c.context(), v("merged"), A);
        assert_eq!(data(&c), ["merged"]);
    }

    #[test]
    fn tombstones_follow_the_same_rules() {
        let c = Clock::new().update(&empty(), v("v1"), A);
        let read = c.context();
        // Someone writes v2 concurrently, on another replica.
        let other = Clock::new().update(&empty(), v("v2"), B);
        let deleted = c.update(&read, Value::Tombstone, A);
        assert!(deleted.is_deleted());
        assert_eq!(deleted.values(), vec![&Value::Tombstone]);
        let merged = deleted.sync(&other);
        assert!(!merged.is_deleted());
        assert_eq!(data(&merged), ["v2"]);
        assert_eq!(merged.sibling_count(), 2);
        // Deleting with the merged context removes both.
        let gone = merged.update(&merged.context(), Value::Tombstone, B);
        assert!(gone.is_deleted());
        assert_eq!(gone.sibling_count(), 1);
        // A write with the tombstone's context replaces it.
        let back = gone.update(&gone.context(), v("v3"), A);
        assert_eq!(data(&back), ["v3"]);
        assert!(!back.is_deleted());
    }

    #[test]
    fn accessors() {
        let c = Clock::new().update(&empty(), v("abc"), A).update(&empty(), Value::Tombstone, B);
        assert_eq!(c.value_bytes(), 3);
        assert_eq!(c.sibling_count(), 2);
        assert!(!c.is_empty() && Clock::new().is_empty());
        assert!(!c.is_deleted() && !Clock::new().is_deleted());
        assert!(Clock::new().dominated_by(&c));
        assert!(c.dominated_by(&c));
    }

    #[test]
    fn context_newer_than_local_moves_the_counter_past_it() {
        // The client read from a replica that has seen more of A than this one.
        let ctx = VersionVector::from_entries([(A, 5)]);
        let c = Clock::new().update(&empty(), v("x"), B).update(&ctx, v("y"), A);
        assert_eq!(c.context().entries(), &[(A, 6), (B, 1)]);
        assert_eq!(data(&c), ["y", "x"]);
    }

    #[test]
    fn hand_made_conflicting_dots_still_sync_commutatively() {
        let l = clock(vec![entry(A, 2, &["p", "q"])]);
        let r = clock(vec![entry(A, 2, &["z"])]);
        assert_eq!(l.sync(&r), r.sync(&l));
        let l = clock(vec![entry(A, 2, &["p"])]);
        assert_eq!(l.sync(&r), r.sync(&l));
        assert_eq!(l.sync(&r), l);
    }
}
