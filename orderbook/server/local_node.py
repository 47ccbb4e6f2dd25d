"""A worker of `serve --workers N` without Redis: it follows the supervisor's
sequencer over the local channel (orderbook/replication/local.py) and serves
what it receives, as a cluster node serves the Redis log."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable

from orderbook.core.events import Delta, Snapshot
from orderbook.core.instrument import Instrument
from orderbook.replication.local import LocalFollower

from .cluster import CLOSE_SERVICE_RESTART, HoldsHub
from .hub import Hub
from .settings import Settings

log = logging.getLogger("orderbook.worker")

# How often a worker checks that its supervisor is still there.
ORPHAN_CHECK_INTERVAL = 0.5


class LocalNode:
    def __init__(self, settings: Settings, path: str, state: HoldsHub) -> None:
        self._settings = settings
        self._state = state
        self.follower = LocalFollower(path, state.hub.epoch, self._apply, self._restore)
        self.resyncs = 0

    @property
    def ready(self) -> bool:
        return self.follower.caught_up and self.follower.connected

    @property
    def stale(self) -> bool:
        return self.follower.stale

    def status(self) -> dict:
        f = self.follower
        return {"role": "worker", "log_position": f.position, "caught_up": f.caught_up, "stale": f.stale}

    def _apply(self, instruments: Iterable[Instrument], deltas: list[tuple[Delta, bytes]]) -> None:
        self._state.hub.apply_log(instruments, deltas)

    def _restore(self, books: list[Snapshot], held: bool) -> None:
        old = self._state.hub
        if held:
            # Changes were lost to this worker (it fell behind and was dropped):
            # its subscribers start over with fresh snapshots, as on a new epoch.
            self.resyncs += 1
            log.warning("resynchronised from a snapshot; closing %d subscribers", len(old.connections))
            self._state.hub = Hub(self._settings, old.epoch, asyncio.get_running_loop(), counts=old.counts)
            for conn in list(old.connections):
                if conn.ws is not None:
                    conn.ws.end_connection(CLOSE_SERVICE_RESTART, "worker resynchronised")
                old.drop_connection(conn)
        self._state.hub.restore(books)

    async def run(self) -> None:
        await self.follower.run()


async def exit_when_orphaned(stop: Callable[[], None]) -> None:
    """A worker whose supervisor is gone (killed) stops: nothing would
    replace it, sequence for it or stop it."""
    parent = os.getppid()
    # Polled: a parent's exit sends no event a child can wait on.
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(ORPHAN_CHECK_INTERVAL)
    log.warning("the supervisor is gone; stopping")
    stop()
