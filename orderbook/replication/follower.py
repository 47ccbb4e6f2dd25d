"""The serving role, on every node: follow the cluster's log and hand each
entry to the hub, which forwards the exact delta bytes to subscribers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from redis.exceptions import RedisError

from orderbook.core.errors import OrderbookError
from orderbook.core.events import Delta, Snapshot
from orderbook.core.instrument import Instrument
from orderbook.wire import codec

from .log import RedisLog

log = logging.getLogger("orderbook.follower")

ApplyEntry = Callable[[Iterable[Instrument], list[tuple[Delta, bytes]]], object]
Restore = Callable[[list[Snapshot]], object]


class LogFollower:
    """Starts from the newest cluster snapshot (if any), then applies the log
    after it in order.

    `caught_up` turns true once the follower has reached the log's head as it
    was when it started; `stale` while Redis cannot be read. `reset` is set
    (and `run` returns) when the log can no longer be followed: a new epoch,
    Redis emptied, or entries trimmed away before this node read them.
    """

    def __init__(self, rlog: RedisLog, epoch: int, apply: ApplyEntry, restore: Restore) -> None:
        self._log = rlog
        self.epoch = epoch
        self._apply = apply
        self._restore = restore
        self._started = False
        self.position = 0
        self.caught_up = False
        self.stale = False
        self.reset = asyncio.Event()
        # Replica lag: how long after the sequencer stamped it this node
        # applied the newest change (ms), measured on the last entry applied.
        self.lag_ms = 0.0
        # Counted for /metrics: failed reads, and returns of Redis after them.
        self.redis_errors = 0
        self.reconnects = 0

    async def run(self) -> None:
        backoff = 0.05
        target: int | None = None
        while True:
            try:
                if not self._started:
                    await self._load_snapshot()
                    self._started = True
                if target is None:
                    target = await self._log.position()
                entries = await self._log.read(self.position, count=1000, block_ms=500)
                if self.stale:
                    await self._log.drop_idle_connections()
                    log.info("redis is back")
                    self.reconnects += 1
                self.stale = False
                backoff = 0.05
            except RedisError as exc:
                self.redis_errors += 1
                if not self.stale:
                    log.warning("redis unavailable; serving the last books as stale: %s", exc)
                self.stale = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not entries and await self._reset_upstream():
                log.warning("the cluster log restarted (new epoch or emptied Redis)")
                self.reset.set()
                return
            if entries and entries[0].position != self.position + 1:
                log.warning(
                    "log entries %d..%d were trimmed before this node read them",
                    self.position + 1,
                    entries[0].position - 1,
                )
                self.reset.set()
                return
            for e in entries:
                epoch, instruments, deltas = codec.parse_log_entry(e.data)
                if epoch != self.epoch:
                    log.warning("cluster epoch changed from %d to %d", self.epoch, epoch)
                    self.reset.set()
                    return
                try:
                    self._apply(instruments, deltas)
                except OrderbookError:
                    # The log does not continue this node's books (for example
                    # Redis came back with an older copy): start over from it.
                    log.exception("log entry %d does not apply; resetting", e.position)
                    self.reset.set()
                    return
                self.position = e.position
                if deltas:
                    self.lag_ms = (time.time_ns() - deltas[-1][0].publish_time_ns) / 1e6
            if not self.caught_up and self.position >= target:
                self.caught_up = True

    async def _load_snapshot(self) -> None:
        data = await self._log.load_snapshot()
        if data is None:
            return
        epoch, position, books = codec.parse_cluster_snapshot(data)
        if epoch == self.epoch and position > self.position:
            self._restore(books)
            self.position = position

    async def _reset_upstream(self) -> bool:
        """True if the log behind us is no longer the one we followed."""
        try:
            epoch = await self._log.epoch()
            position = await self._log.position()
        except RedisError:
            return False
        return epoch != self.epoch or position < self.position
