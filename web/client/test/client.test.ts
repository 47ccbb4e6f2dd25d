// OrderbookClient over real sockets against a scripted node (the `ws`
// package on a free port): bad input, reconnect with resume, fatal closes,
// a full node's Retry-After, a silent node.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { WebSocket, WebSocketServer, type WebSocket as ServerSocket } from "ws";
import { OrderbookClient, type ClientEvents } from "../src/client.js";
import { decodeClient, encodeServer, type Encoding } from "../src/codec.js";
import {
  ErrorCode,
  ServerMessageSchema,
  SnapshotReason,
  Start,
  type ClientMessage,
  type ServerMessage,
} from "../src/gen/orderbook/v1/stream_pb.js";
import { ModelBook } from "./model.js";

const TIMEOUT = { timeout: 20_000 };

/** A node whose behaviour each test scripts. */
class ScriptedNode {
  readonly http: Server;
  readonly wss: WebSocketServer;
  readonly books = new Map<string, ModelBook>();
  readonly history = new Map<string, Map<bigint, ServerMessage>>();
  readonly received: ClientMessage[] = [];
  sockets: ServerSocket[] = [];
  connections = 0;
  /** Status of refused upgrades (0: accept). */
  refuse = 0;
  readyzStatus = 200;
  onMessage: (ws: ServerSocket, m: ClientMessage) => boolean = () => false;

  private constructor(readonly encoding: Encoding) {
    this.http = createServer((req, res) => {
      if (req.url === "/readyz") {
        res.writeHead(this.readyzStatus, this.readyzStatus === 503 ? { "Retry-After": "1" } : {});
        res.end(JSON.stringify({ status: this.readyzStatus === 503 ? "full" : "ready" }));
      } else {
        res.writeHead(404).end();
      }
    });
    this.wss = new WebSocketServer({
      server: this.http,
      handleProtocols: (protocols) => (encoding === "json" ? "orderbook.v1.json" : [...protocols][0]!),
      verifyClient: (_info, cb) => (this.refuse ? cb(false, this.refuse, "refused", { "Retry-After": "1" }) : cb(true)),
    });
    this.wss.on("connection", (ws) => {
      this.connections++;
      this.sockets.push(ws);
      ws.on("message", (data, isBinary) => {
        const m = decodeClient(isBinary ? new Uint8Array(data as Buffer) : data.toString(), this.encoding);
        this.received.push(m);
        if (!this.onMessage(ws, m)) this.answer(ws, m);
      });
    });
  }

  static async start(encoding: Encoding = "proto"): Promise<ScriptedNode> {
    const node = new ScriptedNode(encoding);
    await new Promise<void>((r) => node.http.listen(0, "127.0.0.1", r));
    return node;
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.http.address() as AddressInfo).port}/ws`;
  }

  book(symbol: string): ModelBook {
    let b = this.books.get(symbol);
    if (b === undefined) {
      this.books.set(symbol, (b = new ModelBook(symbol)));
      this.history.set(symbol, new Map());
      b.change([[100n, 1n]], [[101n, 1n]]);
    }
    return b;
  }

  send(ws: ServerSocket, m: ServerMessage | Uint8Array | string): void {
    ws.send(m instanceof Uint8Array || typeof m === "string" ? m : encodeServer(m, this.encoding));
  }

  /** A change to `symbol`, sent to every connection. */
  change(symbol: string, price: bigint, size: bigint): ServerMessage {
    const b = this.book(symbol);
    const d = b.change([[price, size]], []);
    this.history.get(symbol)!.set(b.seq, d);
    for (const ws of this.sockets) if (ws.readyState === WebSocket.OPEN) this.send(ws, d);
    return d;
  }

  /** What a node answers (§8): resume when it can, else a snapshot. */
  answer(ws: ServerSocket, m: ClientMessage): void {
    if (m.kind.case === "subscribe") {
      const sub = m.kind.value;
      const b = this.book(sub.symbol);
      const r = sub.resume;
      if (r !== undefined && r.epoch === b.epoch && r.seq <= b.seq) {
        this.send(ws, b.subscribed(sub.requestId, Start.RESUMED, SnapshotReason.UNSPECIFIED, r.seq));
        for (let q = r.seq + 1n; q <= b.seq; q++) this.send(ws, this.history.get(sub.symbol)!.get(q)!);
      } else {
        this.send(ws, b.subscribed(sub.requestId, Start.SNAPSHOT, r ? SnapshotReason.STALE_EPOCH : SnapshotReason.NEW));
        this.send(ws, b.snapshot());
      }
    } else if (m.kind.case === "unsubscribe") {
      const { symbol, requestId } = m.kind.value;
      this.send(ws, create(ServerMessageSchema, { kind: { case: "unsubscribed", value: { symbol, requestId } } }));
    } else if (m.kind.case === "ping") {
      this.send(ws, create(ServerMessageSchema, { kind: { case: "pong", value: { requestId: m.kind.value.requestId } } }));
    }
  }

  async stop(): Promise<void> {
    for (const ws of this.wss.clients) ws.terminate();
    await new Promise((r) => this.wss.close(r));
    await new Promise((r) => this.http.close(r));
  }
}

function client(node: ScriptedNode, symbols: string[], extra: Partial<ConstructorParameters<typeof OrderbookClient>[0]> = {}) {
  return new OrderbookClient({
    url: node.url,
    symbols,
    encoding: node.encoding,
    webSocket: (url, protocols) => new WebSocket(url, protocols) as never,
    backoff: { baseMs: 20, capMs: 200 },
    ...extra,
  });
}

/** Resolves with the first event of `type` that satisfies `pred`. */
function next<K extends keyof ClientEvents>(c: OrderbookClient, type: K, pred: (e: ClientEvents[K]) => boolean = () => true, ms = 10_000) {
  return new Promise<ClientEvents[K]>((resolve, reject) => {
    const timer = setTimeout(() => (off(), reject(new Error(`no ${String(type)} event`))), ms);
    const off = c.on(type, (e) => {
      if (!pred(e)) return;
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}

async function until(pred: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error("condition not reached");
    await new Promise((r) => setTimeout(r, 10)); // polling a condition under a deadline
  }
}

for (const encoding of ["proto", "json"] as const) {
  test(`${encoding}: live books on many symbols, verified`, TIMEOUT, async () => {
    const node = await ScriptedNode.start(encoding);
    const c = client(node, ["A", "B"]);
    try {
      await Promise.all([c.whenLive("A"), c.whenLive("B")]);
      assert.equal(c.encodingInUse, encoding);
      for (let i = 0n; i < 50n; i++) node.change(i % 2n ? "A" : "B", 90n - i, i + 1n);
      await until(() => c.symbol("A")!.seq === node.book("A").seq && c.symbol("B")!.seq === node.book("B").seq);
      assert.deepEqual(c.symbol("A")!.book.bids(), node.book("A").sortedBids());
      assert.equal(c.symbol("A")!.counters.verified, 26);
      assert.ok(c.stats().latency.count >= 50);
    } finally {
      c.close();
      await node.stop();
    }
  });
}

test("bad input: a corrupt checksum, a garbled frame and an error frame", TIMEOUT, async () => {
  const node = await ScriptedNode.start();
  const c = client(node, ["A", "B"]);
  const errors: ClientEvents["error"][] = [];
  c.on("error", (e) => errors.push(e));
  c.on("book", () => {
    throw new Error("a careless listener"); // must not disturb the client
  });
  const origError = console.error;
  console.error = () => {};
  try {
    await Promise.all([c.whenLive("A"), c.whenLive("B")]);
    const ws = node.sockets[0]!;
    // 1. A delta of A with a wrong checksum: A alone resyncs.
    const b = node.book("A");
    const bad = b.change([[50n, 5n]], []);
    node.history.get("A")!.set(b.seq, bad);
    if (bad.kind.case === "delta") bad.kind.value.checksum = (bad.kind.value.checksum ^ 1) >>> 0;
    const resync = next(c, "resync");
    node.send(ws, bad);
    assert.equal((await resync).reason, "checksum");
    await c.whenLive("A");
    assert.deepEqual(c.symbol("A")!.book.bids(), b.sortedBids());
    // 2. A garbled frame: surfaced as an error; the delta it hid shows as a gap of A alone.
    const decode = next(c, "error", (e) => e.code === "DECODE");
    node.send(ws, new Uint8Array([0x22, 0xff, 0xff]));
    assert.equal((await decode).fatal, false);
    b.change([[51n, 1n]], []); // lost inside the garbled frame
    const gap = next(c, "resync", (e) => e.symbol === "A");
    node.change("A", 52n, 1n);
    assert.equal((await gap).reason, "gap");
    await c.whenLive("A");
    // 3. An error frame: surfaced, nothing else changes.
    const err = next(c, "error", (e) => e.code === "INTERNAL");
    node.send(ws, create(ServerMessageSchema, { kind: { case: "error", value: { code: ErrorCode.INTERNAL, message: "oops" } } }));
    assert.equal((await err).message, "oops");
    node.change("B", 60n, 2n);
    await until(() => c.symbol("B")!.seq === node.book("B").seq);
    const bs = c.symbol("B")!;
    assert.equal(bs.state, "live");
    assert.equal(bs.counters.resyncs, 0, "B never resynced");
    assert.equal(c.symbol("A")!.counters.resyncs, 2);
    assert.equal(c.stats().decodeErrors, 1);
    assert.ok(c.stats().listenerErrors > 0);
    assert.equal(node.connections, 1, "no reconnect for bad input");
    assert.equal(c.state, "live");
  } finally {
    console.error = origError;
    c.close();
    await node.stop();
  }
});

test("a dropped connection resumes from (epoch, seq): the missed deltas, no snapshot", TIMEOUT, async () => {
  const node = await ScriptedNode.start();
  const c = client(node, ["A"]);
  try {
    await c.whenLive("A");
    const states: string[] = [];
    c.on("connectionState", (e) => states.push(e.state));
    const held = c.symbol("A")!.seq;
    node.sockets[0]!.terminate();
    await next(c, "connectionState", (e) => e.state === "reconnecting");
    assert.equal(c.symbol("A")!.state, "stale");
    for (let i = 0n; i < 5n; i++) node.change("A", 80n + i, 1n); // missed while away
    const resumed = await next(c, "subscribed");
    assert.equal(resumed.start, "resumed");
    assert.equal(resumed.seq, held);
    await until(() => c.symbol("A")!.seq === node.book("A").seq);
    const v = c.symbol("A")!;
    assert.equal(v.state, "live");
    assert.equal(v.counters.snapshots, 1);
    assert.equal(v.counters.resumes, 1);
    assert.deepEqual(v.book.bids(), node.book("A").sortedBids());
    assert.deepEqual(states.slice(0, 3), ["reconnecting", "connecting", "live"]);
  } finally {
    c.close();
    await node.stop();
  }
});

test("a policy close (1008) stops the client: retrying cannot help", TIMEOUT, async () => {
  const node = await ScriptedNode.start();
  const c = client(node, ["A"]);
  try {
    await c.whenLive("A");
    const fatal = next(c, "error", (e) => e.fatal);
    node.sockets[0]!.close(1008, "too many errors");
    assert.equal((await fatal).code, "CLOSE_1008");
    assert.equal(c.state, "closed");
    await new Promise((r) => setTimeout(r, 300)); // long enough for a (wrong) reconnect
    assert.equal(node.connections, 1);
  } finally {
    c.close();
    await node.stop();
  }
});

test("a full node: the refused upgrade waits for /readyz's Retry-After", TIMEOUT, async () => {
  const node = await ScriptedNode.start();
  node.refuse = 503;
  node.readyzStatus = 503;
  const c = client(node, ["A"], { autoConnect: false });
  try {
    const waiting = next(c, "connectionState", (e) => e.retryInMs !== undefined);
    const started = Date.now();
    c.connect();
    assert.ok((await waiting).retryInMs! >= 1000, "Retry-After: 1 honoured");
    node.refuse = 0;
    node.readyzStatus = 200;
    await c.whenLive("A");
    assert.ok(Date.now() - started >= 1000);
  } finally {
    c.close();
    await node.stop();
  }
});

test("a silent node is dropped after idleTimeoutMs and the client comes back", TIMEOUT, async () => {
  const node = await ScriptedNode.start();
  let silent = true;
  node.onMessage = (_ws, m) => silent && m.kind.case === "ping"; // swallow pings
  const c = client(node, ["A"], { idleTimeoutMs: 400, pingIntervalMs: 100 });
  try {
    await c.whenLive("A");
    const dropped = await next(c, "connectionState", (e) => e.state === "reconnecting");
    assert.equal(dropped.code, 4000);
    silent = false;
    await next(c, "subscribed");
    await c.whenLive("A");
    assert.ok(node.received.some((m) => m.kind.case === "ping"));
    assert.ok(node.connections >= 2);
  } finally {
    c.close();
    await node.stop();
  }
});

test("subscribe and unsubscribe at any time; depth and interval reach the node", TIMEOUT, async () => {
  const node = await ScriptedNode.start();
  const c = client(node, []);
  try {
    await next(c, "connectionState", (e) => e.state === "live");
    c.subscribe("A", { depth: 10, intervalMs: 100 });
    await c.whenLive("A");
    c.subscribe("B");
    await c.whenLive("B");
    c.unsubscribe("A");
    await next(c, "unsubscribed");
    const subs = node.received.flatMap((m) => (m.kind.case === "subscribe" ? [m.kind.value] : []));
    assert.deepEqual(subs.map((s) => [s.symbol, s.depth, s.intervalMs]), [["A", 10, 100], ["B", 0, 0]]);
    assert.equal(c.symbol("A"), undefined);
    assert.ok((await c.ping()) >= 0);
  } finally {
    c.close();
    await node.stop();
  }
});
