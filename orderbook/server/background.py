"""The server's periodic duties and the built-in simulator feed."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from orderbook.core.errors import InvalidInput
from orderbook.core.events import BatchResult, FeedBatch
from orderbook.core.market import REPLAY, SIMULATOR, Market
from orderbook.feeds.simulator import MarketSimulator
from orderbook.replay.player import HubSink, ReplayPlan, play

from .hub import Hub
from .subscriber_socket import CLOSE_INTERNAL, SubscriberSocket
from .subscriber_ws import CLOSE_TRY_AGAIN_LATER, close

log = logging.getLogger("orderbook.background")

SWEEP_INTERVAL = 0.1
SIMULATOR_TICK = 0.05


async def heartbeats(current: Callable[[], Hub], interval: float, stale: Callable[[], bool]) -> None:
    while True:
        await asyncio.sleep(interval)
        current().heartbeat(stale())


async def keepalive(current: Callable[[], Hub], interval: float, timeout: float) -> None:
    """One duty pings every subscriber every `interval` seconds and closes
    those that leave a ping unanswered for `timeout` (1011, as RFC 6455
    clients expect): no timer or task per connection."""
    tick = max(min(interval, timeout) / 4, 0.05)
    next_ping: dict[object, float] = {}
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(tick)
        now = loop.time()
        seen = set()
        for conn in list(current().connections):
            ws = conn.ws
            if not isinstance(ws, SubscriberSocket):
                continue
            seen.add(ws)
            if ws.ping_sent_at is not None:
                if now - ws.ping_sent_at > timeout:
                    log.info("closing %s: no answer to a ping for %.0f s", conn.peer, timeout)
                    ws.fail(CLOSE_INTERNAL, "keepalive ping timeout")
                continue
            due = next_ping.setdefault(ws, now + interval)
            if now >= due:
                ws.ping(now)
                next_ping[ws] = now + interval
        for gone in [w for w in next_ping if w not in seen]:
            del next_ping[gone]


async def lag_sweeper(current: Callable[[], Hub]) -> None:
    closing: set[asyncio.Task[None]] = set()  # referenced until done, so none is collected mid-close
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        hub = current()
        for conn in hub.sweep_lagging():
            hub.counts.slow_closed += 1
            log.warning("closing slow client %s: over its buffer limit too long", conn.peer)
            if conn.ws is not None:
                task = asyncio.ensure_future(close(conn.ws, conn, CLOSE_TRY_AGAIN_LATER, "client too slow"))
                closing.add(task)
                task.add_done_callback(closing.discard)
            hub.drop_connection(conn)


class Sequences(Protocol):
    """What the simulator and a replay feed: a node's hub, or the sequencer
    of `serve --workers N` (orderbook/replication/local.py)."""

    @property
    def market(self) -> Market: ...

    def ingest(self, batch: FeedBatch, source: str = ..., takeover: bool = ...) -> BatchResult: ...


async def simulate(hub: Sequences, rate: float, seed: int | None) -> None:
    """Feed the hub from the built-in simulator at about `rate` updates/s.
    Symbols a publisher took over (--allow-takeover) are left alone."""
    sim = MarketSimulator(random.Random(seed))
    market = hub.market
    hub.ingest(market.keep_own(sim.initial_batch(time.time_ns()), SIMULATOR), SIMULATOR)
    carry = 0.0
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(SIMULATOR_TICK)
        now = loop.time()
        carry += rate * (now - last)
        last = now
        n = int(carry)
        if n:
            carry -= n
            hub.ingest(market.keep_own(sim.next_batch(time.time_ns(), n), SIMULATOR), SIMULATOR)


async def replay(hub: Sequences, plan: ReplayPlan) -> None:
    """Feed the hub from a recording (serve --replay); a bad file stops the
    replay, never the server."""
    log.info(
        "replaying %s (%s) at %s%s",
        plan.source.name,
        plan.source.format,
        "full speed" if not plan.speed else f"{plan.speed}x",
        ", looping" if plan.loop else "",
    )
    market = hub.market

    def ingest(batch):
        # Symbols a publisher took over (--allow-takeover) are left alone.
        return hub.ingest(market.keep_own(batch, REPLAY), REPLAY)

    try:
        stats = await play(
            plan.source.records, HubSink(ingest), speed=plan.speed, loop=plan.loop, start=plan.start, end=plan.end
        )
    except InvalidInput as exc:
        log.error("replay of %s stopped: %s", plan.source.name, exc)
        return
    log.info("replay of %s done: %d records, %d updates", plan.source.name, stats.records, stats.updates)
