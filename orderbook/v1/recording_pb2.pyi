from orderbook.v1 import stream_pb2 as _stream_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectionChange(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECTION_CHANGE_UNSPECIFIED: _ClassVar[ConnectionChange]
    CONNECTION_CHANGE_OPENED: _ClassVar[ConnectionChange]
    CONNECTION_CHANGE_CLOSED: _ClassVar[ConnectionChange]
CONNECTION_CHANGE_UNSPECIFIED: ConnectionChange
CONNECTION_CHANGE_OPENED: ConnectionChange
CONNECTION_CHANGE_CLOSED: ConnectionChange

class RecordingEntry(_message.Message):
    __slots__ = ("receive_time_ns", "header", "message", "connection")
    RECEIVE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    receive_time_ns: int
    header: RecordingHeader
    message: _stream_pb2.ServerMessage
    connection: ConnectionEvent
    def __init__(self, receive_time_ns: _Optional[int] = ..., header: _Optional[_Union[RecordingHeader, _Mapping]] = ..., message: _Optional[_Union[_stream_pb2.ServerMessage, _Mapping]] = ..., connection: _Optional[_Union[ConnectionEvent, _Mapping]] = ...) -> None: ...

class RecordingHeader(_message.Message):
    __slots__ = ("format", "version", "source_url", "symbols", "start_time_ns", "software")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URL_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_FIELD_NUMBER: _ClassVar[int]
    format: str
    version: int
    source_url: str
    symbols: _containers.RepeatedScalarFieldContainer[str]
    start_time_ns: int
    software: str
    def __init__(self, format: _Optional[str] = ..., version: _Optional[int] = ..., source_url: _Optional[str] = ..., symbols: _Optional[_Iterable[str]] = ..., start_time_ns: _Optional[int] = ..., software: _Optional[str] = ...) -> None: ...

class ConnectionEvent(_message.Message):
    __slots__ = ("change", "close_code", "detail")
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    change: ConnectionChange
    close_code: int
    detail: str
    def __init__(self, change: _Optional[_Union[ConnectionChange, str]] = ..., close_code: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...
