/**
 * When to try the next connection: capped, jittered exponential backoff, and
 * the one reconnection attempt waiting for its delay.
 */

export interface BackoffOptions {
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  /** Fraction of each delay that is random, 0 to 1. */
  readonly jitter: number;
}

/**
 * The delay before attempt number `attempt` (0 for the first): doubling,
 * capped, and jittered so that many clients do not reconnect in lockstep
 * after a server restart.
 */
export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number = Math.random): number {
  const { initialDelayMs, maxDelayMs, jitter } = options;
  // The exponent is capped so that a client failing for days never computes Infinity.
  const base = Math.min(maxDelayMs, initialDelayMs * 2 ** Math.min(attempt, 30));
  return base * (1 - jitter * random());
}

export class Reconnector {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private failures = 0;

  constructor(private readonly options: BackoffOptions) {}

  /** Consecutive attempts since the server last accepted a connection. */
  get attempt(): number {
    return this.failures;
  }

  get pending(): boolean {
    return this.timer !== null;
  }

  /** The delay for the next attempt (the backoff's, unless `delayMs` is given), counting the attempt. */
  nextDelay(delayMs?: number): number {
    const delay = delayMs ?? backoffDelay(this.failures, this.options);
    this.failures += 1;
    return delay;
  }

  start(delayMs: number, attempt: () => void): void {
    this.timer = setTimeout(() => {
      this.timer = null;
      attempt();
    }, delayMs);
  }

  cancel(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /**
   * Start the backoff over. Only once the server has accepted a connection,
   * not merely opened it: a proxy that accepts and drops every connection, or
   * a server refusing the token, must not be retried at the initial delay
   * forever.
   */
  reset(): void {
    this.failures = 0;
  }
}
