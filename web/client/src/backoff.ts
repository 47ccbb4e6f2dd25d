/**
 * Exponential backoff with full jitter: the n-th delay is uniform in
 * `[0, min(cap, base * 2^n))`, so clients dropped together (a node restart)
 * do not come back in lockstep.
 *
 * @module
 */

/** Backoff parameters, in milliseconds. */
export interface BackoffOptions {
  /** First ceiling; default 250 ms. */
  baseMs?: number;
  /** Largest ceiling; default 30 000 ms. */
  capMs?: number;
  /** Uniform random source in `[0, 1)`; default `Math.random`. */
  random?: () => number;
}

/** Full-jitter exponential backoff. */
export class Backoff {
  readonly baseMs: number;
  readonly capMs: number;
  private readonly random: () => number;
  private attempt = 0;

  constructor(options: BackoffOptions = {}) {
    this.baseMs = options.baseMs ?? 250;
    this.capMs = options.capMs ?? 30_000;
    this.random = options.random ?? Math.random;
    if (!(this.baseMs > 0) || !(this.capMs >= this.baseMs)) {
      throw new RangeError(`backoff needs 0 < baseMs <= capMs, got ${this.baseMs}, ${this.capMs}`);
    }
  }

  /** The ceiling of the next delay. */
  ceiling(): number {
    // 2^attempt overflows to Infinity long after the cap has taken over.
    return Math.min(this.capMs, this.baseMs * 2 ** this.attempt);
  }

  /** The next delay: uniform below the current ceiling; the ceiling then doubles. */
  next(): number {
    const d = this.random() * this.ceiling();
    this.attempt++;
    return d;
  }

  /**
   * The next delay when the server said `Retry-After: seconds` (a full node):
   * never sooner than it asked.
   */
  nextAfter(retryAfterSeconds: number): number {
    return Math.max(retryAfterSeconds * 1000, this.next());
  }

  /** Back to the first step (after a session that delivered book data). */
  reset(): void {
    this.attempt = 0;
  }

  /** Attempts since the last reset. */
  get attempts(): number {
    return this.attempt;
  }
}
