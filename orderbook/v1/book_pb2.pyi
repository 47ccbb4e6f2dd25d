from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Instrument(_message.Message):
    __slots__ = ("symbol", "price_scale", "size_scale", "price_increment", "size_increment", "base", "quote", "venue")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    PRICE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SIZE_SCALE_FIELD_NUMBER: _ClassVar[int]
    PRICE_INCREMENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_INCREMENT_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    price_scale: int
    size_scale: int
    price_increment: int
    size_increment: int
    base: str
    quote: str
    venue: str
    def __init__(self, symbol: _Optional[str] = ..., price_scale: _Optional[int] = ..., size_scale: _Optional[int] = ..., price_increment: _Optional[int] = ..., size_increment: _Optional[int] = ..., base: _Optional[str] = ..., quote: _Optional[str] = ..., venue: _Optional[str] = ...) -> None: ...

class Level(_message.Message):
    __slots__ = ("price", "size")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    price: int
    size: int
    def __init__(self, price: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...
