// The binary and JSON decoders agree, on the server messages that
// docs/protocol.md shows and on generated ones.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { create, equals, toJsonString } from "@bufbuild/protobuf";
import fc from "fast-check";
import { decodeClient, decodeServer, DecodeError, encodeClient, encodeServer } from "../src/codec.js";
import { ClientMessageSchema, ServerMessageSchema, Start } from "../src/gen/orderbook/v1/stream_pb.js";
import { Session } from "../src/session.js";
import { REPO } from "./shared.js";

const KINDS = ["subscribed", "unsubscribed", "snapshot", "delta", "heartbeat", "error", "pong"];

function docExamples(): string[] {
  const doc = readFileSync(join(REPO, "docs", "protocol.md"), "utf8");
  return doc.split("\n").filter((l) => KINDS.some((k) => l.startsWith(`{"${k}":`)));
}

test("every server example of docs/protocol.md decodes alike from JSON and from binary", () => {
  const examples = docExamples();
  assert.ok(examples.length >= 8, `only ${examples.length} examples found`);
  const seen = new Set<string>();
  for (const line of examples) {
    const fromJson = decodeServer(line, "json");
    seen.add(fromJson.kind.case!);
    const bytes = encodeServer(fromJson, "proto") as Uint8Array;
    const fromBinary = decodeServer(bytes.slice().buffer, "proto");
    assert.ok(equals(ServerMessageSchema, fromJson, fromBinary), line);
    // And back to the same JSON the server writes (zero values included).
    const again = JSON.parse(toJsonString(ServerMessageSchema, fromBinary, { alwaysEmitImplicit: true }));
    const original = JSON.parse(line);
    for (const [k, v] of Object.entries(original[fromJson.kind.case!])) {
      assert.deepEqual(again[fromJson.kind.case!][k], v, `${k} of ${line}`);
    }
  }
  assert.deepEqual([...seen].sort(), [...KINDS].sort());
});

test("the documented story verifies: snapshot 485215763, then delta 1540368275", () => {
  const lines = docExamples();
  const pick = (kind: string) => decodeServer(lines.find((l) => l.startsWith(`{"${kind}":`))!, "json");
  const s = new Session();
  s.subscribe("BTC-USD");
  const sub = s.open().send[0]!;
  assert.equal(sub.kind.case, "subscribe");
  const ack = pick("subscribed");
  if (ack.kind.case === "subscribed" && sub.kind.case === "subscribe") ack.kind.value.requestId = sub.kind.value.requestId;
  s.receive(ack);
  s.receive(pick("snapshot"));
  assert.equal(s.get("BTC-USD")!.checksum, 485215763);
  s.receive(pick("delta"));
  const v = s.get("BTC-USD")!;
  assert.equal(v.state, "live");
  assert.equal(v.seq, 43n);
  assert.equal(v.checksum, 1540368275);
  assert.equal(v.counters.verified, 2);
});

test("property: generated server messages survive both encodings identically", () => {
  const level = fc.record({ price: fc.bigInt(-(2n ** 63n), 2n ** 63n - 1n), size: fc.bigInt(0n, 2n ** 64n - 1n) });
  fc.assert(
    fc.property(
      fc.string(),
      fc.bigInt(0n, 2n ** 64n - 1n),
      fc.bigInt(0n, 2n ** 64n - 1n),
      fc.array(level, { maxLength: 5 }),
      fc.array(level, { maxLength: 5 }),
      fc.nat(2 ** 32 - 1),
      (symbol, epoch, seq, bids, asks, checksum) => {
        const m = create(ServerMessageSchema, {
          kind: { case: "delta", value: { symbol, epoch, seq, prevSeq: seq > 0n ? seq - 1n : 0n, bids, asks, checksum } },
        });
        const viaJson = decodeServer(encodeServer(m, "json") as string, "json");
        const viaBinary = decodeServer(encodeServer(m, "proto") as Uint8Array, "proto");
        assert.ok(equals(ServerMessageSchema, viaJson, viaBinary));
        assert.ok(equals(ServerMessageSchema, viaJson, m));
      },
    ),
  );
});

test("client messages: 64-bit values are JSON strings, as the protocol asks", () => {
  const m = create(ClientMessageSchema, {
    kind: { case: "subscribe", value: { symbol: "BTC-USD", requestId: 2n, resume: { epoch: 1767225600000000000n, seq: 42n } } },
  });
  const text = encodeClient(m, "json") as string;
  assert.match(text, /"epoch":"1767225600000000000"/);
  assert.ok(equals(ClientMessageSchema, decodeClient(text, "json"), decodeClient(encodeClient(m, "proto"), "proto")));
});

test("unknown fields and kinds are accepted; garbage is a DecodeError", () => {
  const withUnknown = decodeServer('{"heartbeat":{"symbol":"X","seq":"3","futureField":1}}', "json");
  assert.equal(withUnknown.kind.case, "heartbeat");
  assert.equal(decodeServer('{"somethingNew":{}}', "json").kind.case, undefined);
  assert.equal(decodeServer(new Uint8Array([0xfa, 0x01, 0x00]), "proto").kind.case, undefined); // field 31, empty
  assert.throws(() => decodeServer(new Uint8Array([0x0a, 0xff]), "proto"), DecodeError);
  assert.throws(() => decodeServer("{not json", "json"), DecodeError);
  assert.throws(() => decodeServer("{}", "proto"), DecodeError);
  assert.throws(() => decodeServer(new Uint8Array(1), "json"), DecodeError);
  assert.equal(Start.RESUMED, 2);
});
