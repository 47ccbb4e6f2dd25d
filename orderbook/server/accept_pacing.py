"""New connections are started a few per event-loop turn, round-robin by
client address, so a storm of simultaneous handshakes cannot hold the loop.

The event loop accepts everything the kernel has queued in one callback and
would then parse every request head and answer every upgrade (or 429) in the
next turn: 2,000 handshakes at once silenced every subscriber for ~150 ms.
Here a connection beyond the turn's quota is parked with reading paused (its
bytes wait in the kernel) and started in a later turn, fairly across client
addresses, so one address's storm delays its own connections, not the
subscribers already streaming, the feed, or another address's connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from typing import Protocol

# Connections started per loop turn. A handshake (parse, checks, 101 or 429)
# costs 0.1-0.3 ms here, so a turn stays within a few ms.
DEFAULT_PER_TURN = 16


class Startable(Protocol):
    """A parked connection (orderbook/server/sanic_seam.py's PacedProtocol)."""

    def start(self) -> None: ...


class AcceptPacer:
    """The per-turn quota and the parked connections of one server."""

    __slots__ = ("_loop", "_parked", "_turn_scheduled", "_used", "per_turn")

    def __init__(self, per_turn: int = DEFAULT_PER_TURN) -> None:
        self.per_turn = max(1, per_turn)
        self._used = 0
        # address -> parked protocols, in arrival order; the dict's order is
        # the round-robin order of addresses.
        self._parked: OrderedDict[str, deque[Startable]] = OrderedDict()
        self._turn_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def parked(self) -> int:
        return sum(len(q) for q in self._parked.values())

    def arrive(self, proto: Startable, address: str, loop: asyncio.AbstractEventLoop) -> bool:
        """True: start it now. False: parked until a later turn."""
        self._loop = loop
        self._next_turn()
        if not self._parked and self._used < self.per_turn:
            self._used += 1
            return True
        self._parked.setdefault(address, deque()).append(proto)
        return False

    def forget(self, proto: Startable, address: str) -> None:
        q = self._parked.get(address)
        if q is not None:
            with contextlib.suppress(ValueError):  # already started
                q.remove(proto)
            if not q:
                del self._parked[address]

    def _next_turn(self) -> None:
        if not self._turn_scheduled and self._loop is not None:
            self._turn_scheduled = True
            # call_soon from inside a turn runs in the next one, after the
            # loop has polled sockets and run due timers.
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._turn_scheduled = False
        self._used = 0
        while self._parked and self._used < self.per_turn:
            address, q = next(iter(self._parked.items()))
            proto = q.popleft()
            if q:
                self._parked.move_to_end(address)  # the next address goes first
            else:
                del self._parked[address]
            self._used += 1
            proto.start()
        if self._parked or self._used:
            self._next_turn()
