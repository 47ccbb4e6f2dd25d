/**
 * Where the page's data comes from: the {@link StreamEngine} on the main
 * thread ({@link LocalSource}, the default) or inside a Web Worker
 * ({@link WorkerSource}, `?worker=1`). The page draws from either through
 * this one interface.
 *
 * @module
 */
import type { ConnectionState, Encoding } from "@orderbook/client";
import { StreamEngine } from "./engine.js";
import type {
  BookMirror,
  FromWorker,
  NotableEvent,
  Selection,
  StatsMirror,
  SymbolMirror,
  ToWorker,
  ViewFrame,
} from "./types.js";

export type BookListener = (symbol: string, seq: string) => void;

export interface SourceOptions {
  url: string;
  encoding: Encoding;
  token: string | null;
  /** New data to draw: schedule a redraw (coalesced to one per animation frame). */
  onInvalidate: () => void;
  onEvent: (event: NotableEvent) => void;
}

export interface Source {
  readonly mode: "main" | "worker";
  select(selection: Selection): void;
  /** The watched symbols, in order (see {@link StreamEngine.watch}). */
  watch(symbols: readonly string[]): void;
  /**
   * Called once per animation frame: the frame to draw if anything changed
   * since the last call, else null. (The worker source also asks the worker
   * for the next frame here: at most one frame crosses per animation frame.)
   */
  takeFrame(): ViewFrame | null;
  connection(): ConnectionState;
  symbols(): Record<string, SymbolMirror>;
  stats(): StatsMirror;
  /** The whole book; null in worker mode (the book lives in the worker). */
  book(symbol: string): BookMirror | null;
  onBook(listener: BookListener): () => void;
  /** Main-thread ms spent handling the stream; and, in worker mode, the worker's own. */
  streamMs(): number;
  workerStreamMs(): number | null;
}

const EMPTY_STATS: StatsMirror = {
  connects: 0,
  reconnects: 0,
  messages: 0,
  decodeErrors: 0,
  latency: { p50Ms: null, p99Ms: null, lastMs: null },
};

function callAll(listeners: Set<BookListener>, symbol: string, seq: string): void {
  for (const l of [...listeners]) {
    try {
      l(symbol, seq);
    } catch (e) {
      console.error("orderbook page: an onBook listener threw", e);
    }
  }
}

/** The client on the main thread: every event is applied here, frames are built on demand. */
export class LocalSource implements Source {
  readonly mode = "main" as const;
  private readonly engine: StreamEngine;
  private readonly listeners = new Set<BookListener>();
  private dirty = true;
  private spent = 0;

  constructor(options: SourceOptions) {
    this.engine = new StreamEngine({
      url: options.url,
      encoding: options.encoding,
      token: options.token,
      onChange: () => {
        if (!this.dirty) {
          this.dirty = true;
          options.onInvalidate();
        }
      },
      onEvent: options.onEvent,
      onBook: (symbol, seq) => {
        if (this.listeners.size > 0) callAll(this.listeners, symbol, seq);
      },
      onStreamTime: (ms) => {
        this.spent += ms;
      },
    });
  }

  select(selection: Selection): void {
    this.engine.select(selection);
  }

  watch(symbols: readonly string[]): void {
    this.engine.watch(symbols);
  }

  takeFrame(): ViewFrame | null {
    if (!this.dirty) return null;
    this.dirty = false;
    return this.engine.frame();
  }

  connection(): ConnectionState {
    return this.engine.connection;
  }

  symbols(): Record<string, SymbolMirror> {
    return this.engine.symbols();
  }

  stats(): StatsMirror {
    return this.engine.stats();
  }

  book(symbol: string): BookMirror | null {
    return this.engine.book(symbol);
  }

  onBook(listener: BookListener): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  streamMs(): number {
    return this.spent;
  }

  workerStreamMs(): null {
    return null;
  }
}

/**
 * The client in a Web Worker: decoding and verification happen there; the
 * worker says when it has news ("dirty"), and the page pulls one frame per
 * animation frame holding only what is drawn.
 */
export class WorkerSource implements Source {
  readonly mode = "worker" as const;
  private readonly worker: Worker;
  private readonly listeners = new Set<BookListener>();
  private readonly options: SourceOptions;
  private state: ConnectionState = "connecting";
  private latest: ViewFrame | null = null;
  /** The seq of each market row in the last frame (onBook for watched symbols). */
  private readonly seqs = new Map<string, string>();
  private fresh = false;
  private workerDirty = false;
  private pulling = false;
  private spent = 0;
  private workerSpent = 0;

  constructor(options: SourceOptions) {
    this.options = options;
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module", name: "orderbook-stream" });
    this.worker.onmessage = (ev: MessageEvent<FromWorker>) => {
      const t0 = performance.now();
      try {
        this.receive(ev.data);
      } finally {
        this.spent += performance.now() - t0;
      }
    };
    this.worker.onerror = (ev) => {
      options.onEvent({
        at: Date.now(),
        kind: "error",
        line: "error - WORKER",
        notice: `error: worker failed (${ev.message || "see the console"})`,
        priority: 4,
        level: "error",
        symbol: null,
        code: "WORKER",
      });
    };
    this.post({ type: "init", url: options.url, encoding: options.encoding, token: options.token });
  }

  private post(message: ToWorker): void {
    this.worker.postMessage(message);
  }

  private receive(m: FromWorker): void {
    switch (m.type) {
      case "dirty":
        this.state = m.connection;
        this.workerDirty = true;
        this.options.onInvalidate();
        break;
      case "event":
        this.state = m.connection;
        this.options.onEvent(m.event);
        break;
      case "frame": {
        this.pulling = false;
        this.latest = m.frame;
        this.state = m.frame.connection;
        this.workerSpent = m.streamMs;
        this.fresh = true;
        const l = m.frame.ladder;
        if (this.listeners.size > 0) {
          if (l !== null) callAll(this.listeners, l.symbol, l.seq);
          // The other subscriptions (watched symbols): once per frame in which their seq moved.
          for (const r of m.frame.markets) {
            if (r.symbol === l?.symbol || r.seq === "0" || this.seqs.get(r.symbol) === r.seq) continue;
            callAll(this.listeners, r.symbol, r.seq);
          }
        }
        this.seqs.clear();
        for (const r of m.frame.markets) this.seqs.set(r.symbol, r.seq);
        this.options.onInvalidate();
        break;
      }
    }
  }

  select(selection: Selection): void {
    this.post({ type: "select", selection });
  }

  watch(symbols: readonly string[]): void {
    this.post({ type: "watch", symbols: [...symbols] });
  }

  takeFrame(): ViewFrame | null {
    if (this.workerDirty && !this.pulling) {
      this.workerDirty = false;
      this.pulling = true;
      this.post({ type: "pull" });
    }
    if (!this.fresh) return null;
    this.fresh = false;
    return this.latest;
  }

  connection(): ConnectionState {
    return this.state;
  }

  symbols(): Record<string, SymbolMirror> {
    return structuredClone(this.latest?.symbols ?? {});
  }

  stats(): StatsMirror {
    return structuredClone(this.latest?.stats ?? EMPTY_STATS);
  }

  book(): null {
    return null;
  }

  onBook(listener: BookListener): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  streamMs(): number {
    return this.spent;
  }

  workerStreamMs(): number {
    return this.workerSpent;
  }
}
