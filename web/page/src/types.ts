/**
 * Types shared by the main thread and the worker: what one redraw needs
 * (a {@link ViewFrame}), the fields `window.orderbook` exposes, and the
 * messages between the page and its worker. Everything here is plain data
 * (strings and numbers, no `bigint`), so it crosses `postMessage` as is.
 *
 * @module
 */
import type { ConnectionState, Encoding } from "@orderbook/client";

/** The one subscription the page shows. */
export interface Selection {
  symbol: string;
  /** Levels per side asked of the node; 0 = the full book. */
  depth: number;
  /** Conflation interval in ms; 0 = every change. */
  intervalMs: number;
}

/** Rows per side the ladder shows for a selection: the depth, or 20 for the full book. */
export function ladderRows(selection: Pick<Selection, "depth">): number {
  return selection.depth > 0 ? selection.depth : 20;
}

/** One symbol's subscription, as `window.orderbook.symbols[symbol]` shows it. */
export interface SymbolMirror {
  epoch: string;
  seq: string;
  checksum: number;
  verified: number;
  resyncs: number;
  gaps: number;
  checksumFailures: number;
  snapshots: number;
  resumes: number;
  state: "subscribing" | "live" | "resyncing" | "stale" | "failed";
  depth: number;
  intervalMs: number;
  /** How the last `Subscribed` started the stream; null before the first one. */
  lastStart: "resumed" | "snapshot" | null;
  /** The last `Subscribed`'s snapshot reason (`new`, `stale_epoch`, ...); "" for a resume or none yet. */
  lastReason: string;
  /** Whether the last `Subscribed` came in another epoch than the book held before. */
  newEpoch: boolean;
}

/** Connection counters, as `window.orderbook.stats` shows them. */
export interface StatsMirror {
  connects: number;
  reconnects: number;
  messages: number;
  decodeErrors: number;
  /** Latency of deltas from the node's publish time, ms; null before the first delta. */
  latency: { p50Ms: number | null; p99Ms: number | null; lastMs: number | null };
}

/** A whole book as exact decimal strings, best first (the shape of `GET /book`'s levels). */
export interface BookMirror {
  epoch: string;
  seq: string;
  checksum: number;
  bids: [string, string][];
  asks: [string, string][];
}

/** One ladder row: exact strings for the text, numbers for drawing only. */
export interface LadderLevel {
  price: string;
  size: string;
  /** Cumulative size from the best level to this one, exact. */
  total: string;
  /** Approximations for bar widths and chart geometry: never displayed. */
  priceN: number;
  sizeN: number;
  totalN: number;
}

/** Everything the ladder and the depth chart draw for the selected symbol. */
export interface LadderModel {
  symbol: string;
  state: SymbolMirror["state"];
  epoch: string;
  seq: string;
  /** Rows per side the page shows. */
  rows: number;
  /** Best first, at most `rows` each. */
  bids: LadderLevel[];
  asks: LadderLevel[];
  /** ask - bid and (bid + ask) / 2, exact; null when a side is empty. */
  spread: string | null;
  mid: string | null;
  midN: number | null;
  /** Largest size and largest cumulative size among the rows shown (both sides). */
  maxSize: number;
  maxTotal: number;
  /** Levels held in the book per side (may exceed `rows`). */
  bidLevels: number;
  askLevels: number;
  priceScale: number;
  sizeScale: number;
  base: string;
  quote: string;
  venue: string;
  priceIncrement: string;
  sizeIncrement: string;
}

/** Subscription options of a watched symbol that is not the selected one: the full book, every change. */
export const WATCH_OPTIONS: Readonly<Pick<Selection, "depth" | "intervalMs">> = Object.freeze({ depth: 0, intervalMs: 0 });

/**
 * One row of the markets panel, as `window.orderbook.markets()` gives it:
 * best bid and ask and their spread as exact decimals at the instrument's
 * price scale (null while a side is empty or the instrument is not known).
 */
export interface MarketRow {
  symbol: string;
  state: SymbolMirror["state"];
  bid: string | null;
  ask: string | null;
  /** ask - bid, exact; null when a side is empty. */
  spread: string | null;
  /** Seq of the book held ("0" before the first snapshot). */
  seq: string;
}

/** One redraw's worth of state, built where the client runs. */
export interface ViewFrame {
  connection: ConnectionState;
  encoding: Encoding;
  selected: Selection | null;
  /** The selected symbol's ladder; null before its instrument is known. */
  ladder: LadderModel | null;
  symbols: Record<string, SymbolMirror>;
  /**
   * The markets panel: the selected symbol (first, unless it is watched) and
   * every watched symbol, in the watch list's order.
   */
  markets: MarketRow[];
  stats: StatsMirror;
  /** Frames received per second over the last second. */
  messagesPerSecond: number;
}

/** Something worth telling the user (and the `events` list). */
export interface NotableEvent {
  /** Wall-clock ms. */
  at: number;
  kind: "subscribed" | "resync" | "connection" | "stale" | "error" | "page";
  /** The short line of `window.orderbook.events`: "resync BTC-USD gap". */
  line: string;
  /** The text of the page's event line, or null when it is not shown there. */
  notice: string | null;
  /** Higher replaces a shown notice at once; lower waits until it has been shown a while. */
  priority: number;
  level: "info" | "ok" | "warn" | "error";
  symbol: string | null;
  /** For errors: the server's code (`UNKNOWN_SYMBOL`). For connection: the new state. */
  code: string | null;
}

/** Page → worker. */
export type ToWorker =
  | { type: "init"; url: string; encoding: Encoding; token: string | null }
  | { type: "select"; selection: Selection }
  | { type: "watch"; symbols: string[] }
  | { type: "pull" };

/** Worker → page. */
export type FromWorker =
  | { type: "dirty"; connection: ConnectionState }
  | { type: "event"; event: NotableEvent; connection: ConnectionState }
  | { type: "frame"; frame: ViewFrame; streamMs: number };
