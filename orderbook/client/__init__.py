"""The Python subscriber: an asyncio client that keeps exact, verified books
current over the /ws stream, resuming after disconnections and
resynchronising a broken symbol in-band. The protocol rules are the
subscriber session's (orderbook/session/); this package is its I/O shell."""

from __future__ import annotations

from .backoff import Backoff
from .client import OnUpdate, OrderbookClient, SubState
from .connection import parse_retry_after
from .errors import (
    ClientClosed,
    ClientError,
    HandshakeRejected,
    ResumeMismatch,
    ServerError,
    SubscriptionRejected,
)
from .stats import ClientStats
from .watch import render, watch

__all__ = [
    "Backoff",
    "ClientClosed",
    "ClientError",
    "ClientStats",
    "HandshakeRejected",
    "OnUpdate",
    "OrderbookClient",
    "ResumeMismatch",
    "ServerError",
    "SubState",
    "SubscriptionRejected",
    "parse_retry_after",
    "render",
    "watch",
]
