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
from collections import OrderedDict, deque
from typing import Any

from sanic.server.protocols.websocket_protocol import WebSocketProtocol

# Connections started per loop turn. A handshake (parse, checks, 101 or 429)
# costs 0.1-0.3 ms here, so a turn stays within a few ms.
DEFAULT_PER_TURN = 16


class AcceptPacer:
    """The per-turn quota and the parked connections of one server."""

    __slots__ = ("_loop", "_parked", "_turn_scheduled", "_used", "per_turn")

    def __init__(self, per_turn: int = DEFAULT_PER_TURN) -> None:
        self.per_turn = max(1, per_turn)
        self._used = 0
        # address -> parked protocols, in arrival order; the dict's order is
        # the round-robin order of addresses.
        self._parked: OrderedDict[str, deque[PacedProtocol]] = OrderedDict()
        self._turn_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def parked(self) -> int:
        return sum(len(q) for q in self._parked.values())

    def arrive(self, proto: PacedProtocol, address: str, loop: asyncio.AbstractEventLoop) -> bool:
        """True: start it now. False: parked until a later turn."""
        self._loop = loop
        self._next_turn()
        if not self._parked and self._used < self.per_turn:
            self._used += 1
            return True
        self._parked.setdefault(address, deque()).append(proto)
        return False

    def forget(self, proto: PacedProtocol, address: str) -> None:
        q = self._parked.get(address)
        if q is not None:
            try:
                q.remove(proto)
            except ValueError:
                pass
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


class PacedProtocol(WebSocketProtocol):
    """Sanic's HTTP/WebSocket protocol whose first request is handed to Sanic
    when the pacer admits it. (Pacing the accept is not enough: a storm's
    connections are accepted over several turns, then their requests arrive
    together and would all be parsed in one.)"""

    __slots__ = ("_address", "_paced")  # Sanic's protocols have slots

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paced: bytearray | None = None  # the first bytes, while parked
        self._address: str | None = None  # set once the first bytes arrived

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            if self._paced is None:
                super().data_received(data)
            else:
                self._paced += data  # arrived before pause_reading took effect
            return
        pacer: AcceptPacer | None = getattr(self.app.ctx, "accept_pacer", None)
        peer = self.transport.get_extra_info("peername") if self.transport else None
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if pacer is None or pacer.arrive(self, self._address, self.loop):
            super().data_received(data)
            return
        self._paced = bytearray(data)
        self.transport.pause_reading()

    def start(self) -> None:
        data = self._paced
        if data is None:
            return
        self._paced = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        super().data_received(bytes(data))
        transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._paced is not None:
            self._paced = None
            pacer: AcceptPacer | None = getattr(self.app.ctx, "accept_pacer", None)
            if pacer is not None and self._address is not None:
                pacer.forget(self, self._address)
        super().connection_lost(exc)
