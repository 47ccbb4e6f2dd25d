/**
 * The stream engine: one {@link OrderbookClient}, the page's selected
 * subscription and its watched ones (`?watch=`), and what the page needs
 * from them (frames, notable events, mirrors). It runs on the main thread by
 * default, or inside the worker (`?worker=1`): the same code either way.
 *
 * The selected symbol is subscribed with the selection's depth and interval;
 * every other watched symbol with {@link WATCH_OPTIONS} (the full book, every
 * change). All of them go through the same client: decoded and verified alike.
 *
 * It never touches the DOM. It says "something changed" through `onChange`
 * (the caller decides when to build a frame: once per animation frame) and
 * reports notable events through `onEvent` as they happen.
 *
 * @module
 */
import {
  OrderbookClient,
  type ConnectionState,
  type Encoding,
  type WebSocketFactory,
  type WebSocketLike,
} from "@orderbook/client";
import type { NotableEvent, Selection, SymbolMirror, ViewFrame, BookMirror, MarketRow, StatsMirror } from "./types.js";
import { ladderRows, WATCH_OPTIONS } from "./types.js";
import { bookMirror, ladderModel, marketRow, statsMirror, symbolMirror } from "./viewmodel.js";

export interface EngineOptions {
  /** The node's `/ws`. */
  url: string;
  encoding: Encoding;
  token: string | null;
  /** Something changed: a frame built now would differ. Called often; coalesce. */
  onChange: () => void;
  /** A notable event, at once. */
  onEvent: (event: NotableEvent) => void;
  /** Called synchronously after each verified snapshot or delta is applied. */
  onBook?: (symbol: string, seq: string) => void;
  /** Time spent handling each WebSocket message (decode, verify, listeners), ms. */
  onStreamTime?: (ms: number) => void;
}

/**
 * A WebSocket factory whose sockets time every `message` handler run: the
 * client's whole work per frame (decode, checks, book update, listeners).
 */
function timedWebSocket(onTime: (ms: number) => void): WebSocketFactory {
  return (url, protocols) => {
    const ws = new WebSocket(url, protocols);
    const proxy: WebSocketLike = {
      get binaryType() {
        return ws.binaryType;
      },
      set binaryType(value: string) {
        ws.binaryType = value as BinaryType;
      },
      get readyState() {
        return ws.readyState;
      },
      get protocol() {
        return ws.protocol;
      },
      onopen: null,
      onmessage: null,
      onclose: null,
      onerror: null,
      send: (data) => ws.send(data as string | ArrayBufferView<ArrayBuffer>),
      close: (code, reason) => ws.close(code, reason),
    };
    ws.onopen = (ev) => proxy.onopen?.(ev);
    ws.onerror = (ev) => proxy.onerror?.(ev);
    ws.onclose = (ev) => proxy.onclose?.(ev);
    ws.onmessage = (ev) => {
      const t0 = performance.now();
      try {
        proxy.onmessage?.(ev);
      } finally {
        onTime(performance.now() - t0);
      }
    };
    return proxy;
  };
}

/** Notice priorities: a higher one replaces the shown notice at once. */
const P_INFO = 1;
const P_NOTABLE = 3;
const P_ALERT = 4;

export class StreamEngine {
  readonly client: OrderbookClient;
  private readonly options: EngineOptions;
  private selection: Selection | null = null;
  /** The watched symbols, in the order the page gave them. */
  private watched: string[] = [];
  private watchedSet = new Set<string>();
  /** Symbols whose subscription the node refused as unknown (retried when watched again). */
  private readonly unknown = new Set<string>();
  private rateTimer: ReturnType<typeof setInterval>;
  private rate = 0;
  private rateMessages = 0;
  private rateAt = performance.now();

  constructor(options: EngineOptions) {
    this.options = options;
    const timing = options.onStreamTime;
    this.client = new OrderbookClient({
      url: options.url,
      encoding: options.encoding,
      ...(options.token ? { token: options.token } : {}),
      ...(timing !== undefined ? { webSocket: timedWebSocket(timing) } : {}),
    });
    const c = this.client;
    const changed = options.onChange;
    c.on("book", (e) => {
      options.onBook?.(e.symbol, e.seq.toString());
      changed();
    });
    c.on("symbolState", changed);
    c.on("subscribed", (e) => {
      const seq = e.seq.toString();
      if (e.start === "resumed") {
        this.emit("subscribed", `resumed ${e.symbol} at ${seq}`, `resumed at seq ${seq}`, P_NOTABLE, "ok", e.symbol);
      } else if (e.reason === "stale_epoch" || e.newEpoch) {
        this.emit("subscribed", `snapshot ${e.symbol} ${e.reason}`, "new epoch: fresh snapshot", P_NOTABLE, "warn", e.symbol);
      } else if (e.reason === "history_exhausted" || e.reason === "ahead") {
        this.emit("subscribed", `snapshot ${e.symbol} ${e.reason}`, `fresh snapshot: ${e.reason.replace("_", " ")}`, P_NOTABLE, "warn", e.symbol);
      } else {
        this.emit("subscribed", `snapshot ${e.symbol} ${e.reason}`, `snapshot at seq ${seq}`, P_INFO, "info", e.symbol);
      }
      changed();
    });
    c.on("resync", (e) => {
      this.emit("resync", `resync ${e.symbol} ${e.reason}`, `resync: ${e.reason}`, P_NOTABLE, "warn", e.symbol);
      changed();
    });
    c.on("stale", (e) => {
      if (e.stale) {
        this.emit("stale", `stale ${e.symbol} source_unreachable`, "node stale (source unreachable)", P_NOTABLE, "warn", e.symbol);
      } else {
        this.emit("stale", `stale ${e.symbol} cleared`, "node source reachable again", P_NOTABLE, "ok", e.symbol);
      }
      changed();
    });
    c.on("error", (e) => {
      // Our Unsubscribe of a symbol whose Subscribe the node refused (the
      // page moved on before the refusal came back): nothing to report.
      if (e.code === "NOT_SUBSCRIBED" && e.symbol !== undefined && c.symbol(e.symbol) === undefined) return;
      if (e.code === "UNKNOWN_SYMBOL" && e.symbol !== undefined) this.unknown.add(e.symbol);
      const who = e.symbol ?? "-";
      this.emit("error", `error ${who} ${e.code}`, `error: ${e.message}`, e.fatal ? P_ALERT : P_NOTABLE, "error", e.symbol ?? null, e.code);
      changed();
    });
    c.on("connectionState", (e) => {
      const code = e.code !== undefined ? ` ${e.code}` : "";
      if (e.state === "reconnecting") {
        const notice =
          e.retryInMs !== undefined
            ? `reconnecting in ${(e.retryInMs / 1000).toFixed(e.retryInMs < 1000 ? 2 : 1)} s`
            : "reconnecting…";
        this.emit("connection", `connection reconnecting${code}`, notice, P_NOTABLE, "warn", null, e.state);
      } else if (e.state === "closed") {
        const why = e.reason ? `: ${e.reason}` : "";
        this.emit("connection", `connection closed${code}`, `connection closed${code}${why}`, P_ALERT, "error", null, e.state);
      } else if (e.state === "live") {
        this.emit("connection", "connection live", null, P_INFO, "ok", null, e.state);
      } // "connecting" follows every "reconnecting": not worth a line of its own.

      changed();
    });
    this.rateTimer = setInterval(() => this.sampleRate(), 1000);
  }

  get connection(): ConnectionState {
    return this.client.state;
  }

  get selected(): Selection | null {
    return this.selection === null ? null : { ...this.selection };
  }

  /**
   * Shows one symbol at a depth and interval. The previous symbol, if
   * another, is unsubscribed, unless it is watched: then it goes back to
   * {@link WATCH_OPTIONS} (nothing is sent when those are its options already).
   */
  select(next: Selection): void {
    const prev = this.selection;
    if (prev !== null && prev.symbol !== next.symbol) {
      if (this.watchedSet.has(prev.symbol)) this.client.subscribe(prev.symbol, WATCH_OPTIONS);
      else this.drop(prev.symbol);
    }
    this.selection = { ...next };
    this.client.subscribe(next.symbol, { depth: next.depth, intervalMs: next.intervalMs });
    this.options.onChange();
  }

  /**
   * The watched symbols (the markets panel), in order: the new ones are
   * subscribed with {@link WATCH_OPTIONS}, the ones no longer watched are
   * unsubscribed. The selected symbol keeps its subscription either way.
   *
   * The page calls this after every refresh of `/symbols` (with the symbols
   * the node lists): a watched subscription the node refused as unknown
   * (the node restarted before its publisher came back) is asked for again.
   */
  watch(symbols: readonly string[]): void {
    const next = [...new Set(symbols.filter((s) => typeof s === "string" && s !== ""))];
    const nextSet = new Set(next);
    const selected = this.selection?.symbol;
    let changed = next.join("\n") !== this.watched.join("\n");
    for (const s of this.watched) if (!nextSet.has(s) && s !== selected) this.drop(s);
    for (const s of next) {
      if (s === selected) continue;
      if (!this.watchedSet.has(s)) {
        this.client.subscribe(s, WATCH_OPTIONS);
      } else if (this.unknown.has(s) && this.client.symbol(s)?.state === "failed") {
        this.unknown.delete(s);
        this.client.subscribe(s, WATCH_OPTIONS);
        changed = true;
      }
    }
    this.watched = next;
    this.watchedSet = nextSet;
    if (changed) this.options.onChange();
  }

  private drop(symbol: string): void {
    this.client.unsubscribe(symbol);
    this.unknown.delete(symbol);
  }

  /** Every subscription as `window.orderbook.symbols`, a fresh object. */
  symbols(): Record<string, SymbolMirror> {
    const out: Record<string, SymbolMirror> = {};
    for (const v of this.client.symbols()) out[v.symbol] = symbolMirror(v);
    return out;
  }

  stats(): StatsMirror {
    return statsMirror(this.client.stats());
  }

  /** The whole book held for `symbol`, exact strings; null when not subscribed or not known yet. */
  book(symbol: string): BookMirror | null {
    const v = this.client.symbol(symbol);
    return v === undefined ? null : bookMirror(v);
  }

  /** What the page draws now. */
  frame(): ViewFrame {
    const sel = this.selection;
    const view = sel === null ? undefined : this.client.symbol(sel.symbol);
    return {
      connection: this.client.state,
      encoding: this.client.encodingInUse,
      selected: sel === null ? null : { ...sel },
      ladder: view === undefined || sel === null ? null : ladderModel(view, ladderRows(sel)),
      symbols: this.symbols(),
      markets: this.markets(),
      stats: this.stats(),
      messagesPerSecond: this.rate,
    };
  }

  /** The markets panel's rows: the selected symbol first unless it is watched, then the watched ones. */
  markets(): MarketRow[] {
    const sel = this.selection?.symbol;
    const order = sel !== undefined && !this.watchedSet.has(sel) ? [sel, ...this.watched] : this.watched;
    return order.map((s) => marketRow(s, this.client.symbol(s)));
  }

  close(): void {
    clearInterval(this.rateTimer);
    this.client.close();
  }

  private sampleRate(): void {
    const now = performance.now();
    const messages = this.client.stats().messages;
    const dt = (now - this.rateAt) / 1000;
    const rate = dt > 0 ? Math.round((messages - this.rateMessages) / dt) : 0;
    this.rateAt = now;
    this.rateMessages = messages;
    if (rate !== this.rate) {
      this.rate = rate;
      this.options.onChange();
    }
  }

  private emit(
    kind: NotableEvent["kind"],
    line: string,
    notice: string | null,
    priority: number,
    level: NotableEvent["level"],
    symbol: string | null,
    code: string | null = null,
  ): void {
    this.options.onEvent({ at: Date.now(), kind, line, notice, priority, level, symbol, code });
  }
}
