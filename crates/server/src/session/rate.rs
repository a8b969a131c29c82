//! The per-connection command rate limit: a token bucket, and the count of refused commands
//! after which the connection is closed.

use std::time::Instant;

/// Rate-limit violations tolerated before the connection is closed.
const MAX_RATE_VIOLATIONS: u32 = 100;

/// What the rate limit says about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Run it.
    Run,
    /// Refuse it with a `rate_limited` error reply; the connection stays.
    Refuse,
    /// Too many refusals: close the connection.
    Close,
}

/// The command rate limit of one connection.
pub(super) struct RateLimit {
    /// Commands allowed now.
    bucket: TokenBucket,
    /// Commands refused so far.
    violations: u32,
}

impl RateLimit {
    /// `per_second` commands per second (0: unlimited), bursts of twice that.
    pub(super) fn new(per_second: u32) -> RateLimit {
        RateLimit { bucket: TokenBucket::new(per_second), violations: 0 }
    }

    /// Takes one command's token, counting a refusal when there is none.
    pub(super) fn admit(&mut self) -> Admission {
        if self.bucket.take() {
            return Admission::Run;
        }
        self.violations += 1;
        if self.violations > MAX_RATE_VIOLATIONS { Admission::Close } else { Admission::Refuse }
    }
}

/// Commands per second with a burst of twice that.
pub(super) struct TokenBucket {
    /// Tokens added per second (0: no limit).
    rate: f64,
    /// Tokens available, at most `2 * rate`.
    tokens: f64,
    /// When `tokens` was last refilled.
    last: Instant,
}

impl TokenBucket {
    pub(super) fn new(per_second: u32) -> TokenBucket {
        let rate = f64::from(per_second);
        TokenBucket { rate, tokens: rate * 2.0, last: Instant::now() }
    }

    pub(super) fn take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
