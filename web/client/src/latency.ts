/**
 * A window of recent latencies and its percentiles.
 *
 * @module
 */

/** Percentiles of the latencies in the window, in ms (`undefined` when empty). */
export interface LatencySummary {
  /** Latencies seen in total. */
  count: number;
  lastMs: number | undefined;
  p50Ms: number | undefined;
  p99Ms: number | undefined;
  maxMs: number | undefined;
}

/** The last `size` latencies in a ring; percentiles are computed on demand. */
export class LatencyWindow {
  private readonly ring: Float64Array;
  private count = 0;
  private last: number | undefined;

  constructor(readonly size: number) {
    if (!(size >= 1)) throw new RangeError("window size must be >= 1");
    this.ring = new Float64Array(size);
  }

  add(ms: number): void {
    this.ring[this.count % this.size] = ms;
    this.count++;
    this.last = ms;
  }

  summary(): LatencySummary {
    const n = Math.min(this.count, this.size);
    if (n === 0) return { count: 0, lastMs: undefined, p50Ms: undefined, p99Ms: undefined, maxMs: undefined };
    const sorted = this.ring.slice(0, n).sort();
    const at = (q: number): number => sorted[Math.min(n - 1, Math.floor(q * n))]!;
    return { count: this.count, lastMs: this.last, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: sorted[n - 1] };
  }
}
