//! Pacing for background work (hint delivery, anti-entropy, transfers), so it cannot crowd out
//! foreground requests (paper section 6.5, admission control): at most `per_second` items.

use std::time::Duration;

use tokio::time::Instant;

/// See the module docs. `per_second == 0` means unlimited.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    next: Instant,
}

impl Throttle {
    pub fn new(per_second: u32) -> Throttle {
        let interval =
            if per_second == 0 { Duration::ZERO } else { Duration::from_secs(1) / per_second };
        Throttle { interval, next: Instant::now() }
    }

    /// Waits for the next slot.
    pub async fn acquire(&mut self) {
        if self.interval.is_zero() {
            return;
        }
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        // Idle time is not banked: a burst after a pause is still paced.
        self.next = self.next.max(now) + self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate() {
        let mut t = Throttle::new(100);
        let start = Instant::now();
        for _ in 0..101 {
            t.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_unlimited() {
        let mut t = Throttle::new(0);
        let start = Instant::now();
        for _ in 0..1000 {
            t.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
