//! Jittered exponential backoff for requests a node refused because it was overloaded
//! (`RESOURCE_EXHAUSTED`, kind `overloaded`): nothing was done with them, so they can be sent
//! again, but a crowd of clients that all retried at once would arrive together and be refused
//! together. Each wait is drawn at random from the upper half of an exponentially growing step
//! ("equal jitter"), so retries spread out while the waits still grow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default of [`crate::ClientBuilder::overload_retries`].
pub const DEFAULT_OVERLOAD_RETRIES: usize = 5;

/// The first step of the backoff.
const BASE: Duration = Duration::from_millis(25);

/// No wait is longer than this.
const CAP: Duration = Duration::from_secs(1);

/// The wait before retry `attempt` (0-based), given a uniform draw `unit` in [0, 1): between
/// half and all of `min(BASE * 2^attempt, CAP)`.
pub(crate) fn delay(attempt: u32, unit: f64) -> Duration {
    let step = BASE.saturating_mul(1u32 << attempt.min(16)).min(CAP);
    let unit = unit.clamp(0.0, 1.0);
    step / 2 + step.mul_f64(unit / 2.0)
}

/// A uniform draw in [0, 1): splitmix64 over the clock and a process-wide counter. Not for
/// cryptography; enough to keep clients that were refused together from retrying together.
pub(crate) fn unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos
        .wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_then_stop_at_the_cap_and_stay_in_the_upper_half_of_each_step() {
        assert_eq!(delay(0, 0.0), Duration::from_micros(12_500));
        assert_eq!(delay(0, 1.0), BASE);
        assert_eq!(delay(2, 0.0), Duration::from_millis(50));
        assert_eq!(delay(2, 0.999_999).as_millis(), 99);
        assert_eq!(delay(10, 1.0), CAP);
        assert_eq!(delay(40, 0.0), CAP / 2, "a large attempt number does not overflow");
    }

    #[test]
    fn draws_are_spread_over_the_unit_interval() {
        let draws: Vec<f64> = (0..2000).map(|_| unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        // Each tenth of the interval gets some draws (expected 200 each).
        for tenth in 0..10 {
            let lo = tenth as f64 / 10.0;
            let n = draws.iter().filter(|u| (lo..lo + 0.1).contains(*u)).count();
            assert!(n > 100, "only {n} draws in [{lo}, {})", lo + 0.1);
        }
    }
}
