// The session core driven directly: server messages in, client messages and
// events out (docs/protocol.md §7, §8).
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import fc from "fast-check";
import {
  ErrorCode,
  ServerMessageSchema,
  SnapshotReason,
  Start,
  type ClientMessage,
  type ServerMessage,
  type Subscribe,
} from "../src/gen/orderbook/v1/stream_pb.js";
import { Session, type SessionEvent, type SessionOutput } from "../src/session.js";
import { delta, ModelBook } from "./model.js";

function subscribes(out: SessionOutput): Subscribe[] {
  return out.send.flatMap((m) => (m.kind.case === "subscribe" ? [m.kind.value] : []));
}
function kinds(out: SessionOutput): string[] {
  return out.send.map((m: ClientMessage) => m.kind.case!);
}
function events<T extends SessionEvent["type"]>(out: SessionOutput, type: T): Extract<SessionEvent, { type: T }>[] {
  return out.events.filter((e): e is Extract<SessionEvent, { type: T }> => e.type === type);
}
function error(code: ErrorCode, symbol: string, requestId: bigint): ServerMessage {
  return create(ServerMessageSchema, { kind: { case: "error", value: { code, symbol, requestId, message: "no" } } });
}

/** A session subscribed to `model`'s symbol and live at its current seq. */
function live(model: ModelBook, session = new Session()): Session {
  const out = session.subscribe(model.symbol);
  const sub = session.isConnected ? subscribes(out)[0]! : subscribes(session.open())[0]!;
  session.receive(model.subscribed(sub.requestId, Start.SNAPSHOT, SnapshotReason.NEW));
  const snap = session.receive(model.snapshot());
  assert.equal(events(snap, "book").length, 1);
  assert.equal(session.get(model.symbol)!.state, "live");
  return session;
}

test("snapshot then deltas: every message verified", () => {
  const m = new ModelBook("BTC-USD");
  m.change([[100n, 5n]], [[101n, 7n]]);
  const s = live(m);
  for (let i = 0n; i < 20n; i++) {
    const out = s.receive(m.change([[99n - i, i + 1n]], [[102n + i, 3n]]));
    assert.equal(events(out, "book")[0]!.seq, m.seq);
    assert.equal(out.send.length, 0);
  }
  const v = s.get("BTC-USD")!;
  assert.equal(v.seq, 21n);
  assert.equal(v.counters.verified, 21);
  assert.equal(v.checksum, m.checksum());
  assert.deepEqual(v.book.bids(), m.sortedBids());
});

test("a wrong checksum resyncs that symbol alone, in-band, without a resume point", () => {
  const a = new ModelBook("A");
  const b = new ModelBook("B");
  const s = live(b, live(a));
  const bad = a.change([[1n, 1n]], []);
  if (bad.kind.case === "delta") bad.kind.value.checksum = (bad.kind.value.checksum ^ 1) >>> 0;
  const out = s.receive(bad);
  assert.deepEqual(kinds(out), ["unsubscribe", "subscribe"]);
  assert.equal(subscribes(out)[0]!.resume, undefined);
  assert.deepEqual(events(out, "resync").map((e) => e.reason), ["checksum"]);
  assert.equal(s.get("A")!.state, "resyncing");
  assert.equal(s.get("A")!.counters.checksumFailures, 1);
  // B is untouched and keeps verifying.
  assert.equal(events(s.receive(b.change([[5n, 5n]], [])), "book").length, 1);
  assert.equal(s.get("B")!.state, "live");
  // A's old stream is ignored until the new Subscribed; then the snapshot repairs it.
  assert.equal(s.receive(a.change([[2n, 2n]], [])).events.length, 0);
  assert.equal(s.receive(a.snapshot()).events.length, 0);
  s.receive(a.subscribed(subscribes(out)[0]!.requestId, Start.SNAPSHOT, SnapshotReason.NEW));
  s.receive(a.snapshot());
  assert.equal(s.get("A")!.state, "live");
  assert.deepEqual(s.get("A")!.book.bids(), a.sortedBids());
});

test("a gap, a duplicate, another epoch and a heartbeat mismatch each resync", () => {
  const cases: [string, (m: ModelBook) => ServerMessage][] = [
    ["gap", (m) => (m.change([[1n, 1n]], []), m.change([[2n, 1n]], []))],
    ["duplicate", (m) => delta(m.symbol, m.epoch, m.seq, m.seq - 1n, [], [], m.checksum())],
    ["epoch", (m) => delta(m.symbol, m.epoch + 1n, m.seq + 1n, m.seq, [], [], m.checksum())],
    ["heartbeat", (m) => m.heartbeat(m.seq + 3n)],
  ];
  for (const [reason, make] of cases) {
    const m = new ModelBook("S");
    m.change([[10n, 1n]], [[11n, 1n]]);
    const s = live(m);
    const out = s.receive(make(m));
    assert.deepEqual(events(out, "resync").map((e) => e.reason), [reason], reason);
    assert.deepEqual(kinds(out), ["unsubscribe", "subscribe"], reason);
    assert.equal(s.get("S")!.counters.resyncsByReason[reason as "gap"], 1);
  }
});

test("a heartbeat at the held seq is fine; stale=true marks the book stale until it clears", () => {
  const m = new ModelBook("S");
  const s = live(m);
  assert.equal(s.receive(m.heartbeat()).send.length, 0);
  s.receive(m.heartbeat(m.seq, true));
  assert.equal(s.get("S")!.state, "stale");
  s.receive(m.heartbeat(m.seq, false));
  assert.equal(s.get("S")!.state, "live");
});

test("resume decisions: a verified book offers (epoch, seq); START_RESUMED keeps it", () => {
  const m = new ModelBook("S");
  m.change([[10n, 1n]], []);
  const s = live(m);
  s.close();
  assert.equal(s.get("S")!.state, "stale");
  const missed = [m.change([[11n, 2n]], []), m.change([[12n, 3n]], [])];
  const sub = subscribes(s.open())[0]!;
  assert.deepEqual(sub.resume && { epoch: sub.resume.epoch, seq: sub.resume.seq }, { epoch: 7n, seq: 1n });
  const ack = s.receive(m.subscribed(sub.requestId, Start.RESUMED, SnapshotReason.UNSPECIFIED, 1n));
  assert.equal(events(ack, "subscribed")[0]!.start, "resumed");
  assert.equal(s.get("S")!.state, "live");
  for (const d of missed) assert.equal(events(s.receive(d), "book").length, 1);
  assert.equal(s.get("S")!.seq, 3n);
  assert.equal(s.get("S")!.counters.resumes, 1);
  assert.equal(s.get("S")!.counters.snapshots, 1);
});

test("resume decisions: a new epoch gets a fresh snapshot, reported as such", () => {
  const m = new ModelBook("S");
  m.change([[10n, 1n]], []);
  const s = live(m);
  s.close();
  const sub = subscribes(s.open())[0]!;
  const restarted = new ModelBook("S", 99n);
  restarted.change([[50n, 5n]], []);
  const ack = s.receive(restarted.subscribed(sub.requestId, Start.SNAPSHOT, SnapshotReason.STALE_EPOCH));
  assert.deepEqual(
    events(ack, "subscribed").map((e) => [e.start, e.reason, e.newEpoch]),
    [["snapshot", "stale_epoch", true]],
  );
  s.receive(restarted.snapshot());
  assert.equal(s.get("S")!.epoch, 99n);
  assert.deepEqual(s.get("S")!.book.bids(), [[50n, 5n]]);
});

test("resume decisions: an unverified book offers no resume point; a resume elsewhere resyncs", () => {
  const m = new ModelBook("S");
  const s = new Session();
  s.subscribe("S");
  const first = subscribes(s.open())[0]!;
  assert.equal(first.resume, undefined);
  s.close();
  assert.equal(subscribes(s.open())[0]!.resume, undefined);
  // A verified book, then a server that claims to resume at another seq.
  const t = live(m);
  t.close();
  const sub = subscribes(t.open())[0]!;
  const out = t.receive(m.subscribed(sub.requestId, Start.RESUMED, SnapshotReason.UNSPECIFIED, sub.resume!.seq + 5n));
  assert.deepEqual(events(out, "resync").map((e) => e.reason), ["resume"]);
});

test("property: whatever is dropped, duplicated or corrupted, a live book is the server's book", () => {
  const fault = fc.constantFrom("none", "none", "none", "drop", "dup", "corrupt", "reconnect");
  const step = fc.record({
    fault,
    side: fc.constantFrom("bid", "ask"),
    price: fc.bigInt(1n, 30n),
    size: fc.bigInt(0n, 5n),
  });
  fc.assert(
    fc.property(fc.array(step, { maxLength: 120 }), (steps) => {
      const m = new ModelBook("P");
      const s = new Session();
      // The node's history: every delta by the seq it leads to.
      const history = new Map<bigint, ServerMessage>();
      let pending = subscribes(s.subscribe("P")).concat(subscribes(s.open()));
      const serve = (subs: Subscribe[]): void => {
        // The node's answer to each Subscribe (§8): resume when it can.
        for (const sub of subs) {
          const r = sub.resume;
          if (r !== undefined && r.epoch === m.epoch && r.seq <= m.seq) {
            s.receive(m.subscribed(sub.requestId, Start.RESUMED, SnapshotReason.UNSPECIFIED, r.seq));
            for (let q = r.seq + 1n; q <= m.seq; q++) s.receive(history.get(q)!);
          } else {
            s.receive(m.subscribed(sub.requestId, Start.SNAPSHOT, SnapshotReason.NEW));
            s.receive(m.snapshot());
          }
        }
      };
      serve(pending);
      for (const st of steps) {
        const d = m.change(st.side === "bid" ? [[st.price, st.size]] : [], st.side === "ask" ? [[st.price, st.size]] : []);
        history.set(m.seq, d);
        let out: SessionOutput | undefined;
        if (st.fault === "drop") continue;
        if (st.fault === "reconnect") {
          s.close();
          out = s.open();
        } else if (st.fault === "corrupt" && d.kind.case === "delta") {
          const bad = create(ServerMessageSchema, d);
          if (bad.kind.case === "delta") bad.kind.value = { ...d.kind.value, checksum: (d.kind.value.checksum ^ 0x10) >>> 0 };
          out = s.receive(bad);
        } else {
          out = s.receive(d);
          if (st.fault === "dup") out.send.push(...s.receive(d).send);
        }
        pending = subscribes(out);
        serve(pending);
        const v = s.get("P")!;
        if (v.state === "live") {
          assert.equal(v.seq, m.seq);
          assert.deepEqual(v.book.bids(), m.sortedBids());
          assert.deepEqual(v.book.asks(), m.sortedAsks());
        }
      }
      // A heartbeat at the end tells a lagging session it missed something.
      serve(subscribes(s.receive(m.heartbeat())));
      const v = s.get("P")!;
      assert.equal(v.state, "live");
      assert.equal(v.seq, m.seq);
      assert.deepEqual(v.book.bids(), m.sortedBids());
    }),
    { numRuns: 200 },
  );
});

test("server errors: terminal ones fail the symbol, ALREADY_SUBSCRIBED resyncs, INTERNAL retries", () => {
  const s = new Session();
  s.subscribe("NOPE");
  s.subscribe("DUP");
  s.subscribe("FLAKY");
  const subs = subscribes(s.open());
  const [nope, dup, flaky] = subs;
  const e1 = s.receive(error(ErrorCode.UNKNOWN_SYMBOL, "NOPE", nope!.requestId));
  assert.deepEqual(events(e1, "error").map((e) => [e.code, e.fatal]), [["UNKNOWN_SYMBOL", true]]);
  assert.equal(s.get("NOPE")!.state, "failed");
  const e2 = s.receive(error(ErrorCode.ALREADY_SUBSCRIBED, "DUP", dup!.requestId));
  assert.deepEqual(kinds(e2), ["unsubscribe", "subscribe"]);
  const e3 = s.receive(error(ErrorCode.INTERNAL, "FLAKY", flaky!.requestId));
  assert.deepEqual(e3.retry, ["FLAKY"]);
  // A node's churn limit (RATE_LIMITED) is also retried later, never a failure.
  const again = subscribes(s.retry("FLAKY"))[0]!;
  const limited = s.receive(error(ErrorCode.RATE_LIMITED, "FLAKY", again.requestId));
  assert.deepEqual(limited.retry, ["FLAKY"]);
  assert.notEqual(s.get("FLAKY")!.state, "failed");
  assert.equal(subscribes(s.retry("FLAKY")).length, 1);
  // An error about our own resync's Unsubscribe is expected and stays quiet.
  const unsub = e2.send[0]!;
  assert.equal(unsub.kind.case, "unsubscribe");
  const quiet = s.receive(error(ErrorCode.NOT_SUBSCRIBED, "DUP", unsub.kind.case === "unsubscribe" ? unsub.kind.value.requestId : 0n));
  assert.equal(quiet.events.length, 0);
  // Any other error is reported, not thrown.
  assert.equal(events(s.receive(error(ErrorCode.MALFORMED_MESSAGE, "", 0n)), "error").length, 1);
});

test("changing depth or interval subscribes afresh; unsubscribe forgets the symbol", () => {
  const m = new ModelBook("S");
  const s = live(m);
  const out = s.subscribe("S", { depth: 10, intervalMs: 100 });
  assert.deepEqual(kinds(out), ["unsubscribe", "subscribe"]);
  const sub = subscribes(out)[0]!;
  assert.equal(sub.depth, 10);
  assert.equal(sub.intervalMs, 100);
  assert.equal(s.subscribe("S", { depth: 10, intervalMs: 100 }).send.length, 0);
  assert.deepEqual(kinds(s.unsubscribe("S")), ["unsubscribe"]);
  assert.equal(s.get("S"), undefined);
  assert.equal(s.receive(m.change([[1n, 1n]], [])).events.length, 0);
  assert.throws(() => s.subscribe("S", { depth: -1 }), RangeError);
});

test("unknown envelope kinds are ignored", () => {
  const s = new Session();
  const out = s.receive(create(ServerMessageSchema, {}));
  assert.deepEqual(out, { send: [], events: [], retry: [] });
});

test("the view keeps how the stream last started; dropping a pending subscription stays quiet", () => {
  const m = new ModelBook("S");
  const s = live(m);
  assert.deepEqual([s.get("S")!.lastStart, s.get("S")!.lastReason, s.get("S")!.newEpoch], ["snapshot", "new", false]);
  s.close();
  const sub = subscribes(s.open())[0]!;
  s.receive(m.subscribed(sub.requestId, Start.RESUMED, SnapshotReason.UNSPECIFIED, m.seq));
  assert.deepEqual([s.get("S")!.lastStart, s.get("S")!.lastReason], ["resumed", ""]);

  const t = new Session();
  t.subscribe("GONE");
  const pending = subscribes(t.open())[0]!;
  const unsub = t.unsubscribe("GONE").send[0]!;
  assert.equal(unsub.kind.case, "unsubscribe");
  // The node refuses the Subscribe, then has nothing to unsubscribe: both expected.
  assert.equal(t.receive(error(ErrorCode.UNKNOWN_SYMBOL, "GONE", pending.requestId)).events.length, 0);
  const id = unsub.kind.case === "unsubscribe" ? unsub.kind.value.requestId : 0n;
  assert.equal(t.receive(error(ErrorCode.NOT_SUBSCRIBED, "GONE", id)).events.length, 0);
});
