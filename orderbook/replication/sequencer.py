"""The sequencer role: whichever node holds the lease turns queued publisher
batches into log entries. A node that takes the lease over rebuilds the books
from the log and continues the same epoch and sequence."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.exceptions import RedisError

from orderbook.core.errors import InvalidInput
from orderbook.core.market import NO_LIMITS, FeedLimits, Market
from orderbook.wire import codec

from .log import Fenced, RedisLog

log = logging.getLogger("orderbook.sequencer")


class Sequencer:
    def __init__(
        self,
        rlog: RedisLog,
        ttl_ms: int = 3000,
        node: str = "",
        snapshot_every: int = 1000,
        retention: int = 10_000,
        limits: FeedLimits = NO_LIMITS,
    ) -> None:
        # The same feed limits as the node that queued a batch validated it
        # against: a batch over them is dropped here too (the sequencer's
        # node's settings rule; give every node the same limits).
        self._limits = limits
        self._log = rlog
        self._ttl_ms = ttl_ms
        # A snapshot every `snapshot_every` log entries; `retention` entries
        # before the newest snapshot stay in the log for nodes that lag.
        self._snapshot_every = snapshot_every
        self._retention = retention
        self._snapshot_position = 0
        self.token = f"{node or 'node'}:{uuid.uuid4().hex}"
        self.holding = False
        # Counted for /metrics: leases taken and lost, and Redis errors met.
        self.leases_acquired = 0
        self.leases_lost = 0
        self.redis_errors = 0
        self._market: Market | None = None
        self._position = 0
        self._cursor = "0-0"
        self._renewed = 0.0

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                if not self.holding and not await self._take_over():
                    await asyncio.sleep(self._ttl_ms / 3000)
                    continue
                await self._step()
                backoff = 0.05
            except Fenced as exc:
                log.warning("lost the sequencer lease: %s", exc)
                self.holding = False
                self.leases_lost += 1
            except RedisError as exc:
                # Whether the last append landed is unknown: rebuild from the
                # log before sequencing again, never apply a batch twice.
                self.redis_errors += 1
                if self.holding:
                    self.leases_lost += 1
                self.holding = False
                log.warning("redis unavailable to the sequencer: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _take_over(self) -> bool:
        rlog = self._log
        if not await rlog.acquire(self.token, self._ttl_ms):
            return False
        self._renewed = time.monotonic()
        epoch = await rlog.epoch(candidate=time.time_ns())
        assert epoch is not None
        market = Market(epoch, self._limits)
        position = 0
        snap = await rlog.load_snapshot()
        if snap is not None:
            s_epoch, s_position, books = codec.parse_cluster_snapshot(snap)
            if s_epoch == epoch:
                market.restore(books)
                position = s_position
        self._snapshot_position = position
        # Replay the log after it: the same books, epoch and seqs as every node.
        while True:
            entries = await rlog.read(position, count=1000)
            if not entries:
                break
            for e in entries:
                _, instruments, deltas = codec.parse_log_entry(e.data)
                for inst in instruments:
                    market.define(inst)
                for delta, _ in deltas:
                    market.get(delta.symbol).follow(delta)
                position = e.position
        self._market, self._position = market, position
        self._cursor = await rlog.cursor() or "0-0"
        self.holding = True
        self.leases_acquired += 1
        log.info("sequencing epoch %d from log position %d", epoch, position)
        return True

    async def _step(self) -> None:
        rlog, market = self._log, self._market
        assert market is not None
        now = time.monotonic()
        if now - self._renewed > self._ttl_ms / 3000:
            if not await rlog.renew(self.token, self._ttl_ms):
                raise Fenced("lease renewal refused")
            self._renewed = now
        # Short enough to renew in time, and well inside the client's socket timeout.
        batch_wait = min(max(int(self._ttl_ms / 6), 10), 1000)
        for input_id, data in await rlog.read_input(self._cursor, count=100, block_ms=batch_wait):
            entries = []
            try:
                batch = codec.decode_feed(data)
                result = market.apply(batch, time.time_ns())
                payloads = [codec.delta_message(d).SerializeToString() for d in result.deltas]
                if payloads or result.new_instruments:
                    entries.append(codec.log_entry(market.epoch, result.new_instruments, payloads))
            except InvalidInput as exc:
                # Validated by the node that queued it; a batch that fails here
                # raced with another definition. Consumed, not applied.
                log.warning("dropping queued batch %s: %s", input_id, exc)
            self._position = await rlog.append(self.token, market.epoch, self._position + 1, entries, input_id)
            self._cursor = input_id
        if self._position - self._snapshot_position >= self._snapshot_every:
            data = codec.cluster_snapshot(market.epoch, self._position, market.snapshot(time.time_ns()))
            await rlog.save_snapshot(self.token, market.epoch, data, self._position - self._retention + 1)
            self._snapshot_position = self._position
