"""The Python subscriber: an asyncio client that keeps exact, verified books
current over the /ws stream, resuming after disconnections and
resynchronising a broken symbol in-band."""

from __future__ import annotations

from .backoff import Backoff
from .client import (
    ClientClosed,
    ClientError,
    ClientStats,
    HandshakeRejected,
    OnUpdate,
    OrderbookClient,
    ResumeMismatch,
    ServerError,
    SubscriptionRejected,
    SubState,
    parse_retry_after,
)
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
