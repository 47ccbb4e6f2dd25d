"""Conformance: an independent subscriber written only from docs/protocol.md
and proto/orderbook/v1/*.proto, run against a real server.

The client below deliberately uses nothing of the service's own client, codec
or book code: only the standard library, `websockets` and the classes protoc
generates from proto/. The server and the publisher come from tests/harness.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field

import pytest
import websockets

from orderbook.core.history import HistoryLimits  # only to configure the test server
from orderbook.v1 import stream_pb2

from .harness import Publisher, instrument, serve_in_process, test_settings, update

pytestmark = pytest.mark.timeout(60)

PROTO = "orderbook.v1.proto"
JSON = "orderbook.v1.json"

# ------------------------------------------------------------------ the independent client

# Enum names by number, as listed in the doc (§4.2, §4.3) and stream.proto.
ENUMS = {
    "start": ["START_UNSPECIFIED", "START_SNAPSHOT", "START_RESUMED"],
    "reason": [
        "SNAPSHOT_REASON_UNSPECIFIED",
        "SNAPSHOT_REASON_NEW",
        "SNAPSHOT_REASON_STALE_EPOCH",
        "SNAPSHOT_REASON_HISTORY_EXHAUSTED",
        "SNAPSHOT_REASON_AHEAD",
        "SNAPSHOT_REASON_UNSUPPORTED",
    ],
    "code": [
        "ERROR_CODE_UNSPECIFIED",
        "ERROR_CODE_MALFORMED_MESSAGE",
        "ERROR_CODE_UNKNOWN_MESSAGE",
        "ERROR_CODE_UNKNOWN_SYMBOL",
        "ERROR_CODE_ALREADY_SUBSCRIBED",
        "ERROR_CODE_NOT_SUBSCRIBED",
        "ERROR_CODE_INVALID_ARGUMENT",
        "ERROR_CODE_TOO_MANY_SUBSCRIPTIONS",
        "ERROR_CODE_INVALID_UPDATE",
        "ERROR_CODE_INSTRUMENT_CONFLICT",
        "ERROR_CODE_INTERNAL",
    ],
}
INTS = {"request_id", "epoch", "seq", "prev_seq", "checksum", "depth", "time_ns", "event_time_ns", "publish_time_ns"}
KINDS = ("subscribed", "unsubscribed", "snapshot", "delta", "heartbeat", "error", "pong")
SNAKE = re.compile(r"[A-Z]")


def snake(name: str) -> str:
    return SNAKE.sub(lambda m: "_" + m.group().lower(), name)


def enum_name(kind: str, value) -> str:
    if isinstance(value, str):
        return value
    names = ENUMS[kind]
    return names[value] if 0 <= value < len(names) else f"UNKNOWN_{value}"


def checksum(bids: dict[int, int], asks: dict[int, int]) -> int:
    """§6: CRC-32 of the top 10 asks (lowest first), then the top 10 bids (highest first)."""
    top_asks = sorted(asks.items())[:10]
    top_bids = sorted(bids.items(), reverse=True)[:10]
    text = "".join(f"{price}{size}" for price, size in top_asks + top_bids)
    return zlib.crc32(text.encode("ascii"))


def to_decimal(units: int, scale: int) -> str:
    """§3.1, literally."""
    sign = "-" if units < 0 else ""
    digits = str(abs(units)).rjust(scale + 1, "0")
    if scale == 0:
        return sign + digits
    return sign + digits[: len(digits) - scale] + "." + digits[len(digits) - scale :]


def from_decimal(text: str, scale: int) -> int:
    """§3.1: exact, rejects what is not representable at `scale`."""
    negative = text.startswith("-")
    whole, _, frac = (text[1:] if negative else text).partition(".")
    frac = frac.rstrip("0")
    if len(frac) > scale or not (whole + frac).isdigit() or not whole:
        raise ValueError(f"{text!r} is not representable at scale {scale}")
    units = int(whole + frac.ljust(scale, "0"))
    return -units if negative else units


def normalise(fields: dict) -> dict:
    """Absent fields are zero (§13)."""
    for name in INTS:
        fields.setdefault(name, 0)
    for name in ENUMS:
        fields[name] = enum_name(name, fields.get(name, 0))
    fields.setdefault("symbol", "")
    fields.setdefault("bids", [])
    fields.setdefault("asks", [])
    fields.setdefault("instrument", {"price_scale": 0, "size_scale": 0})
    return fields


def to_json(fields: dict) -> dict:
    out = {}
    for name, value in fields.items():
        key = re.sub(r"_(\w)", lambda m: m.group(1).upper(), name)
        if isinstance(value, dict):
            value = to_json(value)
        elif name in ("request_id", "epoch", "seq"):  # uint64
            value = str(value)
        out[key] = value
    return out


def decode_json(text: str):
    """protobuf's canonical JSON mapping, read by hand (§1.2)."""
    envelope = json.loads(text)
    kind = next((k for k in envelope if k in KINDS), None)
    if kind is None:
        return None, None  # unknown envelope kind: ignore (§13)
    fields = {}
    for key, value in envelope[kind].items():
        name = snake(key)
        if name in ("bids", "asks"):
            value = [(int(lv.get("price", 0)), int(lv.get("size", 0))) for lv in value]
        elif name == "instrument":
            value = {snake(k): v for k, v in value.items()}
            value = {"price_scale": int(value.get("price_scale", 0)), "size_scale": int(value.get("size_scale", 0))}
        elif name in INTS:
            value = int(value)
        fields[name] = value
    return kind, normalise(fields)


def decode_proto(data: bytes):
    message = stream_pb2.ServerMessage.FromString(data)
    kind = message.WhichOneof("kind")
    if kind is None:
        return None, None
    body = getattr(message, kind)
    fields = {}
    for fd in body.DESCRIPTOR.fields:
        value = getattr(body, fd.name)
        if fd.name in ("bids", "asks"):
            value = [(lv.price, lv.size) for lv in value]
        elif fd.name == "instrument":
            value = {"price_scale": value.price_scale, "size_scale": value.size_scale}
        fields[fd.name] = value
    return kind, normalise(fields)


@dataclass
class Sub:
    symbol: str
    depth: int = 0
    state: str = "SUBSCRIBING"
    pending: int = 0
    synced: bool = False
    epoch: int = 0
    seq: int = 0
    price_scale: int = 0
    size_scale: int = 0
    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)
    deltas: list[tuple[int, int, int]] = field(default_factory=list)  # (connection, prev_seq, seq)
    subscribed: list[dict] = field(default_factory=list)
    snapshots: list[dict] = field(default_factory=list)
    verified: int = 0
    heartbeats: int = 0


class IndependentClient:
    """A subscriber implementing §7 of the doc; every failed check is recorded."""

    def __init__(self, url: str, encoding: str = PROTO) -> None:
        self.url, self.encoding = url, encoding
        self.ws = None
        self.connection = 0
        self.subs: dict[str, Sub] = {}
        self.failures: list[str] = []
        self.errors: list[dict] = []
        self.pongs: list[int] = []
        self.raw: list[object] = []
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Future] = set()

    async def __aenter__(self) -> IndependentClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        await self.close()
        self.ws = await websockets.connect(self.url, subprotocols=[self.encoding], max_size=None)
        self.connection += 1
        if self.ws.subprotocol != self.encoding:
            self.failures.append(f"server chose subprotocol {self.ws.subprotocol!r}")
        for sub in self.subs.values():  # §7.2: every wanted symbol, resumed if synced
            await self._subscribe(sub, (sub.epoch, sub.seq) if sub.synced else None)

    async def subscribe(self, symbol: str, resume: tuple[int, int] | None = None, depth: int = 0) -> int:
        sub = self.subs.setdefault(symbol, Sub(symbol, depth))
        return await self._subscribe(sub, resume)

    async def _subscribe(self, sub: Sub, resume) -> int:
        rid = next(self._ids)
        fields = {"symbol": sub.symbol, "depth": sub.depth, "request_id": rid}
        if resume is not None:
            fields["resume"] = {"epoch": resume[0], "seq": resume[1]}
        sub.state, sub.pending = "SUBSCRIBING", rid
        await self.send("subscribe", fields)
        return rid

    async def ping(self) -> int:
        rid = next(self._ids)
        await self.send("ping", {"request_id": rid})
        return rid

    async def send(self, kind: str, fields: dict) -> None:
        if self.encoding == JSON:  # a text frame; lowerCamelCase names, 64-bit values as strings
            await self.ws.send(json.dumps({kind: to_json(fields)}, separators=(",", ":")))
        else:
            body = dict(fields)
            if "resume" in body:
                body["resume"] = stream_pb2.ResumePoint(**body["resume"])
            cls = {"subscribe": stream_pb2.Subscribe, "unsubscribe": stream_pb2.Unsubscribe, "ping": stream_pb2.Ping}[
                kind
            ]
            await self.ws.send(stream_pb2.ClientMessage(**{kind: cls(**body)}).SerializeToString())

    async def until(self, predicate, timeout: float = 10.0) -> None:
        """Read and handle messages until `predicate()` holds; stop at the first failed check."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self.receive(await self.ws.recv())
                assert not self.failures, self.failures

    def receive(self, data) -> None:
        if isinstance(data, str) != (self.encoding == JSON):
            self.failures.append(f"wrong frame type {type(data).__name__} for {self.encoding}")
        if self.encoding == JSON:
            self.raw.append(json.loads(data))
            kind, m = decode_json(data)
        else:
            kind, m = decode_proto(data)
        if kind is not None:
            self.handle(kind, m)

    def resync(self, sub: Sub, why: str) -> None:
        self.failures.append(f"{sub.symbol}: {why}")
        sub.synced = False
        unsub, resub = next(self._ids), next(self._ids)
        sub.state, sub.pending = "SUBSCRIBING", resub
        self._tasks.add(asyncio.ensure_future(self._resubscribe(sub, unsub, resub)))

    async def _resubscribe(self, sub: Sub, unsub: int, resub: int) -> None:
        await self.send("unsubscribe", {"symbol": sub.symbol, "request_id": unsub})
        await self.send("subscribe", {"symbol": sub.symbol, "depth": sub.depth, "request_id": resub})

    def handle(self, kind: str, m: dict) -> None:
        if kind == "error":
            self.errors.append(m)
            return
        if kind == "pong":
            self.pongs.append(m["request_id"])
            return
        sub = self.subs.get(m["symbol"])
        if sub is None or kind == "unsubscribed":
            return
        if kind == "subscribed":
            if m["request_id"] != sub.pending:
                return
            sub.subscribed.append(m)
            sub.price_scale, sub.size_scale = m["instrument"]["price_scale"], m["instrument"]["size_scale"]
            if m["start"] == "START_RESUMED":
                if not sub.synced or m["epoch"] != sub.epoch or m["seq"] != sub.seq:
                    return self.resync(sub, f"bad resume ack {m}")
                sub.state = "LIVE"
            else:
                sub.synced, sub.state = False, "SNAPSHOT_WAIT"
        elif kind == "snapshot":
            if sub.state == "SUBSCRIBING":
                return
            sub.snapshots.append(m)
            sub.bids, sub.asks = dict(m["bids"]), dict(m["asks"])
            sub.epoch, sub.seq = m["epoch"], m["seq"]
            sub.price_scale, sub.size_scale = m["instrument"]["price_scale"], m["instrument"]["size_scale"]
            if checksum(sub.bids, sub.asks) != m["checksum"]:
                return self.resync(sub, f"snapshot checksum at seq {m['seq']}")
            sub.verified += 1
            sub.synced, sub.state = True, "LIVE"
        elif kind == "delta":
            if sub.state != "LIVE" or not sub.synced:
                return
            if m["epoch"] != sub.epoch or m["seq"] <= sub.seq or m["prev_seq"] != sub.seq:
                return self.resync(sub, f"gap: hold {sub.seq}, got {m['prev_seq']}->{m['seq']}")
            for side, levels in ((sub.bids, m["bids"]), (sub.asks, m["asks"])):
                for price, size in levels:
                    if size == 0:
                        side.pop(price, None)
                    else:
                        side[price] = size
            sub.seq = m["seq"]
            sub.deltas.append((self.connection, m["prev_seq"], m["seq"]))
            if checksum(sub.bids, sub.asks) != m["checksum"]:
                return self.resync(sub, f"delta checksum at seq {m['seq']}")
            sub.verified += 1
        elif kind == "heartbeat" and sub.state == "LIVE" and sub.synced:
            sub.heartbeats += 1  # checked heartbeats only
            if m["epoch"] != sub.epoch or m["seq"] != sub.seq:
                self.resync(sub, f"heartbeat at {m['seq']}, hold {sub.seq}")

    def abort(self) -> None:
        """Drop the TCP connection: no close frame."""
        self.ws.transport.abort()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if self.ws is not None:
            ws, self.ws = self.ws, None
            await asyncio.wait_for(ws.close(), 5)


# ------------------------------------------------------------------ test data and checks


class Feed:
    """Publishes random changes and remembers every seq the server assigned."""

    def __init__(self, pub: Publisher, rng: random.Random) -> None:
        self.pub, self.rng = pub, rng
        self.seqs: dict[str, list[int]] = {}
        self.model: dict[str, dict[str, dict[int, int]]] = {}  # what the book must be
        self.epoch = 0

    async def define(self, symbol: str, price_scale: int, size_scale: int) -> None:
        reply = await self.pub.send([instrument(symbol, price_scale, size_scale)], [])
        assert reply.WhichOneof("kind") == "ack", reply
        self.seqs[symbol] = []
        self.model[symbol] = {"bids": {}, "asks": {}}

    async def send(self, symbol: str, bids=(), asks=()) -> None:
        for name, levels in (("bids", bids), ("asks", asks)):
            side = self.model[symbol][name]
            for price, size in levels:
                if size:
                    side[price] = size
                else:
                    side.pop(price, None)
        reply = await self.pub.send([], [update(symbol, bids=bids, asks=asks)])
        assert reply.WhichOneof("kind") == "ack", reply
        position = reply.ack.positions[0]
        self.epoch = position.epoch
        assert position.seq == self.last(symbol) + reply.ack.changes  # one seq per change, none for a no-op
        if reply.ack.changes:
            self.seqs[symbol].append(position.seq)

    def last(self, symbol: str) -> int:
        return self.seqs[symbol][-1] if self.seqs[symbol] else 0

    async def random_updates(self, symbols, count: int) -> None:
        rng = self.rng
        for _ in range(count):
            symbol = rng.choice(symbols)
            known = self.model[symbol]
            sides = {"bids": [], "asks": []}
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                side = rng.choice(("bids", "asks"))
                existing = list(known[side])
                op = rng.random()
                if existing and op < 0.25:
                    price, size = rng.choice(existing), 0  # delete
                elif existing and op < 0.5:
                    price, size = rng.choice(existing), rng.randint(1, 10**12)  # size change
                elif op < 0.65:
                    price, size = rng.randint(-(10**15), 10**15), rng.randint(1, 2**63 - 1)  # far away
                elif op < 0.7:
                    price, size = rng.randint(-50, 50), 0  # most likely a no-op removal
                else:
                    price, size = rng.randint(-50, 50), rng.randint(1, 10**6)  # near the top
                sides[side].append((price, size))
            await self.send(symbol, bids=sides["bids"], asks=sides["asks"])


def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def assert_matches_http(srv, client: IndependentClient, symbol: str, model: dict | None = None) -> None:
    body = await asyncio.to_thread(http_json, f"{srv.http}/book/{urllib.parse.quote(symbol, safe='')}?depth=0")
    sub = client.subs[symbol]
    ps, ss = body["instrument"]["price_scale"], body["instrument"]["size_scale"]
    assert (ps, ss) == (sub.price_scale, sub.size_scale)
    sides = {}
    for name in ("bids", "asks"):
        levels = [(from_decimal(p, ps), from_decimal(q, ss)) for p, q in body[name]]
        # exact formatting: exactly price_scale / size_scale decimals
        assert [[to_decimal(p, ps), to_decimal(q, ss)] for p, q in levels] == body[name]
        sides[name] = levels
    assert sides["bids"] == sorted(sub.bids.items(), reverse=True)
    assert sides["asks"] == sorted(sub.asks.items())
    assert (int(body["epoch"]), body["seq"]) == (sub.epoch, sub.seq)
    assert body["checksum"] == checksum(sub.bids, sub.asks)
    top = await asyncio.to_thread(http_json, f"{srv.http}/book/{urllib.parse.quote(symbol, safe='')}?depth=1")
    assert top["checksum"] == body["checksum"], "the HTTP checksum covers the whole book whatever the depth"
    assert (top["bids"], top["asks"]) == (body["bids"][:1], body["asks"][:1])
    if model is not None:
        assert (sub.bids, sub.asks) == (model["bids"], model["asks"])


def synced_at(client: IndependentClient, feed: Feed, symbols):
    return lambda: all(
        client.subs[s].synced and client.subs[s].state == "LIVE" and client.subs[s].seq == feed.last(s) for s in symbols
    )


# ------------------------------------------------------------------ tests


def test_checksum_and_decimals_match_the_documented_vectors():
    assert checksum({6500000: 50000000, 6499925: 200000000}, {6500050: 25000000, 6500100: 150000000}) == 485215763
    assert checksum({6500000: 50000000, 6499925: 200000000, 6500025: 10000000}, {6500100: 150000000}) == 1540368275
    assert checksum({5004: 1000}, {5005: 500}) == 3084897325
    assert checksum({-150: 7}, {-100: 3}) == 4223563613
    assert checksum({}, {}) == 0
    assert checksum({9990: 3, 9980: 8}, {10010: 4, 10020: 6}) == 2999167571  # §9 example
    for units, scale, text in [
        (6500050, 2, "65000.50"),
        (7, 2, "0.07"),
        (-5, 2, "-0.05"),
        (25000000, 8, "0.25000000"),
        (500, 8, "0.00000500"),
        (150000000, 8, "1.50000000"),
        (42, 0, "42"),
    ]:
        assert to_decimal(units, scale) == text and from_decimal(text, scale) == units
    with pytest.raises(ValueError):
        from_decimal("0.001", 2)


def test_documented_json_examples_apply_and_verify():
    """The §4.2 JSON examples, fed through the hand-written JSON client."""
    client = IndependentClient("ws://unused", JSON)
    client.subs["BTC-USD"] = Sub("BTC-USD", pending=1)
    for text in [
        '{"subscribed":{"symbol":"BTC-USD","requestId":"1","start":"START_SNAPSHOT","reason":"SNAPSHOT_REASON_NEW","epoch":"1767225600000000000","seq":"42","instrument":{"symbol":"BTC-USD","priceScale":2,"sizeScale":8,"priceIncrement":"1","sizeIncrement":"1","base":"BTC","quote":"USD","venue":"simulator"},"depth":0}}',
        '{"snapshot":{"symbol":"BTC-USD","epoch":"1767225600000000000","seq":"42","instrument":{"symbol":"BTC-USD","priceScale":2,"sizeScale":8,"priceIncrement":"1","sizeIncrement":"1","base":"BTC","quote":"USD","venue":"simulator"},"bids":[{"price":"6500000","size":"50000000"},{"price":"6499925","size":"200000000"}],"asks":[{"price":"6500050","size":"25000000"},{"price":"6500100","size":"150000000"}],"checksum":485215763,"timeNs":"1767225601000000000","depth":0}}',
        '{"delta":{"symbol":"BTC-USD","epoch":"1767225600000000000","seq":"43","prevSeq":"42","bids":[{"price":"6500025","size":"10000000"}],"asks":[{"price":"6500050","size":"0"}],"checksum":1540368275,"eventTimeNs":"1767225601100000000","publishTimeNs":"1767225601100250000"}}',
        '{"heartbeat":{"symbol":"BTC-USD","epoch":"1767225600000000000","seq":"43","timeNs":"1767225603000000000"}}',
        '{"somethingNew":{"x":1}}',
    ]:
        client.receive(text)
    sub = client.subs["BTC-USD"]
    assert client.failures == []
    assert (sub.epoch, sub.seq, sub.verified, sub.heartbeats) == (1767225600000000000, 43, 2, 1)
    assert sub.asks == {6500100: 150000000}


async def test_protobuf_stream_checksums_http_and_resume_after_abort():
    symbols = ["CONF-A", "CONF-B"]
    async with serve_in_process(test_settings()) as srv, Publisher.connect(srv.feed_url) as pub:
        feed = Feed(pub, random.Random(1729))
        await feed.define("CONF-A", 2, 8)
        await feed.define("CONF-B", 0, 3)
        await feed.random_updates(symbols, 6)  # books exist before the snapshot
        async with IndependentClient(srv.url, PROTO) as client:
            await client.connect()
            for s in symbols:
                await client.subscribe(s)
            await client.until(synced_at(client, feed, symbols))
            for s in symbols:
                ack = client.subs[s].subscribed[0]
                assert (ack["start"], ack["reason"], ack["seq"]) == (
                    "START_SNAPSHOT",
                    "SNAPSHOT_REASON_NEW",
                    feed.last(s),
                )
                assert client.subs[s].snapshots[0]["seq"] == feed.last(s)
            first = {s: feed.last(s) for s in symbols}

            await feed.random_updates(symbols, 50)
            await client.until(synced_at(client, feed, symbols))
            assert client.failures == [] and client.errors == []
            for s in symbols:
                sub = client.subs[s]
                assert [seq for _, _, seq in sub.deltas] == [q for q in feed.seqs[s] if q > first[s]]
                assert sub.verified == 1 + len(sub.deltas)
                assert sub.epoch == feed.epoch
                await assert_matches_http(srv, client, s, feed.model[s])

            held = {s: (client.subs[s].epoch, client.subs[s].seq) for s in symbols}
            client.abort()
            await feed.random_updates(symbols, 12)
            await feed.send("CONF-A", bids=[(-(10**15) - 7, 3)])  # make sure both symbols moved
            await feed.send("CONF-B", asks=[(10**15 + 7, 5)])
            await client.connect()
            await client.until(synced_at(client, feed, symbols))
            for s in symbols:
                sub = client.subs[s]
                ack = sub.subscribed[-1]
                assert (ack["start"], ack["epoch"], ack["seq"]) == ("START_RESUMED", *held[s])
                assert len(sub.snapshots) == 1, "resumed: no snapshot"
                resumed = [(prev, seq) for conn, prev, seq in sub.deltas if conn == 2]
                missed = [q for q in feed.seqs[s] if q > held[s][1]]
                assert [seq for _, seq in resumed] == missed
                assert [prev for prev, _ in resumed] == [held[s][1], *missed[:-1]]
                all_seqs = [seq for _, _, seq in sub.deltas]
                assert all_seqs == sorted(set(all_seqs)), "no duplicate"
                assert sub.verified == 1 + len(sub.deltas)
            await feed.random_updates(symbols, 5)  # live again after the replay
            await client.until(synced_at(client, feed, symbols))
            assert client.failures == [] and client.errors == []
            for s in symbols:
                await assert_matches_http(srv, client, s, feed.model[s])


async def test_json_stream_heartbeat_ping_and_resume():
    symbols = ["JSON-1"]
    async with serve_in_process(test_settings(symbol_heartbeat=0.2)) as srv, Publisher.connect(srv.feed_url) as pub:
        feed = Feed(pub, random.Random(99))
        await feed.define("JSON-1", 4, 2)
        await feed.random_updates(symbols, 4)
        async with IndependentClient(srv.url, JSON) as client:
            await client.connect()
            await client.subscribe("JSON-1")
            await feed.random_updates(symbols, 15)
            await client.until(synced_at(client, feed, symbols))
            sub = client.subs["JSON-1"]
            await client.until(lambda: sub.heartbeats > 0)  # quiet stream -> Heartbeat at our seq
            rid = await client.ping()
            await client.until(lambda: rid in client.pongs)
            delta = next(m["delta"] for m in client.raw if "delta" in m)
            assert isinstance(delta["seq"], str) and isinstance(delta["prevSeq"], str)
            assert isinstance(delta["checksum"], int)
            assert all({"reason", "depth"} <= set(m["subscribed"]) for m in client.raw if "subscribed" in m)
            await assert_matches_http(srv, client, "JSON-1", feed.model["JSON-1"])

            held = sub.seq
            client.abort()
            await feed.random_updates(symbols, 5)
            await feed.send("JSON-1", bids=[(123456789, 1)])
            await client.connect()
            await client.until(synced_at(client, feed, symbols))
            assert sub.subscribed[-1]["start"] == "START_RESUMED" and sub.subscribed[-1]["seq"] == held
            resumed = [(prev, seq) for conn, prev, seq in sub.deltas if conn == 2]
            missed = [q for q in feed.seqs["JSON-1"] if q > held]
            assert resumed == list(itertools.pairwise([held, *missed]))
            assert client.failures == [] and client.errors == []
            assert sub.verified == 1 + len(sub.deltas)
            await assert_matches_http(srv, client, "JSON-1", feed.model["JSON-1"])


@pytest.mark.parametrize("encoding", [PROTO, JSON])
async def test_resume_after_history_is_exhausted_gets_a_snapshot(encoding):
    settings = test_settings(history=HistoryLimits(max_entries=3, max_bytes=1 << 20))
    async with serve_in_process(settings) as srv, Publisher.connect(srv.feed_url) as pub:
        feed = Feed(pub, random.Random(7))
        await feed.define("HX", 2, 2)
        async with IndependentClient(srv.url, encoding) as client:
            await client.connect()
            await client.subscribe("HX")
            for i in range(3):
                await feed.send("HX", bids=[(100 - i, 10 + i)])
            await client.until(synced_at(client, feed, ["HX"]))
            sub = client.subs["HX"]
            for missed, expected in [(3, "START_RESUMED"), (4, "START_SNAPSHOT")]:
                held = sub.seq
                client.abort()
                for i in range(missed):
                    await feed.send("HX", asks=[(200 + held + i, 1 + i)])
                await client.connect()
                await client.until(synced_at(client, feed, ["HX"]))
                ack = sub.subscribed[-1]
                assert ack["start"] == expected, (missed, ack)
            assert ack["reason"] == "SNAPSHOT_REASON_HISTORY_EXHAUSTED"
            assert ack["seq"] == feed.last("HX") == sub.snapshots[-1]["seq"]
            assert [seq for conn, _, seq in sub.deltas if conn == 3] == []
            assert client.failures == [] and client.errors == []
            assert sub.verified == len(sub.snapshots) + len(sub.deltas)
            await assert_matches_http(srv, client, "HX", feed.model["HX"])


async def test_resume_from_a_stale_or_future_point_gets_a_snapshot():
    async with serve_in_process(test_settings()) as srv, Publisher.connect(srv.feed_url) as pub:
        feed = Feed(pub, random.Random(3))
        await feed.define("RX", 0, 0)
        await feed.send("RX", bids=[(5, 5), (0, 3)], asks=[(-1, 10)])  # price 0 contributes "0" (crossed is fine)
        async with IndependentClient(srv.url, PROTO) as client:
            await client.connect()
            await client.subscribe("RX", resume=(feed.epoch ^ 1, 1))
            await client.until(synced_at(client, feed, ["RX"]))
            assert client.subs["RX"].subscribed[-1]["reason"] == "SNAPSHOT_REASON_STALE_EPOCH"
            client.abort()
            client.subs["RX"].seq = 99  # claim a seq this epoch never produced
            await client.connect()
            await client.until(synced_at(client, feed, ["RX"]))
            assert client.subs["RX"].subscribed[-1]["reason"] == "SNAPSHOT_REASON_AHEAD"
            assert client.failures == [] and client.errors == []
            assert client.subs["RX"].snapshots[-1]["checksum"] == zlib.crc32(b"-1105503")
            await assert_matches_http(srv, client, "RX", feed.model["RX"])


async def test_http_book_of_a_symbol_with_reserved_url_characters():
    """§1.1: percent-encode the symbol in the /book path; §12.2 allows any printable symbol."""
    async with serve_in_process(test_settings()) as srv, Publisher.connect(srv.feed_url) as pub:
        feed = Feed(pub, random.Random(5))
        await feed.define("EUR/USD", 4, 0)  # "printable characters" are allowed in a symbol
        await feed.send("EUR/USD", bids=[(10850, 1)], asks=[(10851, 2)])
        async with IndependentClient(srv.url, PROTO) as client:
            await client.connect()
            await client.subscribe("EUR/USD")
            await client.until(synced_at(client, feed, ["EUR/USD"]))
            assert client.failures == []
            await assert_matches_http(srv, client, "EUR/USD", feed.model["EUR/USD"])
