/**
 * The WebSocket shell around {@link Session}: connects, decodes frames,
 * sends what the session asks for, reconnects with full-jitter backoff and
 * resumes every symbol from its (epoch, seq).
 *
 * @module
 */
import { Backoff, type BackoffOptions } from "./backoff.js";
import { decodeServer, DecodeError, encodeClient, SUBPROTOCOLS, type Encoding } from "./codec.js";
import type { ClientMessage } from "./gen/orderbook/v1/stream_pb.js";
import { LatencyWindow, type LatencySummary } from "./latency.js";
import {
  Session,
  type SessionEvent,
  type SessionOutput,
  type SubscriptionOptions,
  type SymbolView,
} from "./session.js";

/**
 * The part of the WHATWG `WebSocket` interface the client uses. Browsers'
 * `WebSocket` and the `ws` package for Node.js both fit.
 */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly protocol: string;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: Uint8Array | string): void;
  close(code?: number, reason?: string): void;
}

/** Opens a WebSocket: `(url, subprotocols) => socket`. */
export type WebSocketFactory = (url: string, protocols: string[]) => WebSocketLike;

/**
 * The connection's state:
 * - `connecting`: a connection attempt is under way;
 * - `live`: connected; subscriptions are (re)starting or flowing;
 * - `reconnecting`: the connection dropped or failed; the next attempt waits for its backoff;
 * - `closed`: stopped by {@link OrderbookClient.close}, or by a close code that
 *   retrying cannot fix (1002, 1003, 1007, 1008, 1009).
 */
export type ConnectionState = "connecting" | "live" | "reconnecting" | "closed";

/** Emitted whenever {@link ConnectionState} changes. */
export interface ConnectionStateEvent {
  type: "connectionState";
  state: ConnectionState;
  previous: ConnectionState;
  /** Close code and reason of the connection that ended (`reconnecting`, `closed`). */
  code?: number;
  reason?: string;
  /** For `reconnecting`: the delay before the next attempt, in ms. */
  retryInMs?: number;
}

/** Every event the client emits, by name. */
export type ClientEvents = {
  [K in SessionEvent["type"]]: Extract<SessionEvent, { type: K }>;
} & { connectionState: ConnectionStateEvent };

/** A listener of one event type. */
export type Listener<K extends keyof ClientEvents> = (event: ClientEvents[K]) => void;

/** Options of {@link OrderbookClient}. */
export interface ClientOptions {
  /** The node's subscriber endpoint, e.g. `ws://127.0.0.1:8000/ws`. */
  url: string;
  /** Symbols to subscribe to at once: names, or names with their options. */
  symbols?: string[] | Record<string, SubscriptionOptions>;
  /** `"proto"` (default, binary protobuf) or `"json"`. */
  encoding?: Encoding;
  /** Subscriber token, sent as the subprotocol `bearer.<token>`. */
  token?: string;
  /** How to open a socket; default: the global `WebSocket` (browsers, Node.js >= 22). */
  webSocket?: WebSocketFactory;
  /** Reconnect backoff; default 250 ms doubling up to 30 s, full jitter. */
  backoff?: BackoffOptions;
  /** A connection that delivers nothing for this long is dropped and retried; default 10 000 ms. */
  idleTimeoutMs?: number;
  /** An application Ping is sent after this long without a message; default 4000 ms. */
  pingIntervalMs?: number;
  /**
   * Where to ask whether a node is full after a failed handshake (browsers
   * hide the HTTP status of a refused upgrade): `/readyz` beside `url` by
   * default; `null` to never ask. A `503` with `Retry-After` is honoured.
   */
  readyzUrl?: string | null;
  /** `fetch` for the readiness probe; default the global one. */
  fetch?: typeof globalThis.fetch;
  /** Wall clock in ms (latency from `publish_time_ns`); default `Date.now`. */
  now?: () => number;
  /** Latencies kept for the percentiles in {@link ClientStats}; default 2048. */
  latencyWindow?: number;
  /** Connect at once (default); `false` to wait for {@link OrderbookClient.connect}. */
  autoConnect?: boolean;
}

/** Connection-level counters. */
export interface ClientStats {
  state: ConnectionState;
  /** Connections opened. */
  connects: number;
  /** Connections that ended (or failed) and were retried. */
  reconnects: number;
  /** Frames received and their bytes. */
  messages: number;
  bytes: number;
  /** Frames that did not decode (each is also an `error` event). */
  decodeErrors: number;
  /** Exceptions thrown by event listeners (caught; see the console). */
  listenerErrors: number;
  /** Latency of deltas from the node's publish time. */
  latency: LatencySummary;
}

/** Close codes after which reconnecting cannot help (client bugs, policy). */
const FATAL_CLOSE = new Set([1002, 1003, 1007, 1008, 1009]);
/** Our own close code for a connection that went silent. */
const IDLE_CLOSE = 4000;
const OPEN = 1;

function defaultReadyz(url: string): string | null {
  try {
    const u = new URL(url);
    u.protocol = u.protocol === "wss:" ? "https:" : "http:";
    u.pathname = u.pathname.replace(/\/ws\/?$/, "") + "/readyz";
    u.search = "";
    u.hash = "";
    return u.toString();
  } catch {
    return null;
  }
}

/**
 * A client that keeps verified, exact books of many symbols over one
 * WebSocket.
 *
 * Every snapshot and delta is checked (`prev_seq` continuity and the
 * checksum); a failed check resynchronises that symbol alone, in-band. After
 * a drop the client reconnects with full-jitter backoff and resumes every
 * symbol from its (epoch, seq): the node sends exactly the missed deltas, or a
 * fresh snapshot when it cannot.
 *
 * @example
 * ```ts
 * import { OrderbookClient, formatUnits } from "@orderbook/client";
 *
 * const client = new OrderbookClient({ url: "ws://127.0.0.1:8000/ws", symbols: ["BTC-USD"] });
 * client.on("book", (e) => {
 *   const s = client.symbol(e.symbol)!;
 *   const [price, size] = s.book.bestBid() ?? [0n, 0n];
 *   console.log(e.seq, formatUnits(price, s.instrument!.priceScale), formatUnits(size, s.instrument!.sizeScale));
 * });
 * ```
 */
export class OrderbookClient {
  private readonly session: Session;
  private readonly options: ClientOptions;
  private readonly backoff: Backoff;
  private readonly factory: WebSocketFactory;
  private readonly listeners = new Map<keyof ClientEvents, Set<(e: any) => void>>();
  private readonly latency: LatencyWindow;
  private readonly now: () => number;
  private ws: WebSocketLike | null = null;
  private encoding: Encoding;
  private _state: ConnectionState = "connecting";
  private stopped = false;
  private started = false;
  private delivered = false;
  private lastReceived = 0;
  private lastPingSent = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private watchdog: ReturnType<typeof setInterval> | undefined;
  private readonly retryTimers = new Set<ReturnType<typeof setTimeout>>();
  private readonly counters = { connects: 0, reconnects: 0, messages: 0, bytes: 0, decodeErrors: 0, listenerErrors: 0 };

  constructor(options: ClientOptions) {
    this.options = options;
    this.now = options.now ?? Date.now;
    this.session = new Session({ now: this.now });
    this.backoff = new Backoff(options.backoff);
    this.encoding = options.encoding ?? "proto";
    this.latency = new LatencyWindow(options.latencyWindow ?? 2048);
    this.factory =
      options.webSocket ??
      ((url, protocols) => {
        const WS = (globalThis as { WebSocket?: new (u: string, p: string[]) => WebSocketLike }).WebSocket;
        if (WS === undefined) throw new Error("no global WebSocket: pass options.webSocket (e.g. the ws package)");
        return new WS(url, protocols);
      });
    const symbols = options.symbols ?? [];
    const entries: [string, SubscriptionOptions][] = Array.isArray(symbols)
      ? symbols.map((s) => [s, {}])
      : Object.entries(symbols);
    for (const [symbol, opts] of entries) this.session.subscribe(symbol, opts);
    if (options.autoConnect !== false) this.connect();
  }

  // ------------------------------------------------------------ public API

  /** The connection's state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** The encoding in use (the one the node echoed once connected). */
  get encodingInUse(): Encoding {
    return this.encoding;
  }

  /** One symbol's subscription: state, (epoch, seq), book, counters. */
  symbol(symbol: string): SymbolView | undefined {
    return this.session.get(symbol);
  }

  /** Every subscription. */
  symbols(): SymbolView[] {
    return this.session.all();
  }

  /** Connection counters and latency percentiles. */
  stats(): ClientStats {
    return { state: this._state, ...this.counters, latency: this.latency.summary() };
  }

  /**
   * Subscribes to a symbol, or changes the depth or conflation interval of a
   * subscription (the node is asked afresh; a new snapshot follows).
   */
  subscribe(symbol: string, options: SubscriptionOptions = {}): void {
    this.apply(this.session.subscribe(symbol, options));
  }

  /** Stops a subscription; its book is forgotten. */
  unsubscribe(symbol: string): void {
    this.apply(this.session.unsubscribe(symbol));
  }

  /** Sends an application Ping; resolves with the round trip in ms, or rejects after `timeoutMs`. */
  ping(timeoutMs = 5000): Promise<number> {
    const id = this.session.requestId();
    const sent = this.now();
    return new Promise((resolve, reject) => {
      const off = this.on("pong", (e) => {
        if (e.requestId !== id) return;
        off();
        clearTimeout(timer);
        resolve(this.now() - sent);
      });
      const timer = setTimeout(() => {
        off();
        reject(new Error("no pong"));
      }, timeoutMs);
      if (!this.send(this.session.ping(id))) {
        off();
        clearTimeout(timer);
        reject(new Error("not connected"));
      }
    });
  }

  /** Resolves once `symbol` is live (its book verified), or rejects after `timeoutMs`. */
  whenLive(symbol: string, timeoutMs = 10_000): Promise<SymbolView> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const s = this.session.get(symbol);
        if (s?.state === "live") {
          resolve(s);
          return true;
        }
        if (s === undefined || s.state === "failed") {
          reject(new Error(`${symbol} is ${s === undefined ? "not subscribed" : "failed"}`));
          return true;
        }
        return false;
      };
      if (check()) return;
      const off = this.on("symbolState", (e) => {
        if (e.symbol === symbol && check()) done();
      });
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${symbol} not live after ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (): void => {
        off();
        clearTimeout(timer);
      };
    });
  }

  /**
   * Listens to one event type; returns a function that removes the listener.
   * A listener that throws is reported on the console and counted
   * (`stats().listenerErrors`); it never disturbs the client.
   */
  on<K extends keyof ClientEvents>(type: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(type);
    if (set === undefined) this.listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => set!.delete(listener);
  }

  /** Starts connecting (only needed with `autoConnect: false`). */
  connect(): void {
    if (this.started || this.stopped) return;
    this.started = true;
    this.open();
  }

  /** Closes the connection for good (code 1000) and stops reconnecting. */
  close(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    for (const t of this.retryTimers) clearTimeout(t);
    this.retryTimers.clear();
    this.stopWatchdog();
    const ws = this.ws;
    if (ws !== null) {
      this.detach(ws);
      try {
        ws.close(1000, "client closed");
      } catch {
        // already closing
      }
      this.ws = null;
      this.apply(this.session.close());
    }
    this.setState("closed", { code: 1000, reason: "client closed" });
  }

  // ------------------------------------------------------------ connection

  private open(): void {
    if (this.stopped) return;
    this.setState("connecting");
    const requested = this.options.encoding ?? "proto";
    const protocols = [SUBPROTOCOLS[requested]];
    if (this.options.token) protocols.push(`bearer.${this.options.token}`);
    let ws: WebSocketLike;
    try {
      ws = this.factory(this.options.url, protocols);
    } catch (e) {
      this.emit({ type: "error", code: "CONNECT", message: String(e), symbol: undefined, fatal: false });
      this.scheduleReconnect(1006, String(e), false);
      return;
    }
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.counters.connects++;
      this.delivered = false;
      this.encoding = ws.protocol === SUBPROTOCOLS.json ? "json" : ws.protocol === SUBPROTOCOLS.proto ? "proto" : requested;
      this.lastReceived = this.now();
      this.setState("live");
      this.startWatchdog();
      this.apply(this.session.open());
    };
    ws.onmessage = (ev) => this.onFrame(ev.data);
    ws.onerror = () => {
      // A close event always follows; it carries what there is to know.
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.detach(ws);
      this.stopWatchdog();
      this.apply(this.session.close());
      if (this.stopped) return;
      if (FATAL_CLOSE.has(ev.code)) {
        this.stopped = true;
        this.emit({ type: "error", code: `CLOSE_${ev.code}`, message: ev.reason || "connection closed by the node", symbol: undefined, fatal: true });
        this.setState("closed", { code: ev.code, reason: ev.reason });
        return;
      }
      this.scheduleReconnect(ev.code, ev.reason, opened);
    };
  }

  private detach(ws: WebSocketLike): void {
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  }

  private scheduleReconnect(code: number, reason: string, opened: boolean): void {
    this.counters.reconnects++;
    // A session that delivered book data resets the backoff (§7.1).
    if (this.delivered) this.backoff.reset();
    this.delivered = false;
    const go = (delay: number): void => {
      if (this.stopped) return;
      this.setState("reconnecting", { code, reason, retryInMs: Math.round(delay) });
      this.reconnectTimer = setTimeout(() => this.open(), delay);
    };
    const probe = this.options.readyzUrl === undefined ? defaultReadyz(this.options.url) : this.options.readyzUrl;
    const fetcher = this.options.fetch ?? globalThis.fetch;
    if (opened || probe === null || typeof fetcher !== "function") {
      go(this.backoff.next());
      return;
    }
    // The handshake failed: a full node says so on /readyz with Retry-After.
    this.setState("reconnecting", { code, reason });
    fetcher(probe, { cache: "no-store" })
      .then((r) => {
        const after = Number(r.headers.get("retry-after"));
        go(r.status === 503 && after > 0 ? this.backoff.nextAfter(after) : this.backoff.next());
      })
      .catch(() => go(this.backoff.next()));
  }

  private onFrame(data: unknown): void {
    this.lastReceived = this.now();
    this.counters.messages++;
    let message;
    try {
      if (typeof data !== "string" && !(data instanceof ArrayBuffer) && !(data instanceof Uint8Array)) {
        throw new DecodeError(`unexpected frame data ${Object.prototype.toString.call(data)}`);
      }
      this.counters.bytes += typeof data === "string" ? data.length : data.byteLength;
      message = decodeServer(data, this.encoding);
    } catch (e) {
      // A frame we cannot read belongs to no known symbol; if it was a
      // delta, the next one shows the gap and that symbol resyncs alone.
      this.counters.decodeErrors++;
      this.emit({ type: "error", code: "DECODE", message: e instanceof Error ? e.message : String(e), symbol: undefined, fatal: false });
      return;
    }
    this.apply(this.session.receive(message));
  }

  private startWatchdog(): void {
    this.stopWatchdog();
    const idle = this.options.idleTimeoutMs ?? 10_000;
    const pingEvery = this.options.pingIntervalMs ?? 4000;
    const tick = Math.max(50, Math.min(pingEvery, idle) / 4);
    this.watchdog = setInterval(() => {
      const ws = this.ws;
      if (ws === null) return;
      const quiet = this.now() - this.lastReceived;
      if (quiet >= idle) {
        // The node or the path to it is gone without a close: start over.
        this.detach(ws);
        this.ws = null;
        this.stopWatchdog();
        try {
          ws.close(IDLE_CLOSE, "no message from the node");
        } catch {
          // nothing to close
        }
        this.apply(this.session.close());
        this.scheduleReconnect(IDLE_CLOSE, "idle", true);
      } else if (quiet >= pingEvery && this.now() - this.lastPingSent >= pingEvery) {
        this.lastPingSent = this.now();
        this.send(this.session.ping());
      }
    }, tick);
  }

  private stopWatchdog(): void {
    if (this.watchdog !== undefined) clearInterval(this.watchdog);
    this.watchdog = undefined;
  }

  // ------------------------------------------------------------ plumbing

  private send(message: ClientMessage): boolean {
    const ws = this.ws;
    if (ws === null || ws.readyState !== OPEN) return false;
    ws.send(encodeClient(message, this.encoding));
    return true;
  }

  private apply(out: SessionOutput): void {
    for (const m of out.send) this.send(m);
    for (const symbol of out.retry) {
      const t = setTimeout(() => {
        this.retryTimers.delete(t);
        this.apply(this.session.retry(symbol));
      }, 500 + Math.random() * 1500);
      this.retryTimers.add(t);
    }
    for (const e of out.events) {
      if (e.type === "book") {
        this.delivered = true;
        if (e.latencyMs !== undefined) this.latency.add(e.latencyMs);
      }
      this.emit(e);
    }
  }

  private setState(state: ConnectionState, extra: Partial<ConnectionStateEvent> = {}): void {
    const previous = this._state;
    if (previous === state && extra.retryInMs === undefined) return;
    this._state = state;
    this.emit({ type: "connectionState", state, previous, ...extra });
  }

  private emit<K extends keyof ClientEvents>(event: ClientEvents[K] & { type: K }): void {
    const set = this.listeners.get(event.type);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        listener(event);
      } catch (e) {
        this.counters.listenerErrors++;
        console.error(`orderbook client: a "${event.type}" listener threw`, e);
      }
    }
  }
}
