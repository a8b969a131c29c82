//! Reconnect delays: exponential growth with full jitter, a cap, and a circuit breaker.
//!
//! Full jitter (a uniform draw in `[0, ceiling]`) spreads the reconnects of many clients after a
//! hub restart instead of letting them arrive in synchronized waves.

use rand::Rng;
use std::time::Duration;

/// How long to wait between reconnect attempts and when to give up.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffPolicy {
    /// Ceiling of the first retry's delay; later ceilings grow from it.
    pub initial: Duration,
    /// No delay ever exceeds this, however many attempts failed.
    pub max: Duration,
    /// Growth factor of the ceiling per attempt (2 doubles it).
    pub multiplier: f64,
    /// Draw each delay uniformly in `[0, ceiling]` (full jitter) instead of using the ceiling.
    pub jitter: bool,
    /// A connection that stayed up this long resets the delay growth to `initial`.
    pub stable_after: Duration,
    /// After this many consecutive failed connection attempts the client goes offline until the
    /// application calls `Client::reconnect`; `None` retries forever.
    pub breaker_after: Option<u32>,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: true,
            stable_after: Duration::from_secs(10),
            breaker_after: Some(10),
        }
    }
}

impl BackoffPolicy {
    /// The largest delay the policy allows before retry number `attempt` (1-based):
    /// `min(max, initial * multiplier^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(1000) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let max = self.max.as_secs_f64();
        if secs.is_finite() && secs < max { Duration::from_secs_f64(secs) } else { self.max }
    }

    /// The delay before retry number `attempt` (1-based), jittered when the policy says so.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        if !self.jitter || ceiling.is_zero() {
            return ceiling;
        }
        Duration::from_secs_f64(rng.random_range(0.0..=ceiling.as_secs_f64()))
    }

    /// Whether `failures` consecutive failed attempts open the circuit breaker.
    pub fn breaker_open(&self, failures: u32) -> bool {
        self.breaker_after.is_some_and(|n| failures >= n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ceilings_double_from_one_second_to_the_cap() {
        let p = BackoffPolicy::default();
        let secs: Vec<u64> = (1..=8).map(|a| p.ceiling(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(30));
        assert_eq!(p.ceiling(0), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling_and_spreads() {
        let p = BackoffPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=12 {
            let ceiling = p.ceiling(attempt);
            let draws: Vec<Duration> = (0..2000).map(|_| p.delay(attempt, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= ceiling));
            let mean = draws.iter().map(Duration::as_secs_f64).sum::<f64>() / draws.len() as f64;
            let half = ceiling.as_secs_f64() / 2.0;
            assert!((mean - half).abs() < half * 0.1, "attempt {attempt}: mean {mean} vs {half}");
            let low =
                draws.iter().filter(|d| d.as_secs_f64() < ceiling.as_secs_f64() / 4.0).count();
            assert!(low > 300, "full jitter reaches the low quarter ({low})");
        }
    }

    #[test]
    fn without_jitter_the_delay_is_the_ceiling() {
        let p = BackoffPolicy { jitter: false, ..Default::default() };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(p.delay(3, &mut rng), Duration::from_secs(4));
    }

    #[test]
    fn breaker_opens_after_n_failures() {
        let p = BackoffPolicy::default();
        assert!(!p.breaker_open(9));
        assert!(p.breaker_open(10));
        let never = BackoffPolicy { breaker_after: None, ..Default::default() };
        assert!(!never.breaker_open(u32::MAX));
    }
}
