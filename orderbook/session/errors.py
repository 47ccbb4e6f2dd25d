"""What a subscriber reports about the server and its stream.

`ClientError` is the root of the errors the subscribers (the asyncio client,
the recorder) raise; the server's `Error` messages become `ServerError`s, and
a refusal that retrying cannot fix a `SubscriptionRejected`.
"""

from __future__ import annotations

from orderbook.core.errors import OrderbookError, StreamError
from orderbook.wire.codec import ErrorCode


def code_name(code: int) -> str:
    """`ERROR_CODE_UNKNOWN_SYMBOL` for 3; `ERROR_CODE_<n>` for a code newer
    than this program (the enum is open: new values may appear)."""
    try:
        name: str = ErrorCode.Name(code)
    except ValueError:
        return f"ERROR_CODE_{code}"
    return name


class ClientError(OrderbookError):
    """Base of the errors a subscriber raises."""


class ServerError(ClientError):
    """An Error message the server sent."""

    def __init__(self, code: int, message: str, symbol: str = "", request_id: int = 0) -> None:
        name = code_name(code)
        where = f" ({symbol})" if symbol else ""
        super().__init__(f"{name}{where}: {message}")
        self.code, self.code_name, self.message = code, name, message
        self.symbol, self.request_id = symbol, request_id


class SubscriptionRejected(ServerError):
    """The server refused a subscription for good (unknown symbol, invalid
    depth, too many subscriptions): the symbol is dropped."""


class ResumeMismatch(StreamError):
    """The server's START_RESUMED does not match the point the subscriber offered."""
