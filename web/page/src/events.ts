/**
 * The journal of notable events: the last 50 short lines
 * (`window.orderbook.events`, the event log panel) and the notice of the
 * page's event line. A notice stays up at least {@link HOLD_MS} unless a
 * notice of the same or higher priority replaces it, so that "resync: gap"
 * is not hidden at once by the routine snapshot that follows it.
 * Priorities: 1 routine ("snapshot at seq N"), 2 URL problems, 3 notable
 * (resumed, new epoch, resync, reconnecting, stale, node unreachable or back),
 * 4 errors (an unknown symbol, a refused subscription, a closed connection).
 *
 * @module
 */
import type { NotableEvent } from "./types.js";

export const MAX_EVENTS = 50;
export const HOLD_MS = 5000;
const DEDUPE_MS = 3000;

export class EventJournal {
  private readonly items: NotableEvent[] = [];
  private shown: NotableEvent | null = null;
  /** Bumped on every change, so views redraw only when needed. */
  version = 0;

  add(event: NotableEvent): void {
    const last = this.items[this.items.length - 1];
    // The same line again within moments (a failed handshake reports
    // "reconnecting" twice: while probing /readyz, then with its delay): one line.
    if (last !== undefined && last.line === event.line && event.at - last.at < DEDUPE_MS) this.items.pop();
    this.items.push(event);
    if (this.items.length > MAX_EVENTS) this.items.splice(0, this.items.length - MAX_EVENTS);
    if (event.notice !== null) {
      const cur = this.shown;
      if (cur === null || event.priority >= cur.priority || event.at - cur.at >= HOLD_MS) this.shown = event;
    }
    this.version++;
  }

  /** A notice from the page itself (not the stream). */
  page(line: string, notice: string, level: NotableEvent["level"] = "warn", priority = 4): void {
    this.add({ at: Date.now(), kind: "page", line, notice, priority, level, symbol: null, code: null });
  }

  /** The lines, oldest first. */
  lines(): string[] {
    return this.items.map((e) => e.line);
  }

  /** The events, newest first. */
  recent(): readonly NotableEvent[] {
    return [...this.items].reverse();
  }

  get notice(): NotableEvent | null {
    return this.shown;
  }
}
