from orderbook.v1 import book_pb2 as _book_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Start(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_UNSPECIFIED: _ClassVar[Start]
    START_SNAPSHOT: _ClassVar[Start]
    START_RESUMED: _ClassVar[Start]

class SnapshotReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SNAPSHOT_REASON_UNSPECIFIED: _ClassVar[SnapshotReason]
    SNAPSHOT_REASON_NEW: _ClassVar[SnapshotReason]
    SNAPSHOT_REASON_STALE_EPOCH: _ClassVar[SnapshotReason]
    SNAPSHOT_REASON_HISTORY_EXHAUSTED: _ClassVar[SnapshotReason]
    SNAPSHOT_REASON_AHEAD: _ClassVar[SnapshotReason]
    SNAPSHOT_REASON_UNSUPPORTED: _ClassVar[SnapshotReason]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_MALFORMED_MESSAGE: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_MESSAGE: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_SYMBOL: _ClassVar[ErrorCode]
    ERROR_CODE_ALREADY_SUBSCRIBED: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_SUBSCRIBED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_ARGUMENT: _ClassVar[ErrorCode]
    ERROR_CODE_TOO_MANY_SUBSCRIPTIONS: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_UPDATE: _ClassVar[ErrorCode]
    ERROR_CODE_INSTRUMENT_CONFLICT: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_SOURCE_CONFLICT: _ClassVar[ErrorCode]
    ERROR_CODE_RATE_LIMITED: _ClassVar[ErrorCode]
START_UNSPECIFIED: Start
START_SNAPSHOT: Start
START_RESUMED: Start
SNAPSHOT_REASON_UNSPECIFIED: SnapshotReason
SNAPSHOT_REASON_NEW: SnapshotReason
SNAPSHOT_REASON_STALE_EPOCH: SnapshotReason
SNAPSHOT_REASON_HISTORY_EXHAUSTED: SnapshotReason
SNAPSHOT_REASON_AHEAD: SnapshotReason
SNAPSHOT_REASON_UNSUPPORTED: SnapshotReason
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_MALFORMED_MESSAGE: ErrorCode
ERROR_CODE_UNKNOWN_MESSAGE: ErrorCode
ERROR_CODE_UNKNOWN_SYMBOL: ErrorCode
ERROR_CODE_ALREADY_SUBSCRIBED: ErrorCode
ERROR_CODE_NOT_SUBSCRIBED: ErrorCode
ERROR_CODE_INVALID_ARGUMENT: ErrorCode
ERROR_CODE_TOO_MANY_SUBSCRIPTIONS: ErrorCode
ERROR_CODE_INVALID_UPDATE: ErrorCode
ERROR_CODE_INSTRUMENT_CONFLICT: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_SOURCE_CONFLICT: ErrorCode
ERROR_CODE_RATE_LIMITED: ErrorCode

class ClientMessage(_message.Message):
    __slots__ = ("subscribe", "unsubscribe", "ping")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    subscribe: Subscribe
    unsubscribe: Unsubscribe
    ping: Ping
    def __init__(self, subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., unsubscribe: _Optional[_Union[Unsubscribe, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ...) -> None: ...

class ResumePoint(_message.Message):
    __slots__ = ("epoch", "seq")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    seq: int
    def __init__(self, epoch: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("symbol", "depth", "resume", "request_id", "interval_ms")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    depth: int
    resume: ResumePoint
    request_id: int
    interval_ms: int
    def __init__(self, symbol: _Optional[str] = ..., depth: _Optional[int] = ..., resume: _Optional[_Union[ResumePoint, _Mapping]] = ..., request_id: _Optional[int] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class Unsubscribe(_message.Message):
    __slots__ = ("symbol", "request_id")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    request_id: int
    def __init__(self, symbol: _Optional[str] = ..., request_id: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("subscribed", "unsubscribed", "snapshot", "delta", "heartbeat", "error", "pong")
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    subscribed: Subscribed
    unsubscribed: Unsubscribed
    snapshot: Snapshot
    delta: Delta
    heartbeat: Heartbeat
    error: Error
    pong: Pong
    def __init__(self, subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., unsubscribed: _Optional[_Union[Unsubscribed, _Mapping]] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("symbol", "request_id", "start", "reason", "epoch", "seq", "depth", "instrument", "interval_ms")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    request_id: int
    start: Start
    reason: SnapshotReason
    epoch: int
    seq: int
    depth: int
    instrument: _book_pb2.Instrument
    interval_ms: int
    def __init__(self, symbol: _Optional[str] = ..., request_id: _Optional[int] = ..., start: _Optional[_Union[Start, str]] = ..., reason: _Optional[_Union[SnapshotReason, str]] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., depth: _Optional[int] = ..., instrument: _Optional[_Union[_book_pb2.Instrument, _Mapping]] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class Unsubscribed(_message.Message):
    __slots__ = ("symbol", "request_id")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    request_id: int
    def __init__(self, symbol: _Optional[str] = ..., request_id: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("symbol", "epoch", "seq", "instrument", "bids", "asks", "checksum", "depth", "time_ns")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    epoch: int
    seq: int
    instrument: _book_pb2.Instrument
    bids: _containers.RepeatedCompositeFieldContainer[_book_pb2.Level]
    asks: _containers.RepeatedCompositeFieldContainer[_book_pb2.Level]
    checksum: int
    depth: int
    time_ns: int
    def __init__(self, symbol: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., instrument: _Optional[_Union[_book_pb2.Instrument, _Mapping]] = ..., bids: _Optional[_Iterable[_Union[_book_pb2.Level, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[_book_pb2.Level, _Mapping]]] = ..., checksum: _Optional[int] = ..., depth: _Optional[int] = ..., time_ns: _Optional[int] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("symbol", "epoch", "seq", "prev_seq", "bids", "asks", "checksum", "event_time_ns", "publish_time_ns")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_SEQ_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    epoch: int
    seq: int
    prev_seq: int
    bids: _containers.RepeatedCompositeFieldContainer[_book_pb2.Level]
    asks: _containers.RepeatedCompositeFieldContainer[_book_pb2.Level]
    checksum: int
    event_time_ns: int
    publish_time_ns: int
    def __init__(self, symbol: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., prev_seq: _Optional[int] = ..., bids: _Optional[_Iterable[_Union[_book_pb2.Level, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[_book_pb2.Level, _Mapping]]] = ..., checksum: _Optional[int] = ..., event_time_ns: _Optional[int] = ..., publish_time_ns: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("symbol", "epoch", "seq", "time_ns", "stale")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    epoch: int
    seq: int
    time_ns: int
    stale: bool
    def __init__(self, symbol: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., time_ns: _Optional[int] = ..., stale: _Optional[bool] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "symbol", "request_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    symbol: str
    request_id: int
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., symbol: _Optional[str] = ..., request_id: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("request_id", "time_ns")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    time_ns: int
    def __init__(self, request_id: _Optional[int] = ..., time_ns: _Optional[int] = ...) -> None: ...
