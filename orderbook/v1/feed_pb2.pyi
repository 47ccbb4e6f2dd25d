from orderbook.v1 import book_pb2 as _book_pb2
from orderbook.v1 import stream_pb2 as _stream_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeedMessage(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: FeedBatch
    def __init__(self, batch: _Optional[_Union[FeedBatch, _Mapping]] = ...) -> None: ...

class FeedBatch(_message.Message):
    __slots__ = ("batch_id", "instruments", "updates")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    instruments: _containers.RepeatedCompositeFieldContainer[_book_pb2.Instrument]
    updates: _containers.RepeatedCompositeFieldContainer[BookUpdate]
    def __init__(self, batch_id: _Optional[int] = ..., instruments: _Optional[_Iterable[_Union[_book_pb2.Instrument, _Mapping]]] = ..., updates: _Optional[_Iterable[_Union[BookUpdate, _Mapping]]] = ...) -> None: ...

class BookUpdate(_message.Message):
    __slots__ = ("symbol", "bids", "asks", "replace", "event_time_ns")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    bids: _containers.RepeatedCompositeFieldContainer[_book_pb2.Level]
    asks: _containers.RepeatedCompositeFieldContainer[_book_pb2.Level]
    replace: bool
    event_time_ns: int
    def __init__(self, symbol: _Optional[str] = ..., bids: _Optional[_Iterable[_Union[_book_pb2.Level, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[_book_pb2.Level, _Mapping]]] = ..., replace: _Optional[bool] = ..., event_time_ns: _Optional[int] = ...) -> None: ...

class FeedReply(_message.Message):
    __slots__ = ("ack", "error")
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ack: FeedAck
    error: _stream_pb2.Error
    def __init__(self, ack: _Optional[_Union[FeedAck, _Mapping]] = ..., error: _Optional[_Union[_stream_pb2.Error, _Mapping]] = ...) -> None: ...

class FeedAck(_message.Message):
    __slots__ = ("batch_id", "changes", "positions")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    changes: int
    positions: _containers.RepeatedCompositeFieldContainer[SymbolPosition]
    def __init__(self, batch_id: _Optional[int] = ..., changes: _Optional[int] = ..., positions: _Optional[_Iterable[_Union[SymbolPosition, _Mapping]]] = ...) -> None: ...

class SymbolPosition(_message.Message):
    __slots__ = ("symbol", "epoch", "seq")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    epoch: int
    seq: int
    def __init__(self, symbol: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...
