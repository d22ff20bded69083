//! Property tests of the DVVSet laws over realistic histories, checked against a reference
//! model.
//!
//! States are not arbitrary structs: a small simulated cluster of replicas, each with its own
//! actor, performs puts and deletes (with contexts read from any earlier state, or blind) and
//! syncs replicas with each other. Every state it produces is checked against a naive model
//! that tracks each value by its dot, and the lattice laws are checked over those states.
//!
//! Replicas also restart on a rolled-back copy of their own data (an earlier state of theirs),
//! under the actor rule of the module docs: with a fresh actor. Every state is then also
//! checked against a model that names each write by a unique id instead of a dot, which is
//! what "no acknowledged write is discarded as already seen" means: with reused dots the two
//! would part (`reused_dots_after_a_rollback_lose_a_write` shows they do).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;

use super::{Actor, Clock, Value, VersionVector};

/// One actor per replica; spread over the u64 range so sorting by actor is exercised.
const ACTORS: [Actor; 3] = [0x9e37_79b9_7f4a_7c15, 0x0000_0000_0000_0001, u64::MAX];

/// The naive semantics: every value keeps its dot; a context is the set of dots
/// `(actor, 1..=n)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    /// Per actor, how many events have been seen.
    seen: BTreeMap<Actor, u64>,
    /// Live values by dot.
    live: BTreeMap<(Actor, u64), Value>,
}

impl Model {
    fn covers(seen: &BTreeMap<Actor, u64>, (actor, n): (Actor, u64)) -> bool {
        seen.get(&actor).is_some_and(|&s| s >= n)
    }

    /// A value survives a merge unless one side has seen its dot and no longer has it.
    fn sync(&self, other: &Model) -> Model {
        let mut seen = self.seen.clone();
        for (&a, &n) in &other.seen {
            let s = seen.entry(a).or_default();
            *s = (*s).max(n);
        }
        let survives = |m: &Model, dot: (Actor, u64)| {
            m.live.contains_key(&dot) || !Model::covers(&m.seen, dot)
        };
        let live = self
            .live
            .iter()
            .chain(other.live.iter())
            .filter(|(&dot, _)| survives(self, dot) && survives(other, dot))
            .map(|(&dot, v)| (dot, v.clone()))
            .collect();
        Model { seen, live }
    }

    /// A write with context `ctx` removes exactly the dots `ctx` covers, then adds a new dot.
    fn update(&self, ctx: &VersionVector, value: Value, actor: Actor) -> Model {
        let ctx_seen: BTreeMap<Actor, u64> = ctx.entries().iter().copied().collect();
        let mut next = self.sync(&Model { seen: ctx_seen.clone(), live: BTreeMap::new() });
        next.live.retain(|&dot, _| !Model::covers(&ctx_seen, dot));
        let n = next.seen.get(&actor).copied().unwrap_or(0) + 1;
        next.seen.insert(actor, n);
        next.live.insert((actor, n), value);
        next
    }

    fn context(&self) -> VersionVector {
        VersionVector::from_entries(self.seen.iter().map(|(&a, &n)| (a, n)))
    }

    fn sorted_values(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self.live.values().cloned().collect();
        v.sort();
        v
    }
}

/// The ground truth, independent of actors and dots: each write has a unique id; a state knows
/// the ids it has seen and holds the live ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IdModel {
    seen: BTreeSet<usize>,
    live: BTreeMap<usize, Value>,
}

impl IdModel {
    fn sync(&self, other: &IdModel) -> IdModel {
        let survives = |m: &IdModel, id: &usize| m.live.contains_key(id) || !m.seen.contains(id);
        let live = self
            .live
            .iter()
            .chain(other.live.iter())
            .filter(|(id, _)| survives(self, id) && survives(other, id))
            .map(|(&id, v)| (id, v.clone()))
            .collect();
        IdModel { seen: self.seen.union(&other.seen).copied().collect(), live }
    }

    /// A write with the context of a state that had seen `ctx` supersedes exactly those writes.
    fn update(&self, ctx: &BTreeSet<usize>, id: usize, value: Value) -> IdModel {
        let mut next = self.sync(&IdModel { seen: ctx.clone(), live: BTreeMap::new() });
        next.live.retain(|id, _| !ctx.contains(id));
        next.seen.insert(id);
        next.live.insert(id, value);
        next
    }

    fn sorted_values(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self.live.values().cloned().collect();
        v.sort();
        v
    }
}

fn sorted_values(c: &Clock) -> Vec<Value> {
    let mut v: Vec<Value> = c.values().into_iter().cloned().collect();
    v.sort();
    v
}

/// Where a write's context comes from.
#[derive(Clone, Debug)]
enum Ctx {
    /// A blind write.
    Empty,
    /// The context of some earlier state (a client read it a while ago, from any replica).
    Earlier(Index),
}

#[derive(Clone, Debug)]
enum Op {
    /// Replica `replica` coordinates a put (or a delete) with context `ctx`.
    Write { replica: usize, ctx: Ctx, tombstone: bool },
    /// Replica `to` merges `from`'s state (read repair, handoff or anti-entropy).
    Sync { from: usize, to: usize },
    /// Replica `replica` restarts on an earlier state of its own (lost unsynced writes, a
    /// restored copy), so under the actor rule with a fresh actor.
    Rollback { replica: usize, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let ctx = prop_oneof![1 => Just(Ctx::Empty), 3 => any::<Index>().prop_map(Ctx::Earlier)];
    prop_oneof![
        3 => (0..ACTORS.len(), ctx, prop::bool::weighted(0.2))
            .prop_map(|(replica, ctx, tombstone)| Op::Write { replica, ctx, tombstone }),
        2 => (0..ACTORS.len(), 0..ACTORS.len()).prop_map(|(from, to)| Op::Sync { from, to }),
        1 => (0..ACTORS.len(), any::<usize>()).prop_map(|(replica, to)| Op::Rollback { replica, to }),
    ]
}

/// A state: the DVVSet, the dot model, the write-id model.
type State = (Clock, Model, IdModel);

/// A simulated cluster: replica states, and every state ever produced (clients may hold
/// contexts of any of them).
struct World {
    replicas: Vec<State>,
    history: Vec<State>,
    writes: usize,
    /// Each replica's current actor.
    actors: Vec<Actor>,
    /// Each replica's own past states (history indices), the empty one first.
    pasts: Vec<Vec<usize>>,
    /// Rollbacks keep the old actor instead of taking a fresh one (the bug the rule prevents;
    /// only the test that shows it sets this).
    reuse_actors: bool,
}

impl World {
    fn new() -> World {
        let empty = (Clock::new(), Model::default(), IdModel::default());
        World {
            replicas: vec![empty.clone(); ACTORS.len()],
            history: vec![empty],
            writes: 0,
            actors: ACTORS.to_vec(),
            pasts: vec![vec![0]; ACTORS.len()],
            reuse_actors: false,
        }
    }

    fn fresh_value(&mut self, tombstone: bool) -> Value {
        self.writes += 1;
        if tombstone {
            Value::Tombstone
        } else {
            Value::Data(format!("w{}", self.writes).into_bytes())
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let (replica, next) = match op {
            Op::Write { replica, ctx, tombstone } => {
                let (ctx, ids) = match ctx {
                    Ctx::Empty => (VersionVector::new(), BTreeSet::new()),
                    Ctx::Earlier(i) => {
                        let (clock, _, ids) = &self.history[i.index(self.history.len())];
                        (clock.context(), ids.seen.clone())
                    }
                };
                let value = self.fresh_value(*tombstone);
                let (clock, model, id_model) = &self.replicas[*replica];
                let actor = self.actors[*replica];
                let next = (
                    clock.update(&ctx, value.clone(), actor),
                    model.update(&ctx, value.clone(), actor),
                    id_model.update(&ids, self.writes, value),
                );
                (*replica, next)
            }
            Op::Sync { from, to } => {
                let (fc, fm, fi) = &self.replicas[*from];
                let (tc, tm, ti) = &self.replicas[*to];
                (*to, (tc.sync(fc), tm.sync(fm), ti.sync(fi)))
            }
            Op::Rollback { replica, to } => {
                let past = &self.pasts[*replica];
                let state = self.history[past[to % past.len()]].clone();
                if !self.reuse_actors {
                    // Fresh and unlike any other: spread over the u64 range.
                    let k = (self.history.len() as u64).wrapping_add(1);
                    self.actors[*replica] = k.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1 << 62;
                }
                (*replica, state)
            }
        };
        check_matches_model(&next.0, &next.1)?;
        // No write is lost or resurrected by a merge that mistakes it for another.
        prop_assert_eq!(sorted_values(&next.0), next.2.sorted_values());
        self.replicas[replica] = next.clone();
        self.history.push(next);
        self.pasts[replica].push(self.history.len() - 1);
        Ok(())
    }

    fn run(ops: &[Op]) -> Result<World, TestCaseError> {
        let mut world = World::new();
        for op in ops {
            world.apply(op)?;
        }
        Ok(world)
    }

    fn pick(&self, i: &Index) -> &Clock {
        &self.history[i.index(self.history.len())].0
    }
}

/// The DVVSet keeps exactly the values the model keeps and has the same causal context.
fn check_matches_model(clock: &Clock, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(sorted_values(clock), model.sorted_values());
    prop_assert_eq!(clock.context(), model.context());
    prop_assert_eq!(Clock::decode(&clock.encode()), Ok(clock.clone()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every reachable state agrees with the model (checked inside `apply`), and `sync` is a
    /// join: commutative, associative, idempotent, with the empty clock as identity.
    #[test]
    fn sync_laws(
        ops in prop::collection::vec(op(), 0..40),
        (a, b, c) in (any::<Index>(), any::<Index>(), any::<Index>()),
    ) {
        let world = World::run(&ops)?;
        let (a, b, c) = (world.pick(&a), world.pick(&b), world.pick(&c));
        prop_assert_eq!(a.sync(b), b.sync(a));
        prop_assert_eq!(a.sync(b).sync(c), a.sync(&b.sync(c)));
        prop_assert_eq!(&a.sync(a), a);
        prop_assert_eq!(&a.sync(&Clock::new()), a);
        prop_assert_eq!(&Clock::new().sync(a), a);
        // `dominated_by` is the order `sync` induces.
        prop_assert!(a.dominated_by(&a.sync(b)));
        prop_assert_eq!(a.dominated_by(b), a.sync(b) == *b);
        prop_assert!(Clock::new().dominated_by(a));
    }

    /// Replicas that exchange everything converge, whatever the order.
    #[test]
    fn replicas_converge(ops in prop::collection::vec(op(), 0..40)) {
        let world = World::run(&ops)?;
        let [r0, r1, r2] = [&world.replicas[0].0, &world.replicas[1].0, &world.replicas[2].0];
        let forward = r0.sync(r1).sync(r2);
        let backward = r2.sync(r1).sync(r0);
        prop_assert_eq!(&forward, &backward);
        let merged_model = world.replicas[0].1.sync(&world.replicas[1].1).sync(&world.replicas[2].1);
        check_matches_model(&forward, &merged_model)?;
        let ids = world.replicas[0].2.sync(&world.replicas[1].2).sync(&world.replicas[2].2);
        prop_assert_eq!(sorted_values(&forward), ids.sorted_values());
    }

    /// get (sync of some replicas) -> concurrent activity -> put with the get's context at
    /// some replica: the result holds exactly the new value plus the local values the context
    /// did not cover (written concurrently), and none of the values the get returned.
    #[test]
    fn put_with_context_supersedes_exactly_what_was_read(
        before in prop::collection::vec(op(), 0..30),
        read_from in prop::collection::vec(0..ACTORS.len(), 1..=ACTORS.len()),
        during in prop::collection::vec(op(), 0..15),
        writer in 0..ACTORS.len(),
        tombstone in prop::bool::weighted(0.3),
    ) {
        let mut world = World::run(&before)?;
        let read = read_from.iter().fold(Clock::new(), |acc, &r| acc.sync(&world.replicas[r].0));
        let ctx = read.context();
        for op in &during {
            world.apply(op)?;
        }
        let value = world.fresh_value(tombstone);
        let (local, local_model, _) = &world.replicas[writer];
        let written = local.update(&ctx, value.clone(), world.actors[writer]);

        let mut expected: Vec<Value> = local_model
            .live
            .iter()
            .filter(|(&(actor, n), _)| ctx.get(actor) < n)
            .map(|(_, v)| v.clone())
            .collect();
        expected.push(value.clone());
        expected.sort();
        prop_assert_eq!(sorted_values(&written), expected);
        // Written values are unique, so a read value still present would be a lost delete.
        for v in read.values() {
            if let Value::Data(_) = v {
                prop_assert!(!written.values().contains(&v), "{:?} survived a put that saw it", v);
            }
        }
        prop_assert!(written.context().descends(&ctx));
        prop_assert!(written.context().descends(&local.context()));
        prop_assert_eq!(written.is_deleted(), written.values().iter().all(|v| v.is_tombstone()));
        // The put's own result, used as the next context, collapses everything.
        let again = written.update(&written.context(), Value::Tombstone, world.actors[writer]);
        prop_assert!(again.is_deleted());
        prop_assert_eq!(again.sibling_count(), 1);
    }

    /// A client that always writes with the context its previous write returned never makes
    /// siblings, even with other replicas syncing in between (as long as nobody else writes).
    #[test]
    fn single_writer_with_its_context_keeps_one_value(
        steps in prop::collection::vec((0..ACTORS.len(), prop::bool::weighted(0.3)), 1..30),
    ) {
        let mut replicas = vec![Clock::new(); ACTORS.len()];
        let mut ctx = VersionVector::new();
        for (i, (r, tombstone)) in steps.into_iter().enumerate() {
            let value = if tombstone { Value::Tombstone } else { Value::Data(vec![i as u8]) };
            // The coordinator first gets its replica up to date (as a read repair would).
            let local = replicas.iter().fold(Clock::new(), |acc, c| acc.sync(c));
            let written = local.update(&ctx, value, ACTORS[r]);
            prop_assert_eq!(written.sibling_count(), 1);
            ctx = written.context();
            replicas[r] = written;
        }
    }
}

#[test]
fn blind_write_is_never_an_overwrite() {
    let world = World::run(&[
        Op::Write { replica: 0, ctx: Ctx::Empty, tombstone: false },
        Op::Write { replica: 0, ctx: Ctx::Empty, tombstone: false },
        Op::Write { replica: 1, ctx: Ctx::Empty, tombstone: false },
        Op::Sync { from: 1, to: 0 },
    ]);
    let world = match world {
        Ok(w) => w,
        Err(e) => panic!("{e}"),
    };
    let merged = &world.replicas[0].0;
    assert_eq!(merged.sibling_count(), 3);
    // Actor order (replica 1's actor sorts first), each actor's values newest first.
    assert_eq!(merged.live_values(), [&b"w3"[..], b"w2", b"w1"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Histories dense in rollbacks: replicas restart on earlier copies of their data and keep
    /// writing, blind or with old contexts; every state keeps exactly the writes the id model
    /// keeps (checked in `apply`), and after everything is exchanged, so do the replicas.
    #[test]
    fn no_acknowledged_write_is_discarded_after_a_rollback_with_a_fresh_actor(
        ops in prop::collection::vec(
            prop_oneof![3 => op(), 1 => (0..ACTORS.len(), any::<usize>())
                .prop_map(|(replica, to)| Op::Rollback { replica, to })],
            0..60,
        ),
    ) {
        let world = World::run(&ops)?;
        let all = world.replicas.iter().fold(
            (Clock::new(), IdModel::default()),
            |(c, m), (rc, _, rm)| (c.sync(rc), m.sync(rm)),
        );
        prop_assert_eq!(sorted_values(&all.0), all.1.sorted_values());
        // Every write whose id the merged state has not seen superseded is still there.
        for (id, value) in &all.1.live {
            prop_assert!(all.0.values().contains(&value), "write {} lost", id);
        }
    }
}

/// The check has teeth: a node restarted on a copy of its data taken before its last write,
/// writing again under the same actor, issues that write's dot again, and a replica that has
/// the first write discards the new one as seen (KV679). A fresh actor keeps both.
#[test]
fn reused_dots_after_a_rollback_lose_a_write() {
    let ops = [
        Op::Write { replica: 0, ctx: Ctx::Empty, tombstone: false },
        Op::Sync { from: 0, to: 1 },
        // Back to its empty initial state (the copy predates the write).
        Op::Rollback { replica: 0, to: 0 },
        Op::Write { replica: 0, ctx: Ctx::Empty, tombstone: false },
        Op::Sync { from: 0, to: 1 },
    ];
    let mut reusing = World::new();
    reusing.reuse_actors = true;
    let failed = ops.iter().try_for_each(|op| reusing.apply(op));
    assert!(failed.is_err(), "a reused dot must lose the second write");
    assert_eq!(reusing.replicas[1].0.live_values(), [&b"w1"[..]], "w2 was discarded as seen");
    let world = World::run(&ops).unwrap_or_else(|e| panic!("{e}"));
    let mut kept = world.replicas[1].0.live_values();
    kept.sort();
    assert_eq!(kept, [&b"w1"[..], b"w2"]);
}
