"""The errors `OrderbookClient` raises. Those about the stream and the
server's answers come from the subscriber session; those about the
connection's life are the client's own."""

from __future__ import annotations

from orderbook.session.errors import ClientError, ResumeMismatch, ServerError, SubscriptionRejected

__all__ = [
    "ClientClosed",
    "ClientError",
    "HandshakeRejected",
    "ResumeMismatch",
    "ServerError",
    "SubscriptionRejected",
]


class HandshakeRejected(ClientError):
    """The server refused the WebSocket upgrade with a status that retrying
    will not fix (401 bad token, 403 Origin not allowed, 426, other 4xx)."""

    def __init__(self, status: int, reason: str = "", body: bytes = b"") -> None:
        # The server says why in its body (docs/operations.md §11): one line of it.
        text = " ".join(body.decode("utf-8", "replace").split())[:200]
        detail = f": {text}" if text else (f" {reason}" if reason else "")
        super().__init__(f"server rejected the WebSocket upgrade: HTTP {status}{detail}")
        self.status, self.reason, self.body = status, reason, body
        self.text = text  # the server's reason, on one line ("" if it gave none)


class ClientClosed(ClientError):
    """The client was closed (or `run()` ended) while something waited on it."""
