/**
 * The reconnect policy of docs/protocol.md §9, shared with the Rust client's `BackoffPolicy`:
 * full-jitter exponential backoff, and a circuit breaker that opens after `maxAttempts`
 * consecutive attempts that never got a `connect` reply. It only counts and decides; the client
 * owns the timers and the state it shows.
 */

export interface BackoffOptions {
  /** First delay cap in ms (default 1000). */
  initialMs?: number;
  /** Largest delay in ms, and the probe interval while the circuit breaker is open (default 30000). */
  maxMs?: number;
  /**
   * Consecutive failed attempts (never answered `connect`) before the circuit breaker opens
   * (default 10).
   */
  maxAttempts?: number;
  /** Random source in [0,1) (tests). */
  random?: () => number;
}

/** What to do after an attempt ended or a connection dropped. */
export type NextStep =
  /** Wait `delayMs`, then try again (`attempt` is the backoff exponent, 1-based). */
  | { kind: 'retry'; attempt: number; delayMs: number }
  /** The circuit breaker opens: go offline and probe once per `probeMs`. */
  | { kind: 'open'; probeMs: number };

/** The counters of the backoff and the circuit breaker, and the decisions taken from them. */
export class ReconnectPolicy {
  /**
   * Retries since the last established connection (connect answered and every resubscribe
   * answered): the backoff exponent. A connection that resumed resets it, however short it lived.
   */
  private retries = 0;
  /** Consecutive attempts that never got a `connect` reply: the circuit breaker's count. */
  failures = 0;
  /** Whether the current attempt got its `connect` reply (then its end is not a failure). */
  private reachedConnect = false;
  /** The application's settings (defaults apply to what is missing). */
  private readonly options: BackoffOptions;

  constructor(options: BackoffOptions = {}) {
    this.options = options;
  }

  /** Failures that open the circuit breaker. */
  get maxAttempts(): number {
    return this.options.maxAttempts ?? 10;
  }

  /** The largest delay, and the probe interval while the breaker is open. */
  get capMs(): number {
    return this.options.maxMs ?? 30000;
  }

  /**
   * Full-jitter delay before try `attempt` (1-based, counted since the last connection that got
   * its `connect` reply): uniform in [0, min(maxMs, initialMs × 2^(attempt-1))).
   */
  delay(attempt: number): number {
    const initial = this.options.initialMs ?? 1000;
    const rnd = this.options.random ?? Math.random;
    const cap = Math.min(this.capMs, initial * Math.pow(2, Math.max(0, attempt - 1)));
    return Math.floor(rnd() * cap);
  }

  /** Starts counting afresh: the app connected or asked to reconnect, or a connection was established. */
  reset(): void {
    this.retries = this.failures = 0;
  }

  /** A new attempt begins: it fails unless it gets its `connect` reply. */
  attemptStarted(): void {
    this.reachedConnect = false;
  }

  /** The attempt got its `connect` reply: it did not fail, and an open breaker closes. */
  connectReached(): void {
    this.reachedConnect = true;
    this.failures = 0;
  }

  /**
   * The attempt failed or the connection dropped. Only an attempt that never got its `connect`
   * reply is a failure; after `maxAttempts` consecutive ones the breaker opens.
   */
  next(): NextStep {
    const failed = !this.reachedConnect;
    this.reachedConnect = false;
    if (failed) this.failures += 1;
    if (failed && this.failures >= this.maxAttempts) return { kind: 'open', probeMs: this.capMs };
    this.retries += 1;
    return { kind: 'retry', attempt: this.retries, delayMs: this.delay(this.retries) };
  }
}
