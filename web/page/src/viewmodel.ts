/**
 * The view model: from the client's exact book (ticks and lots, `bigint`) to
 * what the page draws. Pure functions, run wherever the client runs (the main
 * thread, or the worker with `?worker=1`), so both paths show the same thing.
 *
 * Prices and sizes are formatted from `bigint` with `formatUnits`: never
 * through a float. The `…N` numbers beside them only size bars and place
 * points on the depth chart.
 *
 * @module
 */
import { formatUnits, type ClientStats, type SymbolView } from "@orderbook/client";
import type { BookMirror, LadderLevel, LadderModel, MarketRow, StatsMirror, SymbolMirror } from "./types.js";

type Level = readonly [bigint, bigint];

/** `units / 10^scale` as a number, for drawing only. */
function approx(units: bigint, scale: number): number {
  return Number(units) / 10 ** scale;
}

/**
 * The mid price `(bid + ask) / 2`, exact: at the price scale when the sum is
 * even, else at one more decimal (the half tick).
 */
export function exactMid(bid: bigint, ask: bigint, priceScale: number): string {
  const sum = bid + ask;
  return sum % 2n === 0n ? formatUnits(sum / 2n, priceScale) : formatUnits(sum * 5n, priceScale + 1);
}

/** The spread `ask - bid`, exact (negative for a crossed book). */
export function exactSpread(bid: bigint, ask: bigint, priceScale: number): string {
  return formatUnits(ask - bid, priceScale);
}

function side(levels: readonly Level[], priceScale: number, sizeScale: number): LadderLevel[] {
  const out: LadderLevel[] = new Array(levels.length);
  let total = 0n;
  for (let i = 0; i < levels.length; i++) {
    const [p, q] = levels[i]!;
    total += q;
    out[i] = {
      price: formatUnits(p, priceScale),
      size: formatUnits(q, sizeScale),
      total: formatUnits(total, sizeScale),
      priceN: approx(p, priceScale),
      sizeN: approx(q, sizeScale),
      totalN: approx(total, sizeScale),
    };
  }
  return out;
}

/** The ladder of one subscription: its best `rows` levels per side; null without an instrument. */
export function ladderModel(view: SymbolView, rows: number): LadderModel | null {
  const inst = view.instrument;
  if (inst === undefined) return null;
  const ps = inst.priceScale;
  const ss = inst.sizeScale;
  const book = view.book;
  const bidLevels = book.bids(rows);
  const askLevels = book.asks(rows);
  const bids = side(bidLevels, ps, ss);
  const asks = side(askLevels, ps, ss);
  let maxSize = 0;
  for (const l of bids) if (l.sizeN > maxSize) maxSize = l.sizeN;
  for (const l of asks) if (l.sizeN > maxSize) maxSize = l.sizeN;
  const maxTotal = Math.max(bids[bids.length - 1]?.totalN ?? 0, asks[asks.length - 1]?.totalN ?? 0);
  const bb = bidLevels[0];
  const ba = askLevels[0];
  const both = bb !== undefined && ba !== undefined;
  return {
    symbol: view.symbol,
    state: view.state,
    epoch: view.epoch.toString(),
    seq: view.seq.toString(),
    rows,
    bids,
    asks,
    spread: both ? exactSpread(bb[0], ba[0], ps) : null,
    mid: both ? exactMid(bb[0], ba[0], ps) : null,
    midN: both ? approx(bb[0] + ba[0], ps) / 2 : null,
    maxSize,
    maxTotal,
    bidLevels: book.bidCount,
    askLevels: book.askCount,
    priceScale: ps,
    sizeScale: ss,
    base: inst.base,
    quote: inst.quote,
    venue: inst.venue,
    priceIncrement: formatUnits(inst.priceIncrement > 0n ? inst.priceIncrement : 1n, ps),
    sizeIncrement: formatUnits(inst.sizeIncrement > 0n ? inst.sizeIncrement : 1n, ss),
  };
}

/**
 * One row of the markets panel: the best bid and ask of the book held, exact
 * at the instrument's price scale. `view` is undefined for a symbol the
 * client does not hold (yet): a row that says so.
 */
export function marketRow(symbol: string, view: SymbolView | undefined): MarketRow {
  if (view === undefined) return { symbol, state: "subscribing", bid: null, ask: null, spread: null, seq: "0" };
  const inst = view.instrument;
  const bb = inst === undefined ? undefined : view.book.bestBid();
  const ba = inst === undefined ? undefined : view.book.bestAsk();
  const ps = inst?.priceScale ?? 0;
  return {
    symbol,
    state: view.state,
    bid: bb === undefined ? null : formatUnits(bb[0], ps),
    ask: ba === undefined ? null : formatUnits(ba[0], ps),
    spread: bb === undefined || ba === undefined ? null : exactSpread(bb[0], ba[0], ps),
    seq: view.seq.toString(),
  };
}

/** One subscription as `window.orderbook.symbols[symbol]`. */
export function symbolMirror(view: SymbolView): SymbolMirror {
  const c = view.counters;
  return {
    epoch: view.epoch.toString(),
    seq: view.seq.toString(),
    checksum: view.checksum,
    verified: c.verified,
    resyncs: c.resyncs,
    gaps: c.gaps,
    checksumFailures: c.checksumFailures,
    snapshots: c.snapshots,
    resumes: c.resumes,
    state: view.state,
    depth: view.depth,
    intervalMs: view.intervalMs,
    lastStart: view.lastStart,
    lastReason: view.lastReason,
    newEpoch: view.newEpoch,
  };
}

/** The connection counters as `window.orderbook.stats`. */
export function statsMirror(stats: ClientStats): StatsMirror {
  const l = stats.latency;
  return {
    connects: stats.connects,
    reconnects: stats.reconnects,
    messages: stats.messages,
    decodeErrors: stats.decodeErrors,
    latency: { p50Ms: l.p50Ms ?? null, p99Ms: l.p99Ms ?? null, lastMs: l.lastMs ?? null },
  };
}

/** The whole book held for a subscription, as exact decimal strings; null without an instrument. */
export function bookMirror(view: SymbolView): BookMirror | null {
  const inst = view.instrument;
  if (inst === undefined) return null;
  const fmt = ([p, q]: Level): [string, string] => [formatUnits(p, inst.priceScale), formatUnits(q, inst.sizeScale)];
  return {
    epoch: view.epoch.toString(),
    seq: view.seq.toString(),
    checksum: view.checksum,
    bids: view.book.bids().map(fmt),
    asks: view.book.asks().map(fmt),
  };
}
