from orderbook.v1 import book_pb2 as _book_pb2
from orderbook.v1 import stream_pb2 as _stream_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogEntry(_message.Message):
    __slots__ = ("epoch", "instruments", "deltas")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    instruments: _containers.RepeatedCompositeFieldContainer[_book_pb2.Instrument]
    deltas: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, epoch: _Optional[int] = ..., instruments: _Optional[_Iterable[_Union[_book_pb2.Instrument, _Mapping]]] = ..., deltas: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ClusterSnapshot(_message.Message):
    __slots__ = ("epoch", "position", "books")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    BOOKS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    position: int
    books: _containers.RepeatedCompositeFieldContainer[_stream_pb2.Snapshot]
    def __init__(self, epoch: _Optional[int] = ..., position: _Optional[int] = ..., books: _Optional[_Iterable[_Union[_stream_pb2.Snapshot, _Mapping]]] = ...) -> None: ...
