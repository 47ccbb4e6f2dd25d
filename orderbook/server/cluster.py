"""Cluster mode: this node follows the shared log in Redis and serves it, and
stands by to sequence (it does whenever it holds the lease)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import redis.asyncio as aioredis

from orderbook.core.instrument import Instrument
from orderbook.replication.follower import LogFollower
from orderbook.replication.log import Keys, RedisLog
from orderbook.replication.sequencer import Sequencer

from .hub import Hub
from .settings import Settings

log = logging.getLogger("orderbook.cluster")

CLOSE_SERVICE_RESTART = 1012


class HoldsHub(Protocol):
    """The node state whose hub a new epoch replaces (orderbook/server/state.py)."""

    hub: Hub


class Cluster:
    def __init__(self, client: aioredis.Redis, rlog: RedisLog, epoch: int, settings: Settings) -> None:
        self._client = client
        self.log = rlog
        self.epoch = epoch
        self._settings = settings
        self.follower: LogFollower | None = None
        # Definitions this node queued, so that updates right behind them
        # validate before the definitions return through the log.
        self.queued_instruments: dict[str, Instrument] = {}
        # For /metrics: new epochs followed, and what the followers this one
        # replaced counted (so the totals never go back).
        self.epoch_changes = 0
        self._past_redis_errors = 0
        self._past_reconnects = 0
        self.sequencer = Sequencer(
            rlog,
            settings.lease_ttl_ms,
            node=f"{settings.host}:{settings.port}",
            snapshot_every=settings.snapshot_every,
            retention=settings.log_retention,
            limits=settings.feed_limits,
        )

    @classmethod
    async def connect(cls, settings: Settings, loop: asyncio.AbstractEventLoop) -> Cluster:
        if settings.redis_url is None:
            raise ValueError("a cluster node needs a Redis URL")
        client = aioredis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        rlog = RedisLog(client, Keys(settings.redis_prefix))
        epoch = await rlog.epoch(candidate=time.time_ns())
        assert epoch is not None
        return cls(client, rlog, epoch, settings)

    @property
    def ready(self) -> bool:
        f = self.follower
        return f is not None and f.caught_up and not f.stale

    @property
    def stale(self) -> bool:
        return self.follower is not None and self.follower.stale

    @property
    def follower_redis_errors(self) -> int:
        f = self.follower
        return self._past_redis_errors + (f.redis_errors if f else 0)

    @property
    def redis_reconnects(self) -> int:
        f = self.follower
        return self._past_reconnects + (f.reconnects if f else 0)

    def status(self) -> dict:
        f = self.follower
        return {
            "role": "sequencer" if self.sequencer.holding else "replica",
            "log_position": f.position if f else 0,
            "caught_up": bool(f and f.caught_up),
            "stale": bool(f and f.stale),
            "lag_ms": round(f.lag_ms, 3) if f else None,
        }

    async def run(self, state: HoldsHub) -> None:
        seq_task = asyncio.ensure_future(self.sequencer.run())
        try:
            while True:
                hub: Hub = state.hub
                if self.follower is not None:
                    self._past_redis_errors += self.follower.redis_errors
                    self._past_reconnects += self.follower.reconnects
                self.follower = LogFollower(self.log, hub.epoch, hub.apply_log, hub.restore)
                await self.follower.run()
                # The log restarted under us (Redis emptied, a new epoch) or
                # moved on past what this node read: never mix sequences. Drop every subscriber so each comes back
                # with its old epoch and gets a fresh snapshot of the new one.
                epoch = await self._new_epoch()
                log.warning("switching to epoch %d; closing %d subscribers", epoch, len(hub.connections))
                old = hub
                self.queued_instruments.clear()
                state.hub = Hub(self._settings, epoch, asyncio.get_running_loop(), counts=old.counts)
                self.epoch = epoch
                self.epoch_changes += 1
                for conn in list(old.connections):
                    if conn.ws is not None:
                        conn.ws.end_connection(CLOSE_SERVICE_RESTART, "cluster epoch changed")
                    old.drop_connection(conn)
        finally:
            seq_task.cancel()
            await asyncio.gather(seq_task, return_exceptions=True)

    async def _new_epoch(self) -> int:
        delay = 0.05
        while True:
            try:
                epoch = await self.log.epoch(candidate=time.time_ns())
                assert epoch is not None
                return epoch
            except Exception as exc:
                self._past_redis_errors += 1
                log.warning("waiting for redis: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        # Hand the lease over at once on a clean stop rather than after it lapses.
        try:
            await self.log.release(self.sequencer.token)
        except Exception as exc:
            log.warning("could not release the lease: %s", exc)
        await self._client.aclose()
