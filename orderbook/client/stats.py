"""What `OrderbookClient.stats` counts: the session's counters of messages,
resumes and resyncs, and the connection's own."""

from __future__ import annotations

from dataclasses import dataclass

from orderbook.session.stats import SessionStats


@dataclass(slots=True)
class ClientStats(SessionStats):
    """Counters since the client was created."""

    connects: int = 0  # successful WebSocket handshakes
    reconnects: int = 0  # successful handshakes after the first
    connect_failures: int = 0  # failed connection attempts (refused, timeout, HTTP status)
