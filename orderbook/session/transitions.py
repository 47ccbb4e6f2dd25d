"""The subscription state machine as a table, in the way h11 writes its own:
every allowed (phase, trigger) pair maps to the next phase, and any other
pair is a bug in the caller, reported at once instead of carried on.

    phase          trigger            next phase     when
    IDLE           SUBSCRIBE          SUBSCRIBING    connected, or a retry is due
    SUBSCRIBING    RESUMED            LIVE           START_RESUMED at the point offered
    SUBSCRIBING    SNAPSHOT_FOLLOWS   SNAPSHOT_WAIT  START_SNAPSHOT
    SUBSCRIBING    CHECK_FAILED       UNSUBSCRIBING  resumed elsewhere, ALREADY_SUBSCRIBED
    SUBSCRIBING    REFUSED            IDLE           an Error that may pass: retry later
    SUBSCRIBING    REJECTED           FAILED         an Error that will not pass
    SNAPSHOT_WAIT  VERIFIED           LIVE           the snapshot's checksum matched
    SNAPSHOT_WAIT  CHECK_FAILED       UNSUBSCRIBING  it did not
    LIVE           VERIFIED           LIVE           a delta, snapshot or heartbeat checked out
    LIVE           CHECK_FAILED       UNSUBSCRIBING  gap, duplicate, epoch, checksum, heartbeat
    any but IDLE,  UNSUBSCRIBE        UNSUBSCRIBING  the application leaves or changes depth
      UNSUBSCRIBING, FAILED
    UNSUBSCRIBING  LEFT               IDLE           Unsubscribed, or an Error answering it
    FAILED         WANTED_AGAIN       IDLE           the application asks again
    any            DISCONNECTED       IDLE           (FAILED stays FAILED)

`ACCEPTS` says in which phases each server message about a symbol is taken;
in any other phase it belongs to an older request and is ignored (§7.3, §7.5).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from orderbook.core.errors import InvariantViolation

from .states import Phase


class Trigger(enum.Enum):
    """What moves a subscription from one phase to the next."""

    SUBSCRIBE = "subscribe"  # a Subscribe is sent
    RESUMED = "resumed"  # Subscribed START_RESUMED, at the point offered
    SNAPSHOT_FOLLOWS = "snapshot_follows"  # Subscribed START_SNAPSHOT
    VERIFIED = "verified"  # a snapshot, delta or heartbeat passed every check
    CHECK_FAILED = "check_failed"  # resync: Unsubscribe now, a fresh Subscribe on its answer
    UNSUBSCRIBE = "unsubscribe"  # the application leaves the symbol or changes its depth
    LEFT = "left"  # the server no longer holds the subscription
    REFUSED = "refused"  # an Error answered the Subscribe; it may pass later
    REJECTED = "rejected"  # an Error answered the Subscribe; it will not pass
    WANTED_AGAIN = "wanted_again"  # the application asks again for a rejected symbol
    DISCONNECTED = "disconnected"  # the connection is gone


_P = Phase
_T = Trigger

TRANSITIONS: Mapping[tuple[Phase, Trigger], Phase] = MappingProxyType(
    {
        (_P.IDLE, _T.SUBSCRIBE): _P.SUBSCRIBING,
        (_P.SUBSCRIBING, _T.RESUMED): _P.LIVE,
        (_P.SUBSCRIBING, _T.SNAPSHOT_FOLLOWS): _P.SNAPSHOT_WAIT,
        (_P.SUBSCRIBING, _T.CHECK_FAILED): _P.UNSUBSCRIBING,
        (_P.SUBSCRIBING, _T.REFUSED): _P.IDLE,
        (_P.SUBSCRIBING, _T.REJECTED): _P.FAILED,
        (_P.SUBSCRIBING, _T.UNSUBSCRIBE): _P.UNSUBSCRIBING,
        (_P.SNAPSHOT_WAIT, _T.VERIFIED): _P.LIVE,
        (_P.SNAPSHOT_WAIT, _T.CHECK_FAILED): _P.UNSUBSCRIBING,
        (_P.SNAPSHOT_WAIT, _T.UNSUBSCRIBE): _P.UNSUBSCRIBING,
        (_P.LIVE, _T.VERIFIED): _P.LIVE,
        (_P.LIVE, _T.CHECK_FAILED): _P.UNSUBSCRIBING,
        (_P.LIVE, _T.UNSUBSCRIBE): _P.UNSUBSCRIBING,
        (_P.UNSUBSCRIBING, _T.LEFT): _P.IDLE,
        (_P.FAILED, _T.WANTED_AGAIN): _P.IDLE,
        (_P.IDLE, _T.DISCONNECTED): _P.IDLE,
        (_P.SUBSCRIBING, _T.DISCONNECTED): _P.IDLE,
        (_P.SNAPSHOT_WAIT, _T.DISCONNECTED): _P.IDLE,
        (_P.LIVE, _T.DISCONNECTED): _P.IDLE,
        (_P.UNSUBSCRIBING, _T.DISCONNECTED): _P.IDLE,
        (_P.FAILED, _T.DISCONNECTED): _P.FAILED,
    }
)

# The phases in which a server message about the symbol is taken. A Subscribed
# or Unsubscribed must also carry the request id of the request in flight.
ACCEPTS: Mapping[str, frozenset[Phase]] = MappingProxyType(
    {
        "subscribed": frozenset({_P.SUBSCRIBING}),
        "snapshot": frozenset({_P.SNAPSHOT_WAIT, _P.LIVE}),  # a live one: the server resynchronising a slow reader
        "delta": frozenset({_P.LIVE}),
        "heartbeat": frozenset({_P.LIVE}),
        "unsubscribed": frozenset({_P.UNSUBSCRIBING}),
        # An Error answers the request in flight: a Subscribe or an Unsubscribe.
        "error": frozenset({_P.SUBSCRIBING, _P.UNSUBSCRIBING}),
    }
)


class UndefinedTransition(InvariantViolation):
    """A (phase, trigger) pair the table does not allow: a bug in this package."""

    def __init__(self, phase: Phase, trigger: Trigger) -> None:
        super().__init__(f"no transition from {phase.name} on {trigger.name}")
        self.phase, self.trigger = phase, trigger


def transition(phase: Phase, trigger: Trigger) -> Phase:
    """The phase after `trigger` in `phase`; `UndefinedTransition` if the
    table does not allow it."""
    try:
        return TRANSITIONS[phase, trigger]
    except KeyError:
        raise UndefinedTransition(phase, trigger) from None
