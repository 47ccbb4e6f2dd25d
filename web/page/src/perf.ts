/**
 * Where the main thread's time goes: stream handling (measured by the
 * source), redraws (measured around the redraw), and long tasks (over 50 ms,
 * from a `PerformanceObserver`, where the browser reports them).
 *
 * @module
 */
export class PerfCounters {
  renderMs = 0;
  longTasks = 0;

  constructor() {
    try {
      new PerformanceObserver((list) => {
        this.longTasks += list.getEntries().length;
      }).observe({ type: "longtask", buffered: true });
    } catch {
      // No long-task timing in this browser: the count stays 0.
    }
  }

  /** Runs `f`, adding its duration to `renderMs`. */
  timeRender<T>(f: () => T): T {
    const t0 = performance.now();
    try {
      return f();
    } finally {
      this.renderMs += performance.now() - t0;
    }
  }
}
