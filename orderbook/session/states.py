"""The states of one symbol's subscription.

`Phase` is where the protocol stands on the current connection (docs/protocol.md
§7); the transition table in `transitions.py` moves it. `SymbolState` is what
an application shows, derived from the phase and the book, with the same five
values as the TypeScript client's `SymbolState` (web/client/src/session.ts).
`ResyncReason` says why a symbol was resynchronised, with the TypeScript
client's names.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    """The protocol phase of one subscription."""

    IDLE = "idle"  # no request on this connection: disconnected, or a retry is due later
    SUBSCRIBING = "subscribing"  # Subscribe sent; waiting for Subscribed
    SNAPSHOT_WAIT = "snapshot-wait"  # START_SNAPSHOT acknowledged; waiting for the Snapshot
    LIVE = "live"  # the book is current; deltas and heartbeats are applied
    UNSUBSCRIBING = "unsubscribing"  # Unsubscribe sent; waiting for Unsubscribed
    FAILED = "failed"  # refused for good; nothing is sent for it until asked again


class SymbolState(enum.Enum):
    """What a subscription is doing, as an application should show it."""

    SUBSCRIBING = "subscribing"  # the first Subscribe is in flight, no book yet
    LIVE = "live"  # the book is verified and changes arrive
    RESYNCING = "resyncing"  # a check failed; a fresh snapshot is on its way
    STALE = "stale"  # the book is the last one verified: connection down, resume in flight, or the node's source unreachable
    FAILED = "failed"  # the server refused the subscription for good


class ResyncReason(enum.Enum):
    """Why a symbol was resynchronised in-band (docs/protocol.md §7.5)."""

    CHECKSUM = "checksum"  # the book's checksum differs from the server's
    GAP = "gap"  # prev_seq is not the seq held: a change was missed
    DUPLICATE = "duplicate"  # a delta at or below the seq held
    EPOCH = "epoch"  # a delta or heartbeat of another epoch
    HEARTBEAT = "heartbeat"  # a heartbeat's seq differs from the seq held
    RESUME = "resume"  # START_RESUMED at another point than the one offered
    ALREADY_SUBSCRIBED = "already_subscribed"  # client and server disagreed about the subscription


def derive_state(phase: Phase, synced: bool, ever_synced: bool, connected: bool, server_stale: bool) -> SymbolState:
    """The state to show: a verified book is live only while its stream is
    confirmed current; an unverified one is resyncing once it had a book."""
    if phase is Phase.FAILED:
        return SymbolState.FAILED
    if synced:
        current = connected and not server_stale and phase is Phase.LIVE
        return SymbolState.LIVE if current else SymbolState.STALE
    return SymbolState.RESYNCING if ever_synced else SymbolState.SUBSCRIBING
