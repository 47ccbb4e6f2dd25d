/**
 * The live trading page served at `GET /` by every node: one symbol's
 * verified book as a price ladder and a depth chart, with the stream's
 * health (epoch, seq, checksum, resyncs, latency) beside it, and with
 * `?watch=` a markets panel of other symbols' best bid and ask.
 *
 * This module wires the parts together: the URL state, the symbol list, the
 * data source (the client on the main thread, or in a worker with
 * `?worker=1`), the views, and `window.orderbook`. Data is updated on every
 * message; the DOM and canvas are redrawn at most once per animation frame.
 *
 * @module
 */
import { Controls } from "./controls.js";
import { DepthChart } from "./depth-chart.js";
import { EventJournal } from "./events.js";
import { LadderView } from "./ladder.js";
import { MarketsView } from "./markets.js";
import { installMirror, type PerfMirror } from "./mirror.js";
import { PerfCounters } from "./perf.js";
import { FrameScheduler } from "./scheduler.js";
import { LocalSource, WorkerSource, type Source, type SourceOptions } from "./source.js";
import { StatusView } from "./status.js";
import { SymbolDirectory, type SymbolInfo } from "./symbols.js";
import { ladderRows, type MarketRow, type NotableEvent, type Selection, type ViewFrame } from "./types.js";
import { endpoint, readParams, writeSelection } from "./url-state.js";

const params = readParams(location.search);
const journal = new EventJournal();
const perf = new PerfCounters();

let selection: Selection | null = null;
let lastFrame: ViewFrame | null = null;
let frames = 0;
let uiDirty = true;
let chartDirty = false;
/** The URL's symbol still has to be checked against /symbols. */
let unchecked = params.symbol !== null;
let unreachable = false;
let titleAt = 0;
/** The watched symbols last shown in the panel's note, joined by newlines. */
let watchKey: string | null = null;
/** Symbols of an explicit `?watch=` list that /symbols does not have, already reported. */
const watchUnknown = new Set<string>();
/** Depth and interval to use once a symbol is chosen (from the URL, or the controls before that). */
const pending = { depth: params.depth, intervalMs: params.intervalMs };

function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (e === null) throw new Error(`#${id} missing`);
  return e as T;
}

const scheduler = new FrameScheduler(draw);
const invalidate = (): void => scheduler.invalidate();

const ladder = new LadderView(byId("ladder"));
const chart = new DepthChart(byId<HTMLCanvasElement>("depth-chart"), () => {
  chartDirty = true;
  invalidate();
});
const status = new StatusView(journal);
const instrumentEl = byId("instrument");
const encodingEl = byId("m-encoding");
/** The user picked a symbol (the picker, or a row of the markets panel). */
function pickSymbol(symbol: string): void {
  if (selection !== null) select({ ...selection, symbol });
}
const markets = new MarketsView(byId("markets"), pickSymbol);
const controls = new Controls({
  onSymbol: pickSymbol,
  onDepth: (depth) => select({ ...current(), depth }),
  onInterval: (intervalMs) => select({ ...current(), intervalMs }),
});
// The `token` URL parameter also goes to /symbols (a node started with --http-token).
const directory = new SymbolDirectory(endpoint("symbols"), { onList, onFailure }, params.token);

// Last: the source starts connecting at once and may call back into the views.
const sourceOptions: SourceOptions = {
  url: endpoint("ws"),
  encoding: params.encoding,
  token: params.token,
  onInvalidate: invalidate,
  onEvent,
};
const source: Source = params.worker ? new WorkerSource(sourceOptions) : new LocalSource(sourceOptions);

byId("m-mode").textContent = source.mode === "worker" ? "worker" : "main";
byId("m-mode").title =
  source.mode === "worker"
    ? "The client (decode, verification, books) runs in a Web Worker (?worker=1)"
    : "The client runs on the main thread (add ?worker=1 to move it to a Web Worker)";

for (const p of params.problems) journal.page(`url ${p}`, p, "warn", 2);

/** The selection, or what the URL asked for before a symbol is chosen. */
function current(): Selection {
  return selection ?? { symbol: "", ...pending };
}

function select(next: Selection): void {
  if (!next.symbol) {
    pending.depth = next.depth;
    pending.intervalMs = next.intervalMs;
    return;
  }
  const prev = selection;
  if (prev !== null && prev.symbol === next.symbol && prev.depth === next.depth && prev.intervalMs === next.intervalMs) return;
  selection = { ...next };
  source.select(selection);
  writeSelection(selection);
  controls.show(selection);
  ladder.setRows(ladderRows(selection));
  if (prev?.symbol !== next.symbol) ladder.requestCenter();
  uiDirty = true;
  invalidate();
}

/** Falls back to the first symbol after `bad` turned out unknown. */
function fallback(bad: string): void {
  if (selection?.symbol !== bad) return;
  unchecked = false;
  const first = directory.symbols.find((s) => s.symbol !== bad);
  const text = first
    ? `unknown symbol "${bad}": showing ${first.symbol} instead`
    : `unknown symbol "${bad}"`;
  journal.page(`symbol ${bad} unknown`, text, "error", 4);
  if (first) select({ ...selection, symbol: first.symbol });
  else directory.refreshNow();
  uiDirty = true;
  invalidate();
}

function onEvent(event: NotableEvent): void {
  journal.add(event);
  if (event.kind === "error" && event.code === "UNKNOWN_SYMBOL" && event.symbol !== null) {
    if (directory.loaded) fallback(event.symbol);
    else directory.refreshNow(); // onList falls back once the list is known
  }
  uiDirty = true;
  invalidate();
}

function onList(list: SymbolInfo[]): void {
  if (unreachable) {
    unreachable = false;
    // Replaces "node unreachable" on the event line, but not newer news (a new epoch).
    journal.page("symbols reachable", "node reachable again", "ok", journal.notice?.line === "symbols unreachable" ? 3 : 1);
  }
  status.setBanner(list.length === 0 ? "This node has no symbols yet (waiting for a publisher on /feed)." : null);
  controls.setSymbols(list, selection?.symbol ?? params.symbol);
  const first = list[0];
  if (selection === null) {
    if (first === undefined) return;
    const wanted = params.symbol;
    if (wanted !== null && !list.some((s) => s.symbol === wanted)) {
      journal.page(`symbol ${wanted} unknown`, `unknown symbol "${wanted}": showing ${first.symbol} instead`, "error", 4);
      select({ ...current(), symbol: first.symbol });
    } else {
      select({ ...current(), symbol: wanted ?? first.symbol });
    }
    unchecked = false;
  } else if (unchecked) {
    unchecked = false;
    if (!list.some((s) => s.symbol === selection!.symbol)) fallback(selection.symbol);
  }
  updateWatch(list);
  uiDirty = true;
  invalidate();
}

/**
 * Keeps the watched symbols in step with `?watch=` and the latest /symbols:
 * all of them, or those of the URL's list that the node has (in the URL's order).
 */
function updateWatch(list: readonly SymbolInfo[]): void {
  const w = params.watch;
  if (w === null) return;
  let wanted: string[];
  if (w === "all") {
    wanted = list.map((s) => s.symbol);
  } else {
    const known = new Set(list.map((s) => s.symbol));
    wanted = w.filter((s) => known.has(s));
    for (const s of w) {
      if (known.has(s)) watchUnknown.delete(s);
      else if (!watchUnknown.has(s)) {
        watchUnknown.add(s);
        journal.page(`watch ${s} unknown`, `watch: unknown symbol "${s}" (not in /symbols)`, "warn", 2);
      }
    }
  }
  // Given on every refresh: the engine also retries a watched symbol the node had refused as unknown.
  source.watch(wanted);
  const key = wanted.join("\n");
  if (key === watchKey) return;
  watchKey = key;
  const n = `${wanted.length} symbol${wanted.length === 1 ? "" : "s"}`;
  markets.show(`${w === "all" ? `all ${n}` : n} · full book, every change`);
}

function onFailure(message: string, retryInMs: number): void {
  if (!unreachable) {
    unreachable = true;
    journal.page("symbols unreachable", "node unreachable", "error", 3);
  }
  status.setBanner(`Node unreachable: GET /symbols failed (${message}). Retrying in ${(retryInMs / 1000).toFixed(1)} s…`);
  uiDirty = true;
  invalidate();
}

function perfNow(): PerfMirror {
  return {
    mode: source.mode,
    streamMs: source.streamMs(),
    renderMs: perf.renderMs,
    longTasks: perf.longTasks,
    workerStreamMs: source.workerStreamMs(),
  };
}

function placeholder(): string {
  if (selection === null) return unreachable ? "node unreachable" : "loading symbols…";
  const state = lastFrame?.symbols[selection.symbol]?.state;
  if (state === "failed") return `${selection.symbol} is not available`;
  return `subscribing to ${selection.symbol}…`;
}

function draw(): void {
  perf.timeRender(() => {
    const frame = source.takeFrame();
    if (frame !== null) lastFrame = frame;
    if (frame === null && !uiDirty && !chartDirty) return;
    const symbol = selection?.symbol ?? "";
    const model = lastFrame?.ladder ?? null;
    const mine = model !== null && model.symbol === symbol ? model : null;
    if (frame !== null || uiDirty) {
      ladder.render(mine, symbol, placeholder());
      status.render(lastFrame, source.connection(), selection, perfNow(), frames);
      const info = mine
        ? `${mine.base}/${mine.quote} · ${mine.venue} · tick ${mine.priceIncrement} · lot ${mine.sizeIncrement}`
        : "";
      if (instrumentEl.textContent !== info) instrumentEl.textContent = info;
      const enc = lastFrame?.encoding ?? params.encoding;
      if (encodingEl.textContent !== enc) encodingEl.textContent = enc;
      markets.render(lastFrame?.markets ?? [], lastFrame?.symbols ?? {}, symbol);
    }
    chart.render(frame !== null || uiDirty ? mine : undefined);
    uiDirty = false;
    chartDirty = false;
    frames++;
    const now = performance.now();
    if (now - titleAt > 500) {
      titleAt = now;
      const title = mine?.mid ? `${mine.mid} · ${symbol} · orderbook` : symbol ? `${symbol} · orderbook` : "orderbook";
      if (document.title !== title) document.title = title;
    }
  });
}

installMirror({
  source,
  selected: current,
  events: () => journal.lines(),
  ladder: () => ladder.snapshot(),
  markets: (): MarketRow[] => structuredClone(lastFrame?.markets ?? []),
  frames: () => frames,
  perf: perfNow,
});

document.body.dataset.connection = source.connection();
document.body.dataset.mode = source.mode;
if (params.symbol !== null) select({ symbol: params.symbol, depth: params.depth, intervalMs: params.intervalMs });
else controls.show({ symbol: "", ...pending });
if (params.watch !== null) markets.show(params.watch === "all" ? "all symbols · full book, every change" : "full book, every change");
directory.start();
invalidate();
