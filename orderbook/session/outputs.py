"""What the session hands back to its shell after each input, in order.

Actions (the shell must act on them): `Send` a message, `RetrySubscribe`
after a delay, drop a `Rejected` symbol. Events (what happened, for the
shell to show, count or log): a verified `BookUpdated`, a `HeartbeatChecked`,
a subscription `Started` (resumed, or a snapshot follows), a `Resync` begun,
a server `ErrorReceived`, a `PongReceived`, a `MalformedReceived` frame, a
symbol's `StateChanged`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, TypeAlias

from orderbook.core.errors import OrderbookError
from orderbook.core.follower import BookFollower
from orderbook.core.resume import ResumePoint
from orderbook.wire.codec import ClientMessage, MalformedMessage

from .errors import ServerError, SubscriptionRejected
from .states import ResyncReason, SymbolState

UpdateKind = Literal["snapshot", "delta", "resumed"]


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Send:
    """Send this message on the connection, after those before it."""

    message: ClientMessage


@dataclass(frozen=True, slots=True)
class RetrySubscribe:
    """The server refused `symbol` for now: call `SubscriberSession.retry`
    after `delay` seconds (the `attempt`-th retry since it was last live)."""

    symbol: str
    delay: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server refused `symbol` for good; the session dropped it."""

    symbol: str
    error: SubscriptionRejected


# ----------------------------------------------------------------------------- events


# BookUpdated and HeartbeatChecked are built once per message: not frozen,
# which would cost four times as much to build.
@dataclass(slots=True)
class BookUpdated:
    """`symbol`'s book was verified at (`epoch`, `seq`): after a snapshot, a
    delta, or a resume honoured at the point offered. `follower` holds the
    book (and moves on with later messages). `solicited` is False for a
    snapshot the server pushed to a live subscription (it resynchronised a
    reader that fell behind)."""

    symbol: str
    kind: UpdateKind
    epoch: int
    seq: int
    follower: BookFollower
    solicited: bool = True


@dataclass(slots=True)
class HeartbeatChecked:
    """A heartbeat agreed with the book held; `stale`: the node says its
    source is unreachable and the book may be behind."""

    symbol: str
    stale: bool


@dataclass(frozen=True, slots=True)
class Started:
    """The server answered a Subscribe: `resumed` at `offered`, or a snapshot
    follows, for `reason` (the `SnapshotReason` name). `new_epoch`: the
    stream is in another epoch than the book held before."""

    symbol: str
    resumed: bool
    reason: str
    epoch: int
    seq: int
    offered: ResumePoint | None
    new_epoch: bool


@dataclass(frozen=True, slots=True)
class Resync:
    """`symbol` is being resynchronised in-band: its book was desynced, an
    Unsubscribe was sent, and a Subscribe without resume point follows."""

    symbol: str
    reason: ResyncReason
    error: OrderbookError


class ErrorOutcome(enum.Enum):
    """What a server Error did to the subscription it answered."""

    UNRELATED = "unrelated"  # it answers no request in flight: report only
    LEFT = "left"  # it answered our Unsubscribe: the server holds nothing now
    RESYNC = "resync"  # ALREADY_SUBSCRIBED: start the symbol over
    RETRY = "retry"  # the Subscribe is sent again later
    REJECTED = "rejected"  # the symbol is dropped


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """The server sent `error`; `symbol` is the subscription it concerns
    (the one whose request it answers, else the symbol it names)."""

    error: ServerError
    symbol: str
    outcome: ErrorOutcome


@dataclass(frozen=True, slots=True)
class PongReceived:
    request_id: int
    time_ns: int


@dataclass(frozen=True, slots=True)
class MalformedReceived:
    """A frame that could not be decoded; it was ignored."""

    error: MalformedMessage


@dataclass(frozen=True, slots=True)
class StateChanged:
    symbol: str
    state: SymbolState
    previous: SymbolState


Output: TypeAlias = (
    Send
    | RetrySubscribe
    | Rejected
    | BookUpdated
    | HeartbeatChecked
    | Started
    | Resync
    | ErrorReceived
    | PongReceived
    | MalformedReceived
    | StateChanged
)


def messages(outputs: list[Output]) -> list[ClientMessage]:
    """The messages to send, in order."""
    return [o.message for o in outputs if isinstance(o, Send)]
