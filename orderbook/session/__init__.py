"""The subscriber side of the /ws protocol, without I/O: server messages in,
messages to send, verified books and what happened out. The asyncio client,
the recorder and the load-test checker are shells around `SubscriberSession`;
the resume and resync rules live here once (docs/protocol.md §7)."""

from __future__ import annotations

from .backoff import Backoff
from .errors import ClientError, ResumeMismatch, ServerError, SubscriptionRejected, code_name
from .outputs import (
    BookUpdated,
    ErrorOutcome,
    ErrorReceived,
    HeartbeatChecked,
    MalformedReceived,
    Output,
    PongReceived,
    Rejected,
    Resync,
    RetrySubscribe,
    Send,
    Started,
    StateChanged,
    UpdateKind,
    messages,
)
from .policy import PERMANENT_REFUSALS, RefusalPolicy
from .reconnect import MAX_RETRY_AFTER, ReconnectPolicy, retry_after_seconds
from .session import SubscriberSession, reason_name
from .states import Phase, ResyncReason, SymbolState
from .stats import SessionStats
from .transitions import ACCEPTS, TRANSITIONS, Trigger, UndefinedTransition, transition

__all__ = [
    "ACCEPTS",
    "MAX_RETRY_AFTER",
    "PERMANENT_REFUSALS",
    "TRANSITIONS",
    "Backoff",
    "BookUpdated",
    "ClientError",
    "ErrorOutcome",
    "ErrorReceived",
    "HeartbeatChecked",
    "MalformedReceived",
    "Output",
    "Phase",
    "PongReceived",
    "ReconnectPolicy",
    "RefusalPolicy",
    "Rejected",
    "ResumeMismatch",
    "Resync",
    "ResyncReason",
    "RetrySubscribe",
    "Send",
    "ServerError",
    "SessionStats",
    "Started",
    "StateChanged",
    "SubscriberSession",
    "SubscriptionRejected",
    "SymbolState",
    "Trigger",
    "UndefinedTransition",
    "UpdateKind",
    "code_name",
    "messages",
    "reason_name",
    "retry_after_seconds",
    "transition",
]
