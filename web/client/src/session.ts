/**
 * The subscriber session without I/O: server messages in, client messages
 * and events out. It implements the client algorithm of docs/protocol.md §7
 * (subscribe with a resume point, verify `prev_seq` and the checksum of every
 * snapshot and delta, resync one symbol in-band after a failed check) and is
 * driven directly by the unit tests; {@link OrderbookClient} is the WebSocket
 * shell around it.
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import { Book } from "./book.js";
import type { Level } from "./checksum.js";
import type { Instrument, Level as WireLevel } from "./gen/orderbook/v1/book_pb.js";
import {
  ClientMessageSchema,
  ErrorCode,
  SnapshotReason,
  Start,
  type ClientMessage,
  type Delta,
  type Heartbeat,
  type ServerMessage,
  type Snapshot,
  type Subscribed,
} from "./gen/orderbook/v1/stream_pb.js";

/**
 * What a subscription is doing, as an application should show it:
 * - `subscribing`: the first Subscribe is in flight, no book yet;
 * - `live`: the book is verified and changes arrive;
 * - `resyncing`: a check failed (gap, checksum, epoch); a fresh snapshot is on its way;
 * - `stale`: the book is the last one known: the connection is down, or the
 *   node says its source is unreachable (`Heartbeat.stale`);
 * - `failed`: the server refused the subscription for good (unknown symbol,
 *   invalid argument, too many subscriptions); see the `error` event.
 */
export type SymbolState = "subscribing" | "live" | "resyncing" | "stale" | "failed";

/** Why a symbol was resynchronised. */
export type ResyncReason =
  | "checksum" // the book's checksum differs from the server's
  | "gap" // prev_seq is not the seq held: a change was missed
  | "duplicate" // a delta at or below the seq held
  | "epoch" // a delta or heartbeat of another epoch
  | "heartbeat" // a heartbeat's seq differs from the seq held
  | "resume" // START_RESUMED at another point than the one offered
  | "already_subscribed" // client and server disagreed about the subscription
  | "invalid"; // a level the book cannot hold (negative size)

/** Every resync reason, for counters. */
export const RESYNC_REASONS: readonly ResyncReason[] = [
  "checksum",
  "gap",
  "duplicate",
  "epoch",
  "heartbeat",
  "resume",
  "already_subscribed",
  "invalid",
];

/** How a subscription asked for its stream. */
export interface SubscriptionOptions {
  /** Levels per side; 0 (default) = the full book. */
  depth?: number;
  /** Conflation: at most one merged delta per this many ms; 0 (default) = every change. */
  intervalMs?: number;
}

/** Counters of one subscription since it was created. */
export interface SymbolCounters {
  /** Snapshots and deltas applied whose checksum matched. */
  verified: number;
  snapshots: number;
  deltas: number;
  heartbeats: number;
  /** Checksum mismatches (each causes a resync). */
  checksumFailures: number;
  /** Deltas whose prev_seq was not the seq held (each causes a resync). */
  gaps: number;
  /** Resyncs in total, and by reason. */
  resyncs: number;
  resyncsByReason: Record<ResyncReason, number>;
  /** Snapshots that started from a resume point (`START_RESUMED`). */
  resumes: number;
}

/** Read-only view of one subscription. */
export interface SymbolView {
  readonly symbol: string;
  readonly state: SymbolState;
  /** Depth and interval asked for. */
  readonly depth: number;
  readonly intervalMs: number;
  /** Epoch and seq of the book held (`0n` before the first snapshot). */
  readonly epoch: bigint;
  readonly seq: bigint;
  /** Checksum of the book held, as last verified against the server's. */
  readonly checksum: number;
  /** True while the book is verified (its last snapshot or delta matched). */
  readonly synced: boolean;
  /** The instrument (scales) from the last Subscribed/Snapshot. */
  readonly instrument: Instrument | undefined;
  /** The book: integer ticks and lots. Do not modify it. */
  readonly book: Book;
  readonly counters: Readonly<SymbolCounters>;
  /** How the last `Subscribed` started the stream (`null` before the first). */
  readonly lastStart: "resumed" | "snapshot" | null;
  /** Its snapshot reason (`new`, `stale_epoch`, ...); `""` for a resume. */
  readonly lastReason: string;
  /** True when that `Subscribed` came in another epoch than the book held. */
  readonly newEpoch: boolean;
}

/** Events the session emits; {@link OrderbookClient} forwards them. */
export type SessionEvent =
  | {
      type: "book";
      symbol: string;
      /** What changed the book. */
      kind: "snapshot" | "delta";
      epoch: bigint;
      seq: bigint;
      /** Levels changed by a delta, as sent (empty for a snapshot). */
      bids: readonly Level[];
      asks: readonly Level[];
      /** ms from the node's publish time to now (deltas only). */
      latencyMs: number | undefined;
    }
  | { type: "symbolState"; symbol: string; state: SymbolState; previous: SymbolState }
  | {
      type: "subscribed";
      symbol: string;
      /** `resumed`: the missed deltas follow; `snapshot`: a fresh snapshot follows. */
      start: "resumed" | "snapshot";
      /** For `snapshot`: `new`, `stale_epoch`, `history_exhausted`, `ahead`, `unsupported`. */
      reason: string;
      epoch: bigint;
      seq: bigint;
      /** True when the epoch differs from the one held before. */
      newEpoch: boolean;
    }
  | { type: "resync"; symbol: string; reason: ResyncReason; detail: string }
  | {
      type: "error";
      /** The server's ErrorCode name without its prefix (`UNKNOWN_SYMBOL`), or a client-side code. */
      code: string;
      message: string;
      symbol: string | undefined;
      /** True when the subscription was dropped because of it. */
      fatal: boolean;
    }
  | { type: "unsubscribed"; symbol: string }
  | { type: "pong"; requestId: bigint; serverTimeNs: bigint }
  | { type: "stale"; symbol: string; stale: boolean };

/** What the shell must do after feeding the session. */
export interface SessionOutput {
  /** Messages to send, in order. */
  send: ClientMessage[];
  events: SessionEvent[];
  /** Symbols whose Subscribe should be sent again after a delay (server error INTERNAL). */
  retry: string[];
}

type Phase = "idle" | "subscribing" | "snapshot_wait" | "live";

/** One subscription's state: the §7 record plus its book and counters. */
class Subscription implements SymbolView {
  phase: Phase = "idle";
  pending = 0n;
  synced = false;
  everSynced = false;
  epoch = 0n;
  seq = 0n;
  checksum = 0;
  instrument: Instrument | undefined = undefined;
  readonly book = new Book();
  /** Connection down, or the node says its source is unreachable. */
  disconnected = true;
  serverStale = false;
  failed = false;
  state: SymbolState = "subscribing";
  lastStart: "resumed" | "snapshot" | null = null;
  lastReason = "";
  newEpoch = false;
  readonly counters: SymbolCounters = {
    verified: 0,
    snapshots: 0,
    deltas: 0,
    heartbeats: 0,
    checksumFailures: 0,
    gaps: 0,
    resyncs: 0,
    resyncsByReason: Object.fromEntries(RESYNC_REASONS.map((r) => [r, 0])) as Record<ResyncReason, number>,
    resumes: 0,
  };

  constructor(
    readonly symbol: string,
    public depth: number,
    public intervalMs: number,
  ) {}

  /** The state an application sees, derived from the protocol state. */
  derive(): SymbolState {
    if (this.failed) return "failed";
    if (this.synced) {
      // A verified book not (yet) confirmed current: connection down, resume
      // in flight, or the node cut off from its source.
      return this.disconnected || this.serverStale || this.phase !== "live" ? "stale" : "live";
    }
    return this.everSynced ? "resyncing" : "subscribing";
  }
}

const START_NAMES: Record<number, string> = {
  [SnapshotReason.UNSPECIFIED]: "unspecified",
  [SnapshotReason.NEW]: "new",
  [SnapshotReason.STALE_EPOCH]: "stale_epoch",
  [SnapshotReason.HISTORY_EXHAUSTED]: "history_exhausted",
  [SnapshotReason.AHEAD]: "ahead",
  [SnapshotReason.UNSUPPORTED]: "unsupported",
};

/** Server error codes after which a subscription is dropped for good. */
const TERMINAL = new Set<ErrorCode>([
  ErrorCode.UNKNOWN_SYMBOL,
  ErrorCode.INVALID_ARGUMENT,
  ErrorCode.TOO_MANY_SUBSCRIPTIONS,
]);

function errorName(code: ErrorCode): string {
  const name = ErrorCode[code];
  return name === undefined ? `ERROR_CODE_${code}` : name;
}

function levels(wire: readonly WireLevel[]): Level[] {
  return wire.map((l) => [l.price, l.size] as const);
}

/** Options of a {@link Session}. */
export interface SessionOptions {
  /** Wall clock in ms (for latency from `publish_time_ns`); default `Date.now`. */
  now?: () => number;
}

/**
 * Every subscription of one client, across reconnections. Feed it the
 * connection's life (`open`, `close`) and every decoded server message
 * (`receive`); send what it returns, in order.
 */
export class Session {
  private readonly subs = new Map<string, Subscription>();
  private nextId = 1n;
  /** Request ids whose errors are expected (our resync Unsubscribes, Subscribes given up). */
  private readonly quietRequests = new Set<bigint>();
  private connected = false;
  private readonly now: () => number;

  constructor(options: SessionOptions = {}) {
    this.now = options.now ?? Date.now;
  }

  /** Whether a connection is up. */
  get isConnected(): boolean {
    return this.connected;
  }

  /** The subscription of one symbol. */
  get(symbol: string): SymbolView | undefined {
    return this.subs.get(symbol);
  }

  /** Every subscription, in the order they were made. */
  all(): SymbolView[] {
    return [...this.subs.values()];
  }

  /** A fresh request id (never 0, which means "none"). */
  requestId(): bigint {
    return this.nextId++;
  }

  /**
   * Adds a subscription, or changes one's depth or interval (the protocol
   * changes those by unsubscribing and subscribing again).
   */
  subscribe(symbol: string, options: SubscriptionOptions = {}): SessionOutput {
    const out = output();
    const depth = options.depth ?? 0;
    const intervalMs = options.intervalMs ?? 0;
    if (!symbol) throw new RangeError("empty symbol");
    if (!Number.isInteger(depth) || depth < 0) throw new RangeError(`depth must be an integer >= 0, got ${depth}`);
    if (!Number.isInteger(intervalMs) || intervalMs < 0) {
      throw new RangeError(`intervalMs must be an integer >= 0, got ${intervalMs}`);
    }
    let s = this.subs.get(symbol);
    if (s !== undefined && !s.failed) {
      if (s.depth === depth && s.intervalMs === intervalMs) return out;
      s.depth = depth;
      s.intervalMs = intervalMs;
      // A different view of the book: keep nothing of the old one.
      if (this.connected) this.restart(s, out, true);
      else s.synced = false;
      this.refresh(s, out);
      return out;
    }
    s = new Subscription(symbol, depth, intervalMs);
    s.disconnected = !this.connected;
    this.subs.set(symbol, s);
    if (this.connected) this.sendSubscribe(s, out);
    return out;
  }

  /** Drops a subscription; nothing more is reported for it. */
  unsubscribe(symbol: string): SessionOutput {
    const out = output();
    const s = this.subs.get(symbol);
    if (s === undefined) return out;
    this.subs.delete(symbol);
    if (this.connected && !s.failed && s.phase !== "idle") {
      // A Subscribe still in flight may yet be refused: then the node holds
      // nothing to unsubscribe, and its NOT_SUBSCRIBED is expected.
      const pending = s.phase === "subscribing";
      if (pending) this.quietRequests.add(s.pending);
      out.send.push(this.unsubscribeMessage(symbol, pending));
    }
    return out;
  }

  /** A connection is open: subscribe to everything, resuming where possible (§7.2). */
  open(): SessionOutput {
    const out = output();
    this.connected = true;
    for (const s of this.subs.values()) {
      s.disconnected = false;
      if (!s.failed) this.sendSubscribe(s, out);
      this.refresh(s, out);
    }
    return out;
  }

  /** The connection is gone: keep every book with its (epoch, seq), shown stale (§7.4). */
  close(): SessionOutput {
    const out = output();
    this.connected = false;
    this.quietRequests.clear();
    for (const s of this.subs.values()) {
      s.disconnected = true;
      s.phase = "idle";
      this.refresh(s, out);
    }
    return out;
  }

  /** Sends a Subscribe again for a symbol the server failed on (INTERNAL). */
  retry(symbol: string): SessionOutput {
    const out = output();
    const s = this.subs.get(symbol);
    if (s !== undefined && this.connected && s.phase === "idle" && !s.failed) this.sendSubscribe(s, out);
    return out;
  }

  /** An application-level Ping (answered by a `pong` event). */
  ping(requestId = this.requestId()): ClientMessage {
    return create(ClientMessageSchema, { kind: { case: "ping", value: { requestId } } });
  }

  /** Handles one decoded server message (§7.3). Unknown kinds are ignored. */
  receive(message: ServerMessage): SessionOutput {
    const out = output();
    const k = message.kind;
    switch (k.case) {
      case "subscribed":
        this.onSubscribed(k.value, out);
        break;
      case "snapshot":
        this.onSnapshot(k.value, out);
        break;
      case "delta":
        this.onDelta(k.value, out);
        break;
      case "heartbeat":
        this.onHeartbeat(k.value, out);
        break;
      case "error": {
        const e = k.value;
        this.onError(e.code, e.message, e.symbol, e.requestId, out);
        break;
      }
      case "unsubscribed":
        out.events.push({ type: "unsubscribed", symbol: k.value.symbol });
        break;
      case "pong":
        out.events.push({ type: "pong", requestId: k.value.requestId, serverTimeNs: k.value.timeNs });
        break;
      default:
        break; // a kind added after this client was written
    }
    return out;
  }

  // ------------------------------------------------------------ handlers

  private onSubscribed(m: Subscribed, out: SessionOutput): void {
    const s = this.subs.get(m.symbol);
    if (s === undefined || m.requestId !== s.pending || s.phase !== "subscribing") return;
    if (m.instrument !== undefined) s.instrument = m.instrument;
    const newEpoch = s.everSynced && m.epoch !== s.epoch;
    s.newEpoch = newEpoch;
    if (m.start === Start.RESUMED) {
      if (!s.synced || m.epoch !== s.epoch || m.seq !== s.seq) {
        this.resync(s, "resume", `resumed at ${m.epoch}/${m.seq}, held ${s.epoch}/${s.seq}`, out);
        return;
      }
      s.phase = "live";
      s.counters.resumes++;
      s.lastStart = "resumed";
      s.lastReason = "";
      out.events.push({ type: "subscribed", symbol: s.symbol, start: "resumed", reason: "", epoch: m.epoch, seq: m.seq, newEpoch });
    } else {
      s.synced = false;
      s.phase = "snapshot_wait";
      const reason = START_NAMES[m.reason] ?? `reason_${m.reason}`;
      s.lastStart = "snapshot";
      s.lastReason = reason;
      out.events.push({ type: "subscribed", symbol: s.symbol, start: "snapshot", reason, epoch: m.epoch, seq: m.seq, newEpoch });
    }
    this.refresh(s, out);
  }

  private onSnapshot(m: Snapshot, out: SessionOutput): void {
    const s = this.subs.get(m.symbol);
    if (s === undefined || s.phase === "subscribing" || s.phase === "idle") return;
    const bids = levels(m.bids);
    const asks = levels(m.asks);
    try {
      s.book.replace(bids, asks);
    } catch (e) {
      this.resync(s, "invalid", String(e), out);
      return;
    }
    s.epoch = m.epoch;
    s.seq = m.seq;
    if (m.instrument !== undefined) s.instrument = m.instrument;
    s.counters.snapshots++;
    const sum = s.book.checksum();
    if (sum !== m.checksum) {
      s.counters.checksumFailures++;
      this.resync(s, "checksum", `snapshot ${m.seq}: computed ${sum}, server ${m.checksum}`, out);
      return;
    }
    s.checksum = sum;
    s.synced = true;
    s.everSynced = true;
    s.phase = "live";
    s.counters.verified++;
    out.events.push({ type: "book", symbol: s.symbol, kind: "snapshot", epoch: s.epoch, seq: s.seq, bids: [], asks: [], latencyMs: undefined });
    this.refresh(s, out);
  }

  private onDelta(m: Delta, out: SessionOutput): void {
    const s = this.subs.get(m.symbol);
    if (s === undefined || s.phase !== "live" || !s.synced) return;
    if (m.epoch !== s.epoch) {
      this.resync(s, "epoch", `delta of epoch ${m.epoch}, held ${s.epoch}`, out);
      return;
    }
    if (m.seq <= s.seq) {
      this.resync(s, "duplicate", `delta ${m.seq} at or below held seq ${s.seq}`, out);
      return;
    }
    if (m.prevSeq !== s.seq) {
      s.counters.gaps++;
      this.resync(s, "gap", `delta ${m.prevSeq}->${m.seq}, held seq ${s.seq}`, out);
      return;
    }
    const bids = levels(m.bids);
    const asks = levels(m.asks);
    try {
      for (const [p, q] of bids) s.book.setBid(p, q);
      for (const [p, q] of asks) s.book.setAsk(p, q);
    } catch (e) {
      this.resync(s, "invalid", String(e), out);
      return;
    }
    s.seq = m.seq;
    s.counters.deltas++;
    const sum = s.book.checksum();
    if (sum !== m.checksum) {
      s.counters.checksumFailures++;
      this.resync(s, "checksum", `delta ${m.seq}: computed ${sum}, server ${m.checksum}`, out);
      return;
    }
    s.checksum = sum;
    s.counters.verified++;
    const latencyMs = m.publishTimeNs > 0n ? this.now() - Number(m.publishTimeNs / 1000n) / 1000 : undefined;
    out.events.push({ type: "book", symbol: s.symbol, kind: "delta", epoch: s.epoch, seq: s.seq, bids, asks, latencyMs });
    if (s.serverStale) {
      // Deltas flow again: the node reached its source.
      s.serverStale = false;
      out.events.push({ type: "stale", symbol: s.symbol, stale: false });
      this.refresh(s, out);
    }
  }

  private onHeartbeat(m: Heartbeat, out: SessionOutput): void {
    const s = this.subs.get(m.symbol);
    if (s === undefined || s.phase !== "live" || !s.synced) return;
    s.counters.heartbeats++;
    if (m.epoch !== s.epoch) {
      this.resync(s, "epoch", `heartbeat of epoch ${m.epoch}, held ${s.epoch}`, out);
      return;
    }
    if (m.seq !== s.seq) {
      this.resync(s, "heartbeat", `heartbeat at seq ${m.seq}, held ${s.seq}`, out);
      return;
    }
    if (m.stale !== s.serverStale) {
      s.serverStale = m.stale;
      out.events.push({ type: "stale", symbol: s.symbol, stale: m.stale });
      this.refresh(s, out);
    }
  }

  private onError(code: ErrorCode, message: string, symbol: string, requestId: bigint, out: SessionOutput): void {
    // Answers to requests whose outcome no longer matters (our resync's
    // Unsubscribe, a Subscribe given up) are expected and stay quiet.
    if (requestId !== 0n && this.quietRequests.delete(requestId)) return;
    const s = symbol ? this.subs.get(symbol) : undefined;
    const name = errorName(code).replace(/^ERROR_CODE_/, "");
    if (s !== undefined && requestId !== 0n && requestId === s.pending && s.phase === "subscribing") {
      if (TERMINAL.has(code)) {
        s.failed = true;
        s.phase = "idle";
        s.synced = false;
        out.events.push({ type: "error", code: name, message, symbol: s.symbol, fatal: true });
        this.refresh(s, out);
        return;
      }
      if (code === ErrorCode.ALREADY_SUBSCRIBED) {
        out.events.push({ type: "error", code: name, message, symbol: s.symbol, fatal: false });
        this.resync(s, "already_subscribed", message, out);
        return;
      }
      // INTERNAL or a code this client does not know: try again later.
      s.phase = "idle";
      out.retry.push(s.symbol);
      out.events.push({ type: "error", code: name, message, symbol: s.symbol, fatal: false });
      this.refresh(s, out);
      return;
    }
    out.events.push({ type: "error", code: name, message, symbol: symbol || undefined, fatal: false });
  }

  // ------------------------------------------------------------ actions

  /** §7.5: repair one symbol on the same connection, leaving the others alone. */
  private resync(s: Subscription, reason: ResyncReason, detail: string, out: SessionOutput): void {
    s.counters.resyncs++;
    s.counters.resyncsByReason[reason]++;
    out.events.push({ type: "resync", symbol: s.symbol, reason, detail });
    this.restart(s, out, true);
    this.refresh(s, out);
  }

  /** Unsubscribe (if the server may hold one) and subscribe afresh, without resume. */
  private restart(s: Subscription, out: SessionOutput, unsubscribeFirst: boolean): void {
    s.synced = false;
    if (unsubscribeFirst) out.send.push(this.unsubscribeMessage(s.symbol, true));
    this.sendSubscribe(s, out);
  }

  private unsubscribeMessage(symbol: string, quiet: boolean): ClientMessage {
    const requestId = this.requestId();
    if (quiet) this.quietRequests.add(requestId);
    return create(ClientMessageSchema, { kind: { case: "unsubscribe", value: { symbol, requestId } } });
  }

  private sendSubscribe(s: Subscription, out: SessionOutput): void {
    const requestId = this.requestId();
    s.pending = requestId;
    s.phase = "subscribing";
    // Only a verified book may be offered as a resume point (§7.2).
    const resume = s.synced ? { epoch: s.epoch, seq: s.seq } : undefined;
    out.send.push(
      create(ClientMessageSchema, {
        kind: {
          case: "subscribe",
          value: { symbol: s.symbol, depth: s.depth, intervalMs: s.intervalMs, requestId, resume },
        },
      }),
    );
  }

  /** Emits a state change if the derived state moved. */
  private refresh(s: Subscription, out: SessionOutput): void {
    const state = s.derive();
    if (state !== s.state) {
      const previous = s.state;
      s.state = state;
      out.events.push({ type: "symbolState", symbol: s.symbol, state, previous });
    }
  }
}

function output(): SessionOutput {
  return { send: [], events: [], retry: [] };
}
