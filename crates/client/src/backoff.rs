//! Reconnect delays: exponential growth with full jitter, a cap, and a circuit breaker.
//!
//! One policy for both clients (this crate and `clients/typescript`), documented in
//! docs/protocol.md §9:
//!
//! - The delay before retry *n* is uniform in `[0, min(max, initial × 2^(n-1))]` (full jitter
//!   spreads the reconnects of many clients after a hub restart instead of synchronized waves).
//! - The retry counter resets to 0 as soon as a connection is *established*: its `connect` got a
//!   reply and every subscription's resubscribe got a reply (resumed or resync'd). A connection
//!   that resumed is not a failed attempt, however short it lived, so a flapping network keeps
//!   the delays short and every resume within the history window.
//! - Only attempts that never got a successful `connect` reply are *failures*. After
//!   `breaker_after` consecutive failures the circuit breaker opens: the client reports itself
//!   offline (requests fail fast) and still probes once per `max`; a probe that gets its
//!   `connect` reply closes the breaker.

use rand::Rng;
use std::time::Duration;

/// How long to wait between reconnect attempts and when to open the circuit breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffPolicy {
    /// Ceiling of the first retry's delay; later ceilings grow from it.
    pub initial: Duration,
    /// No delay ever exceeds this, however many attempts failed; also the breaker's probe
    /// interval.
    pub max: Duration,
    /// Growth factor of the ceiling per attempt (2 doubles it).
    pub multiplier: f64,
    /// Draw each delay uniformly in `[0, ceiling]` (full jitter) instead of using the ceiling.
    pub jitter: bool,
    /// After this many consecutive failed connection attempts the circuit breaker opens: the
    /// client is offline (requests fail at once) and probes once per `max`; `None` never opens it.
    pub breaker_after: Option<u32>,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: true,
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

/// What to do after an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Next {
    /// Wait `delay`, then make retry number `attempt` (1-based, since the last established
    /// connection).
    Retry { attempt: u32, delay: Duration },
    /// The breaker is open after `failures` consecutive failures: offline, probe after `probe_in`.
    Open { failures: u32, probe_in: Duration },
}

/// The reconnect bookkeeping of one client, as pure logic: the driver reports what happened to
/// each attempt and gets back how long to wait.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    /// Retries since the last established connection: the exponent of the delay.
    attempt: u32,
    /// Consecutive attempts that never got a `connect` reply: the breaker's count.
    failures: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Backoff {
        Backoff { policy, attempt: 0, failures: 0 }
    }

    /// The `connect` reply arrived: this attempt did not fail, and an open breaker closes.
    pub fn connected(&mut self) {
        self.failures = 0;
    }

    /// Every resubscribe of the connection got its reply: the delays start over.
    pub fn established(&mut self) {
        self.failures = 0;
        self.attempt = 0;
    }

    /// The application asked to reconnect now: forget every failure.
    pub fn reset(&mut self) {
        self.established();
    }

    /// Whether the breaker is open (the last `breaker_after` or more attempts failed).
    pub fn is_open(&self) -> bool {
        self.policy.breaker_open(self.failures)
    }

    /// An attempt ended without a `connect` reply.
    pub fn failed(&mut self, rng: &mut impl Rng) -> Next {
        self.failures = self.failures.saturating_add(1);
        if self.is_open() {
            return Next::Open { failures: self.failures, probe_in: self.policy.max };
        }
        self.retry(rng)
    }

    /// A connection that got its `connect` reply ended.
    pub fn lost(&mut self, rng: &mut impl Rng) -> Next {
        self.retry(rng)
    }

    fn retry(&mut self, rng: &mut impl Rng) -> Next {
        self.attempt = self.attempt.saturating_add(1);
        Next::Retry { attempt: self.attempt, delay: self.policy.delay(self.attempt, rng) }
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

    fn no_jitter() -> BackoffPolicy {
        BackoffPolicy { jitter: false, ..Default::default() }
    }

    fn retry_secs(next: Next) -> (u32, u64) {
        match next {
            Next::Retry { attempt, delay } => (attempt, delay.as_secs()),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn a_flapping_connection_that_resumes_keeps_the_first_delay() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..1000 {
            b.connected();
            b.established();
            match b.lost(&mut rng) {
                Next::Retry { attempt, delay } => {
                    assert_eq!(attempt, 1);
                    assert!(delay <= Duration::from_secs(1));
                }
                other => panic!("a resumed connection is not a failure: {other:?}"),
            }
        }
        assert!(!b.is_open());
    }

    #[test]
    fn failures_double_the_delay_to_the_cap_then_open_the_breaker() {
        let mut b = Backoff::new(no_jitter());
        let mut rng = StdRng::seed_from_u64(1);
        let retries: Vec<(u32, u64)> = (0..9).map(|_| retry_secs(b.failed(&mut rng))).collect();
        assert_eq!(
            retries,
            [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (7, 30), (8, 30), (9, 30)]
        );
        assert!(!b.is_open());
        let open = Next::Open { failures: 10, probe_in: Duration::from_secs(30) };
        assert_eq!(b.failed(&mut rng), open);
        assert!(b.is_open());
        // While open, each failed probe waits one cap interval for the next.
        let probe = Next::Open { failures: 11, probe_in: Duration::from_secs(30) };
        assert_eq!(b.failed(&mut rng), probe);
        // A probe that gets its connect reply closes the breaker.
        b.connected();
        assert!(!b.is_open());
        // Cut before its resubscribes were answered: not established, so the delay goes on from
        // where it was (probes do not count as retries), but the breaker stays closed.
        assert_eq!(retry_secs(b.lost(&mut rng)), (10, 30));
        assert!(!b.is_open());
        b.connected();
        b.established();
        assert_eq!(retry_secs(b.lost(&mut rng)), (1, 1));
    }

    #[test]
    fn connected_but_never_established_grows_the_delay_without_opening() {
        let mut b = Backoff::new(no_jitter());
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            b.connected();
            retry_secs(b.lost(&mut rng));
        }
        b.connected();
        assert_eq!(retry_secs(b.lost(&mut rng)), (21, 30));
        assert!(!b.is_open(), "only attempts without a connect reply count as failures");
    }

    #[test]
    fn failures_must_be_consecutive_and_reset_clears_everything() {
        let mut b = Backoff::new(no_jitter());
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..9 {
            b.failed(&mut rng);
        }
        b.connected();
        for _ in 0..9 {
            assert!(matches!(b.failed(&mut rng), Next::Retry { .. }));
        }
        assert!(matches!(b.failed(&mut rng), Next::Open { failures: 10, .. }));
        b.reset();
        assert!(!b.is_open());
        assert_eq!(retry_secs(b.failed(&mut rng)), (1, 1));
        let mut never = Backoff::new(BackoffPolicy { breaker_after: None, ..no_jitter() });
        for _ in 0..100 {
            assert!(matches!(never.failed(&mut rng), Next::Retry { .. }));
        }
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
