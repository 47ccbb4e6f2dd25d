"""Conversion between core values and the orderbook.v1 protobuf messages.

Two encodings of the same envelopes: binary protobuf (default) and protobuf's
canonical JSON mapping. Decoding failures raise `MalformedMessage` or
`UnknownMessage`, which carry the protocol error code to report.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, cast

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from orderbook.core.book import Level
from orderbook.core.errors import (
    InstrumentConflict,
    InvalidInput,
    InvalidInstrument,
    InvalidUpdate,
    SourceConflict,
    UnknownSymbol,
)
from orderbook.core.events import BookUpdate, Delta, FeedBatch, Position, Snapshot
from orderbook.core.instrument import Instrument
from orderbook.core.resume import ResumePoint, SnapshotReason
from orderbook.v1 import book_pb2, feed_pb2, replication_pb2, stream_pb2

SUBPROTOCOL_PROTO = "orderbook.v1.proto"
SUBPROTOCOL_JSON = "orderbook.v1.json"

ErrorCode = stream_pb2.ErrorCode
ServerMessage = stream_pb2.ServerMessage
ClientMessage = stream_pb2.ClientMessage
FeedAck = feed_pb2.FeedAck


class Encoding(enum.Enum):
    PROTOBUF = SUBPROTOCOL_PROTO
    JSON = SUBPROTOCOL_JSON


class WireError(InvalidInput):
    code: int = ErrorCode.ERROR_CODE_MALFORMED_MESSAGE


class MalformedMessage(WireError):
    code = ErrorCode.ERROR_CODE_MALFORMED_MESSAGE


class UnknownMessage(WireError):
    code = ErrorCode.ERROR_CODE_UNKNOWN_MESSAGE


def error_code(code: int) -> stream_pb2.ErrorCode:
    """`code` typed as an `ErrorCode` field value. The enum is open (proto3): a
    field takes any int, and the stubs' `ErrorCode` is only a name for int."""
    return cast(stream_pb2.ErrorCode, code)


def error_code_for(exc: InvalidInput) -> int:
    """The protocol error code that reports `exc` to a peer."""
    if isinstance(exc, WireError):
        return exc.code
    if isinstance(exc, UnknownSymbol):
        return ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL
    if isinstance(exc, InstrumentConflict):
        return ErrorCode.ERROR_CODE_INSTRUMENT_CONFLICT
    if isinstance(exc, SourceConflict):
        return ErrorCode.ERROR_CODE_SOURCE_CONFLICT
    if isinstance(exc, (InvalidUpdate, InvalidInstrument)):
        return ErrorCode.ERROR_CODE_INVALID_UPDATE
    return ErrorCode.ERROR_CODE_INVALID_ARGUMENT


# ----------------------------------------------------------------------------- values


def instrument_to_pb(inst: Instrument, out: book_pb2.Instrument) -> None:
    out.symbol = inst.symbol
    out.price_scale = inst.price_scale
    out.size_scale = inst.size_scale
    out.price_increment = inst.price_increment
    out.size_increment = inst.size_increment
    out.base = inst.base
    out.quote = inst.quote
    out.venue = inst.venue


def instrument_from_pb(pb: book_pb2.Instrument) -> Instrument:
    return Instrument(
        symbol=pb.symbol,
        price_scale=pb.price_scale,
        size_scale=pb.size_scale,
        price_increment=pb.price_increment or 1,
        size_increment=pb.size_increment or 1,
        base=pb.base,
        quote=pb.quote,
        venue=pb.venue,
    )


class _LevelField(Protocol):
    """A repeated `Level` field, as far as encoding uses it."""

    def add(self, *, price: int, size: int) -> book_pb2.Level: ...


def _levels_to_pb(levels: Iterable[Level], field: _LevelField) -> None:
    add = field.add
    for price, size in levels:
        add(price=price, size=size)


def levels_from_pb(field: Iterable[book_pb2.Level]) -> tuple[Level, ...]:
    return tuple((lv.price, lv.size) for lv in field)


# ----------------------------------------------------------------------------- server -> client


def delta_message(d: Delta) -> stream_pb2.ServerMessage:
    msg = ServerMessage()
    pd = msg.delta
    pd.symbol = d.symbol
    pd.epoch = d.epoch
    pd.seq = d.seq
    pd.prev_seq = d.prev_seq
    _levels_to_pb(d.bids, pd.bids)
    _levels_to_pb(d.asks, pd.asks)
    pd.checksum = d.checksum
    pd.event_time_ns = d.event_time_ns
    pd.publish_time_ns = d.publish_time_ns
    return msg


def snapshot_message(s: Snapshot) -> stream_pb2.ServerMessage:
    msg = ServerMessage()
    ps = msg.snapshot
    ps.symbol = s.symbol
    ps.epoch = s.epoch
    ps.seq = s.seq
    instrument_to_pb(s.instrument, ps.instrument)
    _levels_to_pb(s.bids, ps.bids)
    _levels_to_pb(s.asks, ps.asks)
    ps.checksum = s.checksum
    ps.depth = s.depth
    ps.time_ns = s.time_ns
    return msg


_REASONS = {
    SnapshotReason.NEW: stream_pb2.SNAPSHOT_REASON_NEW,
    SnapshotReason.STALE_EPOCH: stream_pb2.SNAPSHOT_REASON_STALE_EPOCH,
    SnapshotReason.HISTORY_EXHAUSTED: stream_pb2.SNAPSHOT_REASON_HISTORY_EXHAUSTED,
    SnapshotReason.AHEAD: stream_pb2.SNAPSHOT_REASON_AHEAD,
    SnapshotReason.UNSUPPORTED: stream_pb2.SNAPSHOT_REASON_UNSUPPORTED,
}


def subscribed_message(
    symbol: str,
    request_id: int,
    resumed: bool,
    reason: SnapshotReason | None,
    epoch: int,
    seq: int,
    depth: int,
    instrument: Instrument,
    interval_ms: int = 0,
) -> stream_pb2.ServerMessage:
    msg = ServerMessage()
    sub = msg.subscribed
    sub.symbol = symbol
    sub.request_id = request_id
    sub.start = stream_pb2.START_RESUMED if resumed else stream_pb2.START_SNAPSHOT
    if reason is not None:
        sub.reason = _REASONS[reason]
    sub.epoch = epoch
    sub.seq = seq
    sub.depth = depth
    sub.interval_ms = interval_ms
    instrument_to_pb(instrument, sub.instrument)
    return msg


def unsubscribed_message(symbol: str, request_id: int) -> stream_pb2.ServerMessage:
    msg = ServerMessage()
    msg.unsubscribed.symbol = symbol
    msg.unsubscribed.request_id = request_id
    return msg


def heartbeat_message(symbol: str, epoch: int, seq: int, time_ns: int, stale: bool = False) -> stream_pb2.ServerMessage:
    msg = ServerMessage()
    hb = msg.heartbeat
    hb.symbol = symbol
    hb.epoch = epoch
    hb.seq = seq
    hb.time_ns = time_ns
    hb.stale = stale
    return msg


def error_message(code: int, text: str, symbol: str = "", request_id: int = 0) -> stream_pb2.ServerMessage:
    msg = ServerMessage()
    err = msg.error
    err.code = error_code(code)
    err.message = text
    err.symbol = symbol
    err.request_id = request_id
    return msg


def pong_message(request_id: int, time_ns: int) -> stream_pb2.ServerMessage:
    msg = ServerMessage()
    msg.pong.request_id = request_id
    msg.pong.time_ns = time_ns
    return msg


def to_json(msg: Message) -> str:
    """Canonical protobuf JSON, compact, with zero values written out (a level
    of size 0 says `"size":"0"` rather than omitting the field)."""
    return json.dumps(
        json_format.MessageToDict(msg, always_print_fields_with_no_presence=True),
        separators=(",", ":"),
    )


def encode(msg: Message, encoding: Encoding) -> bytes | str:
    if encoding is Encoding.JSON:
        return to_json(msg)
    data: bytes = msg.SerializeToString()
    return data


# ----------------------------------------------------------------------------- client -> server


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    symbol: str
    depth: int = 0
    resume: ResumePoint | None = None
    request_id: int = 0
    interval_ms: int = 0


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    symbol: str
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class PingRequest:
    request_id: int = 0


ClientRequest = SubscribeRequest | UnsubscribeRequest | PingRequest


def parse_client_message(data: bytes | str, encoding: Encoding) -> stream_pb2.ClientMessage:
    msg = ClientMessage()
    try:
        if encoding is Encoding.JSON:
            if not isinstance(data, str):
                raise MalformedMessage("expected a JSON text message")
            obj = json.loads(data)
            _check_json_shape(obj, msg.DESCRIPTOR)
            # Unknown fields are ignored so newer clients work with older servers.
            json_format.ParseDict(obj, msg, ignore_unknown_fields=True)
        else:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise MalformedMessage("expected a binary protobuf message")
            msg.ParseFromString(bytes(data))
    except MalformedMessage:
        raise
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedMessage(f"cannot decode message: {exc}".strip()[:200]) from None
    return msg


class _FieldShape(Protocol):
    """What `_check_json_shape` reads of a field descriptor."""

    @property
    def message_type(self) -> _MessageShape | None: ...

    @property
    def is_repeated(self) -> bool: ...


class _MessageShape(Protocol):
    """What `_check_json_shape` reads of a message descriptor (protobuf has two
    implementations of it, the pure-Python one and upb's)."""

    @property
    def name(self) -> str: ...

    @property
    def fields_by_camelcase_name(self) -> Mapping[str, _FieldShape]: ...

    @property
    def fields_by_name(self) -> Mapping[str, _FieldShape]: ...


def _check_json_shape(obj: object, descriptor: _MessageShape) -> None:
    """Messages must be JSON objects at every level. protobuf's parser, with
    unknown fields ignored, would turn `"ping": "x"` or `"resume": []` into an
    empty message instead of reporting it."""
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{descriptor.name} must be a JSON object")
    fields = descriptor.fields_by_camelcase_name
    by_name = descriptor.fields_by_name
    for key, value in obj.items():
        field = fields.get(key) or by_name.get(key)
        if field is None or field.message_type is None or value is None:
            continue  # unknown fields are ignored; scalars are checked by protobuf
        if field.is_repeated:
            if not isinstance(value, list):
                raise MalformedMessage(f"{key} must be a JSON array")
            for item in value:
                _check_json_shape(item, field.message_type)
        else:
            _check_json_shape(value, field.message_type)


def client_request(msg: stream_pb2.ClientMessage) -> ClientRequest:
    kind = msg.WhichOneof("kind")
    if kind == "subscribe":
        s = msg.subscribe
        resume = ResumePoint(s.resume.epoch, s.resume.seq) if s.HasField("resume") else None
        return SubscribeRequest(s.symbol, s.depth, resume, s.request_id, s.interval_ms)
    if kind == "unsubscribe":
        return UnsubscribeRequest(msg.unsubscribe.symbol, msg.unsubscribe.request_id)
    if kind == "ping":
        return PingRequest(msg.ping.request_id)
    raise UnknownMessage("message carries no known kind (subscribe, unsubscribe, ping)")


def decode_client(data: bytes | str, encoding: Encoding) -> ClientRequest:
    return client_request(parse_client_message(data, encoding))


def subscribe_message(
    symbol: str, depth: int = 0, resume: ResumePoint | None = None, request_id: int = 0, interval_ms: int = 0
) -> stream_pb2.ClientMessage:
    msg = ClientMessage()
    sub = msg.subscribe
    sub.symbol = symbol
    sub.depth = depth
    sub.request_id = request_id
    sub.interval_ms = interval_ms
    if resume is not None:
        sub.resume.epoch = resume.epoch
        sub.resume.seq = resume.seq
    return msg


def unsubscribe_message(symbol: str, request_id: int = 0) -> stream_pb2.ClientMessage:
    msg = ClientMessage()
    msg.unsubscribe.symbol = symbol
    msg.unsubscribe.request_id = request_id
    return msg


def ping_message(request_id: int = 0) -> stream_pb2.ClientMessage:
    msg = ClientMessage()
    msg.ping.request_id = request_id
    return msg


def parse_server_message(data: bytes | str) -> stream_pb2.ServerMessage:
    """Decode a server envelope in either encoding (str = JSON)."""
    msg = ServerMessage()
    try:
        if isinstance(data, str):
            obj = json.loads(data)
            _check_json_shape(obj, msg.DESCRIPTOR)
            json_format.ParseDict(obj, msg, ignore_unknown_fields=True)
        else:
            msg.ParseFromString(bytes(data))
    except MalformedMessage:
        raise
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedMessage(f"cannot decode server message: {exc}") from None
    return msg


def snapshot_from_pb(ps: stream_pb2.Snapshot) -> Snapshot:
    return Snapshot(
        symbol=ps.symbol,
        epoch=ps.epoch,
        seq=ps.seq,
        instrument=instrument_from_pb(ps.instrument),
        bids=levels_from_pb(ps.bids),
        asks=levels_from_pb(ps.asks),
        checksum=ps.checksum,
        depth=ps.depth,
        time_ns=ps.time_ns,
    )


def delta_from_pb(pd: stream_pb2.Delta) -> Delta:
    return Delta(
        symbol=pd.symbol,
        epoch=pd.epoch,
        seq=pd.seq,
        prev_seq=pd.prev_seq,
        bids=levels_from_pb(pd.bids),
        asks=levels_from_pb(pd.asks),
        checksum=pd.checksum,
        event_time_ns=pd.event_time_ns,
        publish_time_ns=pd.publish_time_ns,
    )


# ----------------------------------------------------------------------------- feed


def feed_message(batch: FeedBatch) -> feed_pb2.FeedMessage:
    msg = feed_pb2.FeedMessage()
    b = msg.batch
    b.batch_id = batch.batch_id
    for inst in batch.instruments:
        instrument_to_pb(inst, b.instruments.add())
    for u in batch.updates:
        pu = b.updates.add()
        pu.symbol = u.symbol
        _levels_to_pb(u.bids, pu.bids)
        _levels_to_pb(u.asks, pu.asks)
        pu.replace = u.replace
        pu.event_time_ns = u.event_time_ns
    return msg


def parse_feed(data: bytes | str) -> feed_pb2.FeedBatch:
    """The decoded batch of a feed message, before any conversion: cheap to
    count (`Market.check_counts`) before the levels become Python objects."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage("the feed protocol is binary protobuf only")
    msg = feed_pb2.FeedMessage()
    try:
        msg.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise MalformedMessage(f"cannot decode feed message: {exc}") from None
    if msg.WhichOneof("kind") != "batch":
        raise UnknownMessage("feed message carries no known kind (batch)")
    return msg.batch


def feed_batch_from_pb(b: feed_pb2.FeedBatch) -> FeedBatch:
    return FeedBatch(
        batch_id=b.batch_id,
        instruments=tuple(instrument_from_pb(i) for i in b.instruments),
        updates=tuple(
            BookUpdate(
                symbol=u.symbol,
                bids=levels_from_pb(u.bids),
                asks=levels_from_pb(u.asks),
                replace=u.replace,
                event_time_ns=u.event_time_ns,
            )
            for u in b.updates
        ),
    )


def decode_feed(data: bytes | str) -> FeedBatch:
    return feed_batch_from_pb(parse_feed(data))


def feed_ack(batch_id: int, changes: int, positions: Iterable[Position]) -> bytes:
    reply = feed_pb2.FeedReply()
    ack = reply.ack
    ack.batch_id = batch_id
    ack.changes = changes
    for p in positions:
        ack.positions.add(symbol=p.symbol, epoch=p.epoch, seq=p.seq)
    data: bytes = reply.SerializeToString()
    return data


def feed_error(code: int, text: str, symbol: str = "", batch_id: int = 0) -> bytes:
    reply = feed_pb2.FeedReply()
    reply.error.code = error_code(code)
    reply.error.message = text
    reply.error.symbol = symbol
    reply.error.request_id = batch_id
    data: bytes = reply.SerializeToString()
    return data


def parse_feed_reply(data: bytes) -> feed_pb2.FeedReply:
    reply = feed_pb2.FeedReply()
    reply.ParseFromString(data)
    return reply


# ----------------------------------------------------------------------------- replication log


def log_entry(epoch: int, instruments: Iterable[Instrument], delta_payloads: Iterable[bytes]) -> bytes:
    entry = replication_pb2.LogEntry()
    entry.epoch = epoch
    for inst in instruments:
        instrument_to_pb(inst, entry.instruments.add())
    entry.deltas.extend(delta_payloads)
    data: bytes = entry.SerializeToString()
    return data


def parse_log_entry(data: bytes) -> tuple[int, tuple[Instrument, ...], list[tuple[Delta, bytes]]]:
    """(epoch, instruments, [(delta, its exact ServerMessage bytes)])."""
    entry = replication_pb2.LogEntry()
    try:
        entry.ParseFromString(data)
        out = []
        for payload in entry.deltas:
            msg = ServerMessage.FromString(payload)
            if msg.WhichOneof("kind") != "delta":
                raise MalformedMessage("a log entry holds a non-delta message")
            out.append((delta_from_pb(msg.delta), bytes(payload)))
    except DecodeError as exc:
        raise MalformedMessage(f"cannot decode log entry: {exc}") from None
    return entry.epoch, tuple(instrument_from_pb(i) for i in entry.instruments), out


def cluster_snapshot(epoch: int, position: int, books: Iterable[Snapshot]) -> bytes:
    cs = replication_pb2.ClusterSnapshot()
    cs.epoch = epoch
    cs.position = position
    for snap in books:
        cs.books.add().CopyFrom(snapshot_message(snap).snapshot)
    data: bytes = cs.SerializeToString()
    return data


def parse_cluster_snapshot(data: bytes) -> tuple[int, int, list[Snapshot]]:
    """(epoch, position, books)."""
    cs = replication_pb2.ClusterSnapshot()
    try:
        cs.ParseFromString(data)
    except DecodeError as exc:
        raise MalformedMessage(f"cannot decode cluster snapshot: {exc}") from None
    return cs.epoch, cs.position, [snapshot_from_pb(b) for b in cs.books]
