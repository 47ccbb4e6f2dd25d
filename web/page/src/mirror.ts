/**
 * `window.orderbook`: a read-only view of the page for automated tests and
 * for the console. The object is frozen and every field is a getter or a
 * function; nothing can be assigned. Every read returns a fresh copy, so
 * changing what it returns changes nothing in the page. 64-bit values
 * (epochs, seqs) are decimal strings; prices and sizes are exact decimal
 * strings with exactly the instrument's scale, as `GET /book` gives them.
 *
 * ```ts
 * window.orderbook = {
 *   version: 1,
 *
 *   // The connection: the client's state.
 *   connection: "connecting" | "live" | "reconnecting" | "closed",
 *
 *   // The view on screen; symbol is "" until one is chosen (the first of /symbols by default).
 *   selected: { symbol: string, depth: number, intervalMs: number },
 *
 *   // Every subscription the client holds, a fresh object per read: the selected symbol, and
 *   // with ?watch= every watched one (the same client decodes and verifies them all).
 *   symbols: {
 *     [symbol: string]: {
 *       epoch: string, seq: string,          // of the book held ("0" before the first snapshot)
 *       checksum: number,                    // CRC-32 of the book held, as last verified
 *       verified: number,                    // snapshots and deltas whose checksum matched
 *       resyncs: number, gaps: number, checksumFailures: number,
 *       snapshots: number, resumes: number,
 *       state: "subscribing" | "live" | "resyncing" | "stale" | "failed",
 *       depth: number, intervalMs: number,   // as asked of the node
 *       lastStart: "resumed" | "snapshot" | null,  // how the last Subscribed started the stream
 *       lastReason: string,                  // its snapshot reason: "new", "stale_epoch", "history_exhausted",
 *                                            // "ahead", "unsupported"; "" for a resume
 *       newEpoch: boolean,                   // the last Subscribed came in another epoch than the book held
 *     }
 *   },
 *
 *   // Connection counters; latency of deltas from the node's publish time, ms (null before the first delta).
 *   stats: { connects: number, reconnects: number, messages: number, decodeErrors: number,
 *            latency: { p50Ms: number | null, p99Ms: number | null, lastMs: number | null } },
 *
 *   // The last 50 notable events, oldest first, as short lines:
 *   //   "resumed BTC-USD at 123", "snapshot BTC-USD new", "snapshot BTC-USD stale_epoch",
 *   //   "resync BTC-USD gap", "stale BTC-USD source_unreachable", "stale BTC-USD cleared",
 *   //   "error NOPE UNKNOWN_SYMBOL", "connection live", "connection reconnecting 1006",
 *   //   "connection closed 1008", and the page's own: "symbol NOPE unknown",
 *   //   "symbols unreachable", "symbols reachable", "url depth=7x is not an integer …".
 *   // A line repeated within 3 s replaces the previous one.
 *   events: string[],
 *
 *   // The whole book the client holds for a symbol, best first per side, exact decimal strings
 *   // [price, size] (the shape of GET /book's bids and asks). null when the symbol is not
 *   // subscribed or its instrument is not known yet, and always null with ?worker=1.
 *   book(symbol: string): { epoch: string, seq: string, checksum: number,
 *                           bids: [string, string][], asks: [string, string][] } | null,
 *
 *   // Exactly what the ladder shows now, best first per side (at most its row count per side).
 *   ladder(): { symbol: string, seq: string, bids: [string, string][], asks: [string, string][] },
 *
 *   // Exactly what the markets panel shows now (?watch=), one row per symbol: the selected one
 *   // first unless it is watched, then the watched ones in order (watch=all: the order of
 *   // /symbols). bid and ask are the best prices held, exact decimals at the instrument's price
 *   // scale; spread = ask - bid, exact; each null while that side is empty or the instrument is
 *   // not known yet. seq is the book's ("0" before the first snapshot). Without ?watch= the
 *   // panel is hidden and this holds the selected symbol's row alone. The same in both modes
 *   // (with ?worker=1 the rows come in the worker's frames). A fresh array per call.
 *   markets(): { symbol: string,
 *                state: "subscribing" | "live" | "resyncing" | "stale" | "failed",
 *                bid: string | null, ask: string | null, spread: string | null,
 *                seq: string }[],
 *
 *   // Called synchronously after each verified snapshot or delta is applied, before the next
 *   // message is handled: book(symbol) read inside it is the book at exactly that seq.
 *   // Called for every subscription (the selected symbol and the watched ones).
 *   // With ?worker=1: called once per frame the worker posts, with that frame's seq for the
 *   // selected symbol, and for each watched symbol whose seq moved since the previous frame.
 *   // Returns a function that removes the listener.
 *   onBook(listener: (symbol: string, seq: string) => void): () => void,
 *
 *   // How many times the page has redrawn (at most once per animation frame).
 *   frames: number,
 *
 *   // Main-thread time, ms since the page loaded:
 *   //   streamMs: handling the stream (main mode: every WebSocket message: decode, checks,
 *   //             book update, listeners; worker mode: handling the worker's messages),
 *   //   renderMs: inside the redraws, longTasks: long tasks (> 50 ms) seen by a PerformanceObserver,
 *   //   workerStreamMs: the worker's own stream handling time (null in main mode).
 *   perf: { mode: "main" | "worker", streamMs: number, renderMs: number, longTasks: number,
 *           workerStreamMs: number | null },
 * }
 * ```
 *
 * @module
 */
import type { ConnectionState } from "@orderbook/client";
import type { LadderShown } from "./ladder.js";
import type { BookListener, Source } from "./source.js";
import type { BookMirror, MarketRow, Selection, StatsMirror, SymbolMirror } from "./types.js";

export interface PerfMirror {
  mode: "main" | "worker";
  streamMs: number;
  renderMs: number;
  longTasks: number;
  workerStreamMs: number | null;
}

export interface OrderbookMirror {
  readonly version: 1;
  readonly connection: ConnectionState;
  readonly selected: Selection;
  readonly symbols: Record<string, SymbolMirror>;
  readonly stats: StatsMirror;
  readonly events: string[];
  book(symbol: string): BookMirror | null;
  ladder(): LadderShown;
  markets(): MarketRow[];
  onBook(listener: BookListener): () => void;
  readonly frames: number;
  readonly perf: PerfMirror;
}

export interface MirrorSources {
  source: Source;
  selected(): Selection;
  events(): string[];
  ladder(): LadderShown;
  markets(): MarketRow[];
  frames(): number;
  perf(): PerfMirror;
}

declare global {
  interface Window {
    orderbook: OrderbookMirror;
  }
}

/** Defines `window.orderbook` (not writable, not configurable, frozen). */
export function installMirror(s: MirrorSources): OrderbookMirror {
  const mirror: OrderbookMirror = Object.freeze({
    version: 1 as const,
    get connection() {
      return s.source.connection();
    },
    get selected() {
      return { ...s.selected() };
    },
    get symbols() {
      return s.source.symbols();
    },
    get stats() {
      return s.source.stats();
    },
    get events() {
      return s.events();
    },
    book(symbol: string) {
      return s.source.book(String(symbol));
    },
    ladder() {
      return s.ladder();
    },
    markets() {
      return s.markets();
    },
    onBook(listener: BookListener) {
      if (typeof listener !== "function") throw new TypeError("onBook needs a function");
      return s.source.onBook(listener);
    },
    get frames() {
      return s.frames();
    },
    get perf() {
      return s.perf();
    },
  });
  Object.defineProperty(window, "orderbook", { value: mirror, writable: false, enumerable: true, configurable: false });
  return mirror;
}
