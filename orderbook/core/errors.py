"""One exception tree for the package.

`InvalidInput` and its children are a peer's fault (a client or a feed sent
something wrong) and map to protocol error codes at the edges. `StreamError`
and its children are what a subscriber detects in a stream it receives.
`InvariantViolation` is our own bug.
"""

from __future__ import annotations


class OrderbookError(Exception):
    """Root of every error this package raises on purpose."""


class InvalidInput(OrderbookError):
    """Input from a peer is wrong; the peer can fix it."""


class InexactValue(InvalidInput):
    """A decimal value does not fit the instrument's scale exactly."""


class InvalidInstrument(InvalidInput):
    """An instrument definition is malformed."""


class InstrumentConflict(InvalidInput):
    """An instrument is redefined with different scales or increments."""


class UnknownSymbol(InvalidInput):
    def __init__(self, symbol: str) -> None:
        super().__init__(f"unknown symbol {symbol!r}")
        self.symbol = symbol


class SourceConflict(InvalidInput):
    """An update is for a symbol that another source owns (one source per book)."""

    def __init__(self, symbol: str, owner: str, source: str, message: str = "") -> None:
        super().__init__(message or f"{symbol} is owned by the source {owner!r}; {source!r} may not update it")
        self.symbol, self.owner, self.source = symbol, owner, source


class InvalidUpdate(InvalidInput):
    """A book update is invalid (off-grid price or size, negative size)."""

    def __init__(self, symbol: str, message: str) -> None:
        super().__init__(f"{symbol}: {message}")
        self.symbol = symbol


class LimitExceeded(InvalidUpdate):
    """A feed batch goes past one of the node's limits (levels per book side,
    symbols per node, levels per batch). The batch is refused whole; the
    message names the limit and its value."""

    def __init__(self, limit: str, value: int, message: str, symbol: str = "") -> None:
        InvalidInput.__init__(self, message)
        self.limit, self.value, self.symbol = limit, value, symbol


class StreamError(OrderbookError):
    """A received stream is inconsistent; the receiver must resynchronise."""


class SequenceGap(StreamError):
    def __init__(self, symbol: str, expected: int, got: int) -> None:
        super().__init__(f"{symbol}: expected prev_seq {expected}, got {got}")
        self.symbol, self.expected, self.got = symbol, expected, got


class DuplicateDelta(StreamError):
    def __init__(self, symbol: str, held: int, got: int) -> None:
        super().__init__(f"{symbol}: delta seq {got} is not after held seq {held}")
        self.symbol, self.held, self.got = symbol, held, got


class EpochMismatch(StreamError):
    def __init__(self, symbol: str, held: int, got: int) -> None:
        super().__init__(f"{symbol}: epoch changed from {held} to {got}")
        self.symbol, self.held, self.got = symbol, held, got


class ChecksumMismatch(StreamError):
    def __init__(self, symbol: str, seq: int, expected: int, computed: int) -> None:
        super().__init__(f"{symbol}: checksum at seq {seq} is {computed:#010x}, server says {expected:#010x}")
        self.symbol, self.seq, self.expected, self.computed = symbol, seq, expected, computed


class NotSynced(StreamError):
    """A delta arrived for a book that has no snapshot yet."""


class InvariantViolation(OrderbookError):
    """An internal invariant does not hold: a bug in this package."""
