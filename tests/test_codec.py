"""Wire codec (protobuf and canonical JSON) and server frame headers."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.errors import (
    InexactValue,
    InstrumentConflict,
    InvalidInstrument,
    InvalidUpdate,
    UnknownSymbol,
)
from orderbook.core.events import BookUpdate, Delta, FeedBatch, Position, Snapshot
from orderbook.core.instrument import Instrument
from orderbook.core.resume import ResumePoint, SnapshotReason
from orderbook.v1 import stream_pb2
from orderbook.wire import codec
from orderbook.wire.codec import (
    Encoding,
    ErrorCode,
    MalformedMessage,
    PingRequest,
    SubscribeRequest,
    UnknownMessage,
    UnsubscribeRequest,
)
from orderbook.wire.framing import OP_BINARY, OP_TEXT, frame

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(max_examples=120, deadline=None, report_multiple_bugs=False)

u64 = st.one_of(st.just(0), st.integers(0, 2**64 - 1), st.sampled_from([2**53 + 1, 2**63, 2**64 - 1]))
i64 = st.one_of(
    st.just(0),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), 2**63 - 1, -1, -(2**53) - 1]),
)
u32 = st.one_of(st.just(0), st.integers(0, 2**32 - 1))
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
levels = st.lists(st.tuples(i64, u64), max_size=5).map(tuple)
instruments = st.builds(
    Instrument,
    symbol=text,
    price_scale=u32,
    size_scale=u32,
    price_increment=st.integers(1, 2**63 - 1),
    size_increment=st.integers(1, 2**63 - 1),
    base=text,
    quote=text,
    venue=text,
)
deltas = st.builds(
    Delta,
    symbol=text,
    epoch=u64,
    seq=u64,
    prev_seq=u64,
    bids=levels,
    asks=levels,
    checksum=u32,
    event_time_ns=i64,
    publish_time_ns=i64,
)
snapshots = st.builds(
    Snapshot,
    symbol=text,
    epoch=u64,
    seq=u64,
    instrument=instruments,
    bids=levels,
    asks=levels,
    checksum=u32,
    depth=u32,
    time_ns=i64,
)
resume_points = st.one_of(st.none(), st.builds(ResumePoint, epoch=u64, seq=u64))


def both_ways(msg):
    """The message decoded back from each encoding."""
    binary = codec.encode(msg, Encoding.PROTOBUF)
    js = codec.encode(msg, Encoding.JSON)
    assert isinstance(binary, bytes) and isinstance(js, str)
    return codec.parse_server_message(binary), codec.parse_server_message(js)


# ----------------------------------------------------------------------------- server messages


@SETTINGS
@given(deltas)
def test_delta_round_trip(d):
    for back in both_ways(codec.delta_message(d)):
        assert back.WhichOneof("kind") == "delta"
        assert codec.delta_from_pb(back.delta) == d


@SETTINGS
@given(snapshots)
def test_snapshot_round_trip(s):
    for back in both_ways(codec.snapshot_message(s)):
        assert back.WhichOneof("kind") == "snapshot"
        assert codec.snapshot_from_pb(back.snapshot) == s


@SETTINGS
@given(text, u64, st.booleans(), st.one_of(st.none(), st.sampled_from(SnapshotReason)), u64, u64, u32, instruments)
def test_subscribed_round_trip(symbol, request_id, resumed, reason, epoch, seq, depth, inst):
    msg = codec.subscribed_message(symbol, request_id, resumed, reason, epoch, seq, depth, inst)
    for back in both_ways(msg):
        sub = back.subscribed
        assert back.WhichOneof("kind") == "subscribed"
        assert (sub.symbol, sub.request_id, sub.epoch, sub.seq, sub.depth) == (symbol, request_id, epoch, seq, depth)
        assert sub.start == (stream_pb2.START_RESUMED if resumed else stream_pb2.START_SNAPSHOT)
        want_reason = 0 if reason is None else stream_pb2.SnapshotReason.Value("SNAPSHOT_REASON_" + reason.name)
        assert sub.reason == want_reason
        assert codec.instrument_from_pb(sub.instrument) == inst


@SETTINGS
@given(text, u64, i64, u32, text)
def test_small_server_messages_round_trip(symbol, n, t, code, message):
    cases = [
        (codec.unsubscribed_message(symbol, n), "unsubscribed", lambda m: (m.symbol, m.request_id) == (symbol, n)),
        (
            codec.heartbeat_message(symbol, n, n // 3, t),
            "heartbeat",
            lambda m: (m.symbol, m.epoch, m.seq, m.time_ns) == (symbol, n, n // 3, t),
        ),
        (
            codec.error_message(code % 11, message, symbol, n),
            "error",
            lambda m: (m.code, m.message, m.symbol, m.request_id) == (code % 11, message, symbol, n),
        ),
        (codec.pong_message(n, t), "pong", lambda m: (m.request_id, m.time_ns) == (n, t)),
    ]
    for msg, kind, check in cases:
        for back in both_ways(msg):
            assert back.WhichOneof("kind") == kind
            assert check(getattr(back, kind))
            assert back == msg


def test_json_uses_canonical_names():
    d = Delta(
        "BTC-USD",
        epoch=7,
        seq=2**64 - 1,
        prev_seq=41,
        bids=((-5, 0),),
        asks=((101, 3),),
        checksum=123,
        event_time_ns=-9,
        publish_time_ns=0,
    )
    obj = json.loads(codec.to_json(codec.delta_message(d)))
    assert obj == {
        "delta": {
            "symbol": "BTC-USD",
            "epoch": "7",
            "seq": str(2**64 - 1),
            "prevSeq": "41",
            # 64-bit numbers are strings; zero values are written out (size 0 = removal).
            "bids": [{"price": "-5", "size": "0"}],
            "asks": [{"price": "101", "size": "3"}],
            "checksum": 123,
            "eventTimeNs": "-9",
            "publishTimeNs": "0",
        }
    }
    inst = Instrument("E", 2, 8, base="B", quote="Q", venue="V")
    snap = json.loads(codec.to_json(codec.snapshot_message(Snapshot("E", 1, 2, inst, (), (), 0, depth=5, time_ns=6))))[
        "snapshot"
    ]
    assert snap["timeNs"] == "6" and snap["depth"] == 5 and snap["bids"] == []
    assert snap["instrument"] == {
        "symbol": "E",
        "priceScale": 2,
        "sizeScale": 8,
        "priceIncrement": "1",
        "sizeIncrement": "1",
        "base": "B",
        "quote": "Q",
        "venue": "V",
    }
    sub = json.loads(codec.to_json(codec.subscribed_message("E", 9, False, SnapshotReason.AHEAD, 1, 2, 0, inst)))[
        "subscribed"
    ]
    assert sub["requestId"] == "9" and sub["start"] == "START_SNAPSHOT"
    assert sub["reason"] == "SNAPSHOT_REASON_AHEAD"
    err = json.loads(codec.to_json(codec.error_message(ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL, "x")))
    assert err["error"]["code"] == "ERROR_CODE_UNKNOWN_SYMBOL" and err["error"]["requestId"] == "0"
    pong = json.loads(codec.to_json(codec.pong_message(1, 2)))
    assert pong == {"pong": {"requestId": "1", "timeNs": "2"}}
    # Compact output.
    assert " " not in codec.to_json(codec.pong_message(1, 2))
    cm = json.loads(codec.to_json(codec.subscribe_message("E", 3, ResumePoint(4, 5), 6)))
    assert cm == {
        "subscribe": {
            "symbol": "E",
            "depth": 3,
            "resume": {"epoch": "4", "seq": "5"},
            "requestId": "6",
            "intervalMs": 0,
        }
    }


def test_instrument_increment_zero_means_one():
    msg = codec.snapshot_message(Snapshot("E", 1, 2, Instrument("E", 2, 8, 0, 0), (), (), 0))
    back = codec.parse_server_message(msg.SerializeToString())
    inst = codec.snapshot_from_pb(back.snapshot).instrument
    assert (inst.price_increment, inst.size_increment) == (1, 1)


# ----------------------------------------------------------------------------- client messages


@SETTINGS
@given(text, u32, resume_points, u64)
def test_subscribe_round_trip(symbol, depth, resume, request_id):
    msg = codec.subscribe_message(symbol, depth, resume, request_id)
    want = SubscribeRequest(symbol, depth, resume, request_id)
    for enc in Encoding:
        # ResumePoint(0, 0) must survive: it is not the same as no resume point.
        assert codec.decode_client(codec.encode(msg, enc), enc) == want


@SETTINGS
@given(text, u64)
def test_unsubscribe_and_ping_round_trip(symbol, request_id):
    for enc in Encoding:
        assert codec.decode_client(
            codec.encode(codec.unsubscribe_message(symbol, request_id), enc), enc
        ) == UnsubscribeRequest(symbol, request_id)
        assert codec.decode_client(codec.encode(codec.ping_message(request_id), enc), enc) == PingRequest(request_id)


def test_binary_accepts_bytes_like():
    data = codec.ping_message(5).SerializeToString()
    for buf in (data, bytearray(data), memoryview(data)):
        assert codec.decode_client(buf, Encoding.PROTOBUF) == PingRequest(5)


def test_json_ignores_unknown_fields():
    msg = '{"ping": {"requestId": "3", "future": 1}, "alsoFuture": [1]}'
    assert codec.decode_client(msg, Encoding.JSON) == PingRequest(3)
    # Original field names are accepted too, as the JSON mapping says.
    assert codec.decode_client('{"ping": {"request_id": 4}}', Encoding.JSON) == PingRequest(4)


MALFORMED_BINARY = [
    b"\xff",  # truncated tag
    b"\x0a\x05ab",  # length beyond the end
    b"\x1a\x02\x08",  # ping with a truncated varint
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint longer than 10 bytes
    b"\x0a\x03\x0a\x01\xff",  # subscribe.symbol is not UTF-8
    b"\x0f",  # invalid wire type 7
]
MALFORMED_JSON = [
    "",
    "not json",
    "5",
    "null",
    "true",
    "[1]",
    '{"subscribe": 5}',
    '{"subscribe": {"depth": "abc"}}',
    '{"subscribe": {"depth": 4294967296}}',
    '{"ping": {"requestId": "-1"}}',
    '{"ping": {"requestId": "18446744073709551616"}}',
    '{"ping": {}, "subscribe": {}}',  # two kinds of one oneof
    "[" * 100_000 + "]" * 100_000,
]


@pytest.mark.parametrize("data", MALFORMED_BINARY)
def test_malformed_binary(data):
    with pytest.raises(MalformedMessage) as exc:
        codec.decode_client(data, Encoding.PROTOBUF)
    assert exc.value.code == ErrorCode.ERROR_CODE_MALFORMED_MESSAGE
    assert codec.error_code_for(exc.value) == ErrorCode.ERROR_CODE_MALFORMED_MESSAGE


@pytest.mark.parametrize("data", MALFORMED_JSON, ids=lambda s: s[:30])
def test_malformed_json(data):
    with pytest.raises(MalformedMessage) as exc:
        codec.decode_client(data, Encoding.JSON)
    assert exc.value.code == ErrorCode.ERROR_CODE_MALFORMED_MESSAGE


# The canonical JSON of a message is a JSON object. protobuf's json_format
# iterates whatever it is given, so an array or a string silently becomes an
# empty message unless the codec checks the shape itself.
NOT_OBJECTS = [
    "[]",
    '"x"',
    '{"ping": "x"}',
    '{"subscribe": []}',
    '{"subscribe": {"symbol": "A", "resume": "seq"}}',
    '{"subscribe": {"symbol": "A", "resume": []}}',
]


@pytest.mark.parametrize("data", NOT_OBJECTS)
def test_json_message_that_is_not_an_object_is_malformed(data):
    try:
        got = codec.decode_client(data, Encoding.JSON)
    except MalformedMessage as exc:
        assert exc.code == ErrorCode.ERROR_CODE_MALFORMED_MESSAGE
        return
    except UnknownMessage as exc:
        got = exc
    pytest.fail(f"{data!r} is not a ClientMessage in canonical JSON; expected MalformedMessage, got {got!r}")


def test_wrong_frame_type():
    with pytest.raises(MalformedMessage):
        codec.decode_client(b'{"ping": {}}', Encoding.JSON)
    with pytest.raises(MalformedMessage):
        codec.decode_client(codec.ping_message(1).SerializeToString().decode(), Encoding.PROTOBUF)


@pytest.mark.parametrize(
    "data, enc",
    [
        (b"", Encoding.PROTOBUF),
        (b"\xa0\x06\x01", Encoding.PROTOBUF),  # an unknown kind (field 100)
        ("{}", Encoding.JSON),
        ('{"future": {"x": 1}}', Encoding.JSON),
    ],
)
def test_empty_or_unknown_envelope(data, enc):
    msg = codec.parse_client_message(data, enc)  # decodes fine ...
    with pytest.raises(UnknownMessage) as exc:
        codec.client_request(msg)  # ... but carries no known kind
    assert exc.value.code == ErrorCode.ERROR_CODE_UNKNOWN_MESSAGE
    assert codec.error_code_for(exc.value) == ErrorCode.ERROR_CODE_UNKNOWN_MESSAGE


@settings(max_examples=300, deadline=None, report_multiple_bugs=False)
@given(st.binary(max_size=40))
def test_random_bytes_never_escape_the_error_types(data):
    with contextlib.suppress(MalformedMessage, UnknownMessage):
        codec.decode_client(data, Encoding.PROTOBUF)
    with contextlib.suppress(MalformedMessage, UnknownMessage):
        codec.decode_feed(data)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), text, st.floats(allow_nan=False)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "subscribe",
                    "ping",
                    "unsubscribe",
                    "symbol",
                    "depth",
                    "resume",
                    "epoch",
                    "seq",
                    "requestId",
                    "request_id",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, report_multiple_bugs=False)
@given(json_values)
def test_random_json_never_escapes_the_error_types(value):
    with contextlib.suppress(MalformedMessage, UnknownMessage):
        codec.decode_client(json.dumps(value), Encoding.JSON)


def test_server_message_parse_errors():
    for data in (b"\xff", "not json", '{"delta": 1}'):
        with pytest.raises(MalformedMessage):
            codec.parse_server_message(data)


def test_error_code_mapping():
    assert codec.error_code_for(UnknownSymbol("X")) == ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL
    assert codec.error_code_for(InstrumentConflict("x")) == ErrorCode.ERROR_CODE_INSTRUMENT_CONFLICT
    assert codec.error_code_for(InvalidUpdate("X", "x")) == ErrorCode.ERROR_CODE_INVALID_UPDATE
    assert codec.error_code_for(InvalidInstrument("x")) == ErrorCode.ERROR_CODE_INVALID_UPDATE
    assert codec.error_code_for(InexactValue("x")) == ErrorCode.ERROR_CODE_INVALID_ARGUMENT


# ----------------------------------------------------------------------------- feed


updates = st.builds(BookUpdate, symbol=text, bids=levels, asks=levels, replace=st.booleans(), event_time_ns=i64)
batches = st.builds(
    FeedBatch,
    batch_id=u64,
    instruments=st.lists(instruments, max_size=3).map(tuple),
    updates=st.lists(updates, max_size=4).map(tuple),
)


@SETTINGS
@given(batches)
def test_feed_batch_round_trip(batch):
    data = codec.feed_message(batch).SerializeToString()
    assert codec.decode_feed(data) == batch
    assert codec.decode_feed(bytearray(data)) == batch


@SETTINGS
@given(u64, u32, st.lists(st.builds(Position, text, u64, u64), max_size=4), text)
def test_feed_replies_round_trip(batch_id, changes, positions, message):
    ack = codec.parse_feed_reply(codec.feed_ack(batch_id, changes, positions))
    assert ack.WhichOneof("kind") == "ack"
    assert (ack.ack.batch_id, ack.ack.changes) == (batch_id, changes)
    assert [Position(p.symbol, p.epoch, p.seq) for p in ack.ack.positions] == positions
    err = codec.parse_feed_reply(codec.feed_error(ErrorCode.ERROR_CODE_INVALID_UPDATE, message, "S", batch_id))
    assert err.WhichOneof("kind") == "error"
    assert (err.error.code, err.error.message, err.error.symbol, err.error.request_id) == (
        ErrorCode.ERROR_CODE_INVALID_UPDATE,
        message,
        "S",
        batch_id,
    )


def test_feed_decode_errors():
    for data in ("text", '{"batch": {}}'):
        with pytest.raises(MalformedMessage):
            codec.decode_feed(data)
    for data in MALFORMED_BINARY[:4]:
        with pytest.raises(MalformedMessage) as exc:
            codec.decode_feed(data)
        assert exc.value.code == ErrorCode.ERROR_CODE_MALFORMED_MESSAGE
    with pytest.raises(UnknownMessage) as exc:
        codec.decode_feed(b"")
    assert exc.value.code == ErrorCode.ERROR_CODE_UNKNOWN_MESSAGE
    # An empty batch is a batch.
    assert codec.decode_feed(b"\x0a\x00") == FeedBatch()


# ----------------------------------------------------------------------------- framing


def parse_frame(data: bytes) -> tuple[bool, int, bytes]:
    """RFC 6455 5.2, written from the RFC: (fin, opcode, payload); checks the
    header is well formed, unmasked and uses the shortest length encoding."""
    b0, b1 = data[0], data[1]
    fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
    masked, length = bool(b1 & 0x80), b1 & 0x7F
    assert rsv == 0 and not masked
    pos = 2
    if length == 126:
        (length,) = struct.unpack_from(">H", data, pos)
        pos += 2
        assert length >= 126
    elif length == 127:
        (length,) = struct.unpack_from(">Q", data, pos)
        pos += 8
        assert 65536 <= length < 2**63
    payload = data[pos:]
    assert len(payload) == length
    return fin, opcode, payload


@pytest.mark.parametrize("n, header", [(0, 2), (1, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)])
@pytest.mark.parametrize("opcode", [OP_BINARY, OP_TEXT])
def test_frame(n, header, opcode):
    payload = bytes(i % 251 for i in range(n))
    data = frame(payload, opcode) if opcode != OP_BINARY else frame(payload)
    assert len(data) == header + n
    fin, op, body = parse_frame(data)
    assert fin and op == opcode and body == payload


def test_frame_known_bytes():
    assert frame(b"hi") == b"\x82\x02hi"
    assert frame(b"", OP_TEXT) == b"\x81\x00"
    assert frame(b"x" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert frame(b"x" * 65536)[:10] == b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"
