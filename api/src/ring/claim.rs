//! Claim: deciding which member owns each partition, from scratch or from a previous layout.
//!
//! Prior art: Riak's `riak_core_claim` spaces a node's partitions at least `target_n_val`
//! apart so that preference lists (the next N owners along the ring) hold N distinct nodes,
//! and its location-aware claim orders nodes so that neighbours sit in different locations.
//! Garage solves a capacity-weighted, zone-redundant flow problem that minimises movement.
//! Here preference lists are walks of the ring that skip repeated zones (see
//! [`super::Ring::preference_list`]), so what matters is:
//!
//! * **Counts.** Member `m` owns exactly `target(m)`, the apportionment of `Q` by weight that
//!   minimises the largest `owned / (Q * w / sum w)` (see [`targets`]), so load is balanced by
//!   construction and not by luck.
//! * **Zone interleaving.** Partition `p`'s first replicas are the first member of each zone
//!   met walking from `p`. With exactly N zones, a member replicates `p` exactly when it is
//!   the first of its zone at or after `p`, so its replica load is the sum, over the
//!   partitions it owns, of the distance back to the previous partition owned in its zone.
//!   Spreading each zone evenly over the ring and each member evenly within its zone makes
//!   these distances equal, so replica load follows ownership (similarly for other zone
//!   counts).
//! * **Spacing.** Two partitions of one member, or of one zone, closer than N make a
//!   preference list reach further along the ring, so such neighbours are avoided where the
//!   weights allow it (a member owning more than `1/N` of the ring cannot avoid them).
//!
//! From scratch ([`claim_new`]) zones are laid out by stride scheduling (each zone's k-th
//! partition goes as close as possible to `(k + 1/2) * Q / zone_target`), and each zone's
//! positions are dealt to its members the same way, skipping a member that owns one of the
//! previous N - 1 positions where another member can take it. For equal weights and equal
//! zones this is Riak's ideal round robin `a1 b1 c1 a2 b2 c2 ...`.
//!
//! Incrementally ([`claim_incremental`]) only partitions that must move do: those of departed
//! members and the surplus of members above their new target. Under-target members take them
//! one at a time, the member furthest below target choosing first, each choosing the
//! available partition that best keeps spacing: none of its own partitions within N - 1, no
//! member of its zone within `min(N, Z) - 1`, preferring partitions whose giver gains spacing
//! by handing them over, then the one furthest from the partitions it already owns.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};

use super::Member;

/// The replication factor the layout is optimised for. Preference lists work for any N, but
/// a ring does not know its cluster's N, so the claim spaces members for the typical N = 3
/// (Riak's claim likewise uses its own `target_n_val`, default 4, not the buckets' n_val).
pub(crate) const CLAIM_N: usize = 3;

/// The number of partitions each member should own: at least one each, then every further
/// partition to the member whose `(owned + 1) / weight` is smallest (the D'Hondt/Jefferson
/// order), which keeps the largest `owned / (Q * w / sum w)` as small as possible. Ties go to
/// the member that currently owns more (`current`, so that a rebalance moves less), then to
/// the lower index (members are sorted by id, so this is deterministic).
pub(crate) fn targets(
    partitions: u32,
    members: &[Member],
    current: Option<&[usize]>,
) -> Vec<usize> {
    /// A heap entry: the member `index` would next go from `owned` to `owned + 1`.
    struct Next {
        owned: u64,
        weight: u64,
        current: usize,
        index: usize,
    }
    impl Ord for Next {
        // "Greater" means "served first" in the max-heap.
        fn cmp(&self, other: &Self) -> Ordering {
            // a before b iff (a.owned + 1) / a.weight < (b.owned + 1) / b.weight.
            ((other.owned + 1) * self.weight)
                .cmp(&((self.owned + 1) * other.weight))
                .then(self.current.cmp(&other.current))
                .then(other.index.cmp(&self.index))
        }
    }
    impl PartialOrd for Next {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    impl PartialEq for Next {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == Ordering::Equal
        }
    }
    impl Eq for Next {}

    let mut owned = vec![1usize; members.len()];
    let mut heap: BinaryHeap<Next> = members
        .iter()
        .enumerate()
        .map(|(index, m)| Next {
            owned: 1,
            weight: u64::from(m.weight),
            current: current.map_or(0, |c| c[index]),
            index,
        })
        .collect();
    for _ in members.len()..partitions as usize {
        let Some(mut next) = heap.pop() else { break };
        next.owned += 1;
        owned[next.index] = next.owned as usize;
        heap.push(next);
    }
    owned
}

/// Stride scheduling: deals the slots at ring positions `positions` (ascending, on a ring of
/// `ring` positions) to items with the given quotas (summing to `positions.len()`) so that
/// each item's k-th slot is as close as possible to the `(k + 1/2) * slots / quota`-th.
/// An item that already holds a position less than `min_gap` away (around the ring) is
/// passed over when an item that does not is available. Ties go to the lower item index.
/// Returns the item of every slot.
fn stride(quotas: &[usize], positions: &[usize], ring: usize, min_gap: usize) -> Vec<usize> {
    let mut taken = vec![0usize; quotas.len()];
    // The first and last positions dealt to each item: the nearest ones before `p` and,
    // around the ring, after it.
    let mut first = vec![None::<usize>; quotas.len()];
    let mut last = vec![None::<usize>; quotas.len()];
    let mut out = Vec::with_capacity(positions.len());
    for &p in positions {
        // (too close, due key, index) of the best item so far.
        let mut best: Option<(bool, usize)> = None;
        for (i, &quota) in quotas.iter().enumerate() {
            if taken[i] >= quota {
                continue;
            }
            let close = match (first[i], last[i]) {
                (Some(f), Some(l)) => p - l < min_gap || f + ring - p < min_gap,
                _ => false,
            };
            let better = match best {
                None => true,
                // Item i's next share is due at slot (2 taken + 1) * slots / (2 quota):
                // compare by cross-multiplication to stay in exact integers.
                Some((b_close, b)) => {
                    let i_due = (2 * taken[i] as u64 + 1) * quotas[b] as u64;
                    let b_due = (2 * taken[b] as u64 + 1) * quota as u64;
                    (close, i_due) < (b_close, b_due)
                }
            };
            if better {
                best = Some((close, i));
            }
        }
        // Quotas sum to the number of slots, so some item always has quota left.
        let Some((_, chosen)) = best else { break };
        taken[chosen] += 1;
        first[chosen].get_or_insert(p);
        last[chosen] = Some(p);
        out.push(chosen);
    }
    out
}

/// Claims `partitions` partitions for `members` (sorted by id, validated) from scratch;
/// returns the owner index of every partition.
pub(crate) fn claim_new(partitions: u32, members: &[Member]) -> Vec<u16> {
    let q = partitions as usize;
    let target = targets(partitions, members, None);
    let zones = zones(members, &target);
    let zone_quota: Vec<usize> = zones.iter().map(|z| z.0).collect();
    let all: Vec<usize> = (0..q).collect();
    let zone_at = stride(&zone_quota, &all, q, 0);

    let mut owners = vec![0u16; q];
    for (z, (_, zone_members)) in zones.iter().enumerate() {
        let positions: Vec<usize> = (0..q).filter(|&p| zone_at[p] == z).collect();
        let quotas: Vec<usize> = zone_members.iter().map(|&m| target[m]).collect();
        for (&p, &i) in positions.iter().zip(&stride(&quotas, &positions, q, CLAIM_N)) {
            owners[p] = zone_members[i] as u16;
        }
    }
    owners
}

/// Members grouped by zone with each zone's total target, largest zone first (ties by zone
/// name, then members by id) so that the stride's ties favour the zones that need most room.
fn zones(members: &[Member], target: &[usize]) -> Vec<(usize, Vec<usize>)> {
    let mut by_zone: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        by_zone.entry(m.zone.as_str()).or_default().push(i);
    }
    let mut zones: Vec<(usize, Vec<usize>)> =
        by_zone.into_values().map(|ms| (ms.iter().map(|&m| target[m]).sum(), ms)).collect();
    // Stable sort: equal totals keep the BTreeMap's name order.
    zones.sort_by_key(|z| Reverse(z.0));
    zones
}

/// Moves the fewest partitions from `previous` (owner index in `members`, `None` for a
/// departed member) so that every member owns its target; returns every partition's owner.
///
/// Cost: `O(D * Q)` for `D` moved partitions (each move scans the ring once, a few array
/// reads per partition). One member joining 64, release build: under 1 ms for Q = 1024,
/// 10 ms for Q = 4096, 1.5 s for Q = 65536.
pub(crate) fn claim_incremental(
    partitions: u32,
    members: &[Member],
    previous: &[Option<u16>],
) -> Vec<u16> {
    let q = partitions as usize;
    let mut owners: Vec<Option<usize>> = previous.iter().map(|o| o.map(usize::from)).collect();
    let mut counts = vec![0usize; members.len()];
    for o in owners.iter().flatten() {
        counts[*o] += 1;
    }
    let target = targets(partitions, members, Some(&counts));
    let mut surplus: Vec<usize> =
        counts.iter().zip(&target).map(|(c, t)| c.saturating_sub(*t)).collect();
    let mut deficit: Vec<usize> =
        counts.iter().zip(&target).map(|(c, t)| t.saturating_sub(*c)).collect();

    let mut zone_ids: BTreeMap<&str, usize> = BTreeMap::new();
    for m in members {
        let next = zone_ids.len();
        zone_ids.entry(m.zone.as_str()).or_insert(next);
    }
    let zone_of: Vec<usize> = members.iter().map(|m| zone_ids[m.zone.as_str()]).collect();
    let layout = Layout { q, zone_window: CLAIM_N.min(zone_ids.len()), zone_of: &zone_of };

    // Distance from every partition to the nearest one each receiver owns. Receivers only
    // gain partitions (a member below target has no surplus to give), so these distances
    // only shrink and are cheap to keep up to date.
    let mut near: Vec<Vec<usize>> = (0..members.len())
        .map(|m| if deficit[m] > 0 { layout.distances(&owners, m) } else { Vec::new() })
        .collect();

    // Each round hands one partition to the member furthest below its target (relative to
    // the target, ties to the lower index), so receivers take turns choosing.
    while let Some(r) = (0..members.len())
        .filter(|&m| deficit[m] > 0)
        .min_by(|&a, &b| (deficit[b] * target[a]).cmp(&(deficit[a] * target[b])).then(a.cmp(&b)))
    {
        let mut best: Option<(Candidate, usize)> = None;
        for p in 0..q {
            let giver = owners[p];
            if giver.is_some_and(|g| surplus[g] == 0) {
                continue;
            }
            // Cheapest fields first: most partitions lose on them already.
            let own_close = CLAIM_N.saturating_sub(near[r][p]);
            let zone_close = layout.zone_mates(&owners, p, zone_of[r], r);
            if best
                .as_ref()
                .is_some_and(|(b, _)| (b.own_close, b.zone_close) < (own_close, zone_close))
            {
                continue;
            }
            let candidate = Candidate {
                own_close,
                zone_close,
                giver_keeps: match giver {
                    None => 0,
                    Some(g)
                        if layout.owns_near(&owners, p, g)
                            || layout.zone_mates(&owners, p, zone_of[g], g) > 0 =>
                    {
                        1
                    }
                    Some(_) => 2,
                },
                near: Reverse(near[r][p]),
            };
            if best.as_ref().is_none_or(|(b, _)| candidate < *b) {
                best = Some((candidate, p));
            }
        }
        // Partitions available (unowned, or held above target) always number the total
        // deficit, which is positive here, so a candidate was found.
        let Some((_, p)) = best else { break };
        if let Some(g) = owners[p] {
            surplus[g] -= 1;
        }
        owners[p] = Some(r);
        deficit[r] -= 1;
        layout.shrink_distances(&mut near[r], p);
    }
    debug_assert!(owners.iter().all(Option::is_some));
    // Every partition is owned at this point (see above); 0 is never used.
    owners.into_iter().map(|o| o.unwrap_or(0) as u16).collect()
}

/// How good a partition is for a receiving member; smaller is better, fields in priority
/// order (the derived `Ord` is lexicographic).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    /// How far inside `CLAIM_N` the receiver's nearest own partition is (0: none closer).
    own_close: usize,
    /// Other members of the receiver's zone within `min(N, zones) - 1` of the partition.
    zone_close: usize,
    /// 0: the partition is unowned; 1: its giver has a partition or a zone-mate too close to
    /// it, so handing it over helps the giver's spacing; 2: the giver loses a well-spaced one.
    giver_keeps: usize,
    /// Distance to the receiver's nearest own partition: the further, the more evenly its
    /// partitions end up spread.
    near: Reverse<usize>,
}

/// The geometry the incremental claim measures spacing with.
struct Layout<'a> {
    /// Partitions on the ring.
    q: usize,
    /// `min(N, zones)`: the first this many replicas should sit in distinct zones.
    zone_window: usize,
    /// Zone index of each member.
    zone_of: &'a [usize],
}

impl Layout<'_> {
    /// For every partition, the distance around the ring to the nearest partition `member`
    /// owns (0 for its own, `q` if it owns none).
    fn distances(&self, owners: &[Option<usize>], member: usize) -> Vec<usize> {
        let q = self.q;
        let mut near = vec![q; q];
        // Two laps each way so that distances wrap around the ring.
        let mut last = None;
        for i in 0..2 * q {
            let p = i % q;
            if owners[p] == Some(member) {
                last = Some(i);
            }
            if let Some(l) = last {
                near[p] = near[p].min(i - l);
            }
        }
        last = None;
        for i in (0..2 * q).rev() {
            let p = i % q;
            if owners[p] == Some(member) {
                last = Some(i);
            }
            if let Some(l) = last {
                near[p] = near[p].min(l - i);
            }
        }
        near
    }

    /// Updates `near` (from [`Layout::distances`]) after its member gained partition `p`.
    fn shrink_distances(&self, near: &mut [usize], p: usize) {
        let q = self.q;
        near[p] = 0;
        for step in [1, q - 1] {
            let (mut at, mut d) = ((p + step) % q, 1);
            while d < q && near[at] > d {
                near[at] = d;
                at = (at + step) % q;
                d += 1;
            }
        }
    }

    /// Partitions within `min(N, zones) - 1` of `p` (either side) owned by members of `zone`
    /// other than `except`: each makes some preference list through `p` reach further for
    /// its zones.
    fn zone_mates(&self, owners: &[Option<usize>], p: usize, zone: usize, except: usize) -> usize {
        let q = self.q;
        (1..self.zone_window.min(q))
            .flat_map(|d| [(p + d) % q, (p + q - d) % q])
            .filter_map(|n| owners[n])
            .filter(|&o| o != except && self.zone_of[o] == zone)
            .count()
    }

    /// Whether `member` owns a partition other than `p` within `N - 1` of it.
    fn owns_near(&self, owners: &[Option<usize>], p: usize, member: usize) -> bool {
        let q = self.q;
        (1..CLAIM_N.min(q))
            .flat_map(|d| [(p + d) % q, (p + q - d) % q])
            .any(|n| n != p && owners[n] == Some(member))
    }
}
