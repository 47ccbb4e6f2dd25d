"""The Sanic application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sanic import Sanic
from sanic.response import HTTPResponse

from . import background, cors, handshake_limits, http_api, sanic_seam, ui
from .accept_pacing import AcceptPacer
from .cluster import Cluster
from .connection import Connection
from .drain import CLOSE_CODE as DRAIN_CLOSE_CODE
from .drain import CLOSE_REASON as DRAIN_CLOSE_REASON
from .drain import DrainSchedule
from .feed_ws import feed_endpoint
from .hub import Hub
from .local_node import LocalNode, exit_when_orphaned
from .metrics import NodeMetrics, check_settings, metrics_endpoint
from .settings import Settings
from .state import ServerState
from .subscriber_socket import CLOSING_TIMEOUT, SubscriberSocket
from .subscriber_ws import subscriber_endpoint

log = logging.getLogger("orderbook.server")


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_coro(), exc_info=task.exception())


# The protocol class to serve the app with (app.run / create_server(protocol=)).
PROTOCOL = sanic_seam.PacedProtocol


def create_app(settings: Settings, name: str = "orderbook") -> Sanic:
    sanic_seam.check()  # an incompatible Sanic fails here, by name
    # Sanic's loggers get no handlers of their own: their records propagate
    # to the one handler the CLI puts on the root logger (orderbook/logs.py),
    # so each line is written once, in the chosen format.
    app = Sanic(name, configure_logging=False)
    cfg = app.config
    # (Sanic annotates these int; it takes seconds as float.)
    cfg.WEBSOCKET_PING_INTERVAL = settings.ping_interval  # type: ignore[assignment]
    cfg.WEBSOCKET_PING_TIMEOUT = settings.ping_timeout  # type: ignore[assignment]
    cfg.WEBSOCKET_MAX_SIZE = max(settings.max_message_bytes, settings.max_feed_message_bytes)
    cfg.GRACEFUL_SHUTDOWN_TIMEOUT = 2.0
    cfg.CORS = False
    app.enable_websocket()
    # Run with protocol=PROTOCOL so new connections are started a few per turn.
    app.ctx.accept_pacer = AcceptPacer(settings.accepts_per_turn)

    app.add_route(subscriber_endpoint, "/ws", methods=["GET"])
    app.add_route(feed_endpoint, "/feed", methods=["GET"])
    # Prometheus metrics, this app's own registry; on their own port with
    # --metrics-port, and then not here (GET /metrics answers 404).
    check_settings(settings)
    app.ctx.metrics = NodeMetrics(lambda: getattr(app.ctx, "state", None), settings.metrics_per_symbol)
    if not settings.metrics_port:
        app.add_route(metrics_endpoint, "/metrics", methods=["GET"])
    http_routes: dict[str, Callable[..., Coroutine[Any, Any, HTTPResponse | None]]] = {
        "/healthz": http_api.healthz,
        "/readyz": http_api.readyz,
        "/symbols": http_api.symbols,
        "/book/<symbol:str>": http_api.book,
    }
    for uri, handler in http_routes.items():
        app.add_route(handler, uri, methods=["GET"], ctx_cors=True)
    cors.install(app, settings.cors_origins, http_routes)
    # `/` and the catch-all `/<path>` of the page's files: the router prefers
    # the more specific routes above (tests/test_ui_and_cors.py checks it).
    ui.install(app, settings.ui_dir)

    @app.before_server_start
    async def start(app: Sanic) -> None:
        loop = asyncio.get_running_loop()
        metrics: NodeMetrics = app.ctx.metrics
        if settings.metrics_port:
            await metrics.serve(settings.host, settings.metrics_port)  # a port taken fails the start here
        cluster = None
        if settings.redis_url:
            cluster = await Cluster.connect(settings, loop)
            epoch = cluster.epoch
        else:
            epoch = settings.epoch if settings.epoch is not None else time.time_ns()
        hub = Hub(settings, epoch, loop, counts=metrics.counts)
        state = ServerState(settings, hub, handshake_limits.Gate(settings), cluster=cluster)
        app.ctx.state = state
        hub = state.hub
        tick = max(settings.symbol_heartbeat / 4, 0.01)
        # A cluster may replace the hub when its epoch changes: look it up each time.
        current = lambda: state.hub  # noqa: E731
        # A worker of `serve --workers N` without Redis follows the supervisor's sequencer.
        local = None
        if settings.sequencer_socket is not None and cluster is None:
            local = LocalNode(settings, settings.sequencer_socket, state)
        state.local = local
        stale = lambda: (cluster is not None and cluster.stale) or (local is not None and local.stale)  # noqa: E731
        duties = [
            background.heartbeats(current, tick, stale),
            background.lag_sweeper(current),
            metrics.watch_loop_lag(),
        ]
        if settings.ping_interval and settings.ping_interval > 0:
            duties.append(background.keepalive(current, settings.ping_interval, settings.ping_timeout))
        if settings.worker is not None:
            duties.append(exit_when_orphaned(lambda: app.stop(terminate=False)))
        if cluster is not None:
            duties.append(cluster.run(state))
        elif local is not None:
            duties.append(local.run())
        elif settings.replay is not None:
            duties.append(background.replay(hub, settings.replay))
        elif settings.simulator:
            duties.append(background.simulate(hub, settings.simulator_rate, settings.simulator_seed))
        for coro in duties:
            task = loop.create_task(coro)
            task.add_done_callback(_report_crash)
            state.tasks.append(task)
        if settings.ui_dir is not None and not (settings.ui_dir / ui.INDEX).is_file():
            log.info("no trading page in %s: GET / answers how to build it", settings.ui_dir)
        feed = "replay" if settings.replay else "simulator" if settings.simulator and cluster is None else "feed only"
        if local is not None:
            feed = "following the local sequencer"
        log.info("epoch %d; %s", epoch, feed)

    @app.after_server_start
    async def ready(app: Sanic) -> None:
        app.ctx.state.ready = True

    @app.before_server_stop
    async def stop(app: Sanic) -> None:
        state: ServerState = app.ctx.state
        state.ready = False
        # Subscribers are not Sanic's connections: say goodbye to each.
        for conn in list(state.hub.connections):
            if conn.ws is not None:
                conn.ws.end_connection(1001, "server shutting down")
        for t in state.tasks:
            t.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
        state.tasks.clear()
        await app.ctx.metrics.close()
        if state.cluster is not None:
            await state.cluster.close()

    return app


# ------------------------------------------------------------------ graceful drain


def drain_on_signals(app: Sanic) -> None:
    """SIGTERM or SIGINT drains the node, then stops it; a second one stops it
    at once. For `orderbook serve` (app.run), whose own handlers would stop at
    once: these replace them once the server has started. Not for a server
    on another program's loop (the tests'), whose signals are its own."""

    @app.after_server_start
    async def handle_signals(app: Sanic) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):  # a loop without signal handlers
                loop.add_signal_handler(sig, _on_signal, app, sig)


def _on_signal(app: Sanic, sig: signal.Signals) -> None:
    state: ServerState = app.ctx.state

    def stop() -> None:
        app.stop(terminate=False)

    if state.draining:
        log.info("%s while draining: stopping now", sig.name)
        stop()
    else:
        log.info("%s: draining", sig.name)
        begin_drain(app, then=stop)


def begin_drain(app: Sanic, then: Callable[[], None] | None = None) -> asyncio.Task[None]:
    """Drain: from now on /readyz answers 503 "draining" and WebSocket
    upgrades are refused (503); the subscribers are closed with 1001
    "draining: reconnect" spread over --drain-seconds (orderbook/server/drain.py);
    once they are gone, `then()` (the CLI stops the server). Publishers stay
    until then: what they send still reaches the subscribers not closed yet."""
    state: ServerState = app.ctx.state
    state.draining = True
    task = asyncio.get_running_loop().create_task(_drain(state, then))
    task.add_done_callback(_report_crash)
    state.tasks.append(task)  # a stop meanwhile (a second signal) cancels it
    return task


async def _drain(state: ServerState, then: Callable[[], None] | None) -> None:
    try:
        await _close_subscribers(state)
    except Exception:
        # A node told to stop must stop, whatever went wrong on the way.
        log.exception("draining failed; stopping now")
    if then is not None:  # not when cancelled: the server is stopping already
        then()


async def _close_subscribers(state: ServerState) -> None:
    loop = asyncio.get_running_loop()
    window = state.settings.drain_seconds
    schedule = DrainSchedule(list(state.hub.connections), window, random.Random())
    log.info("draining: closing %d subscribers over %g s, then stopping", len(schedule), window)
    start = loop.time()
    closing: set[asyncio.Future[None]] = set()
    while (at := schedule.next_at()) is not None:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        await _close_all(schedule.due(loop.time() - start), closing)
    # Any whose upgrade was under way when the drain began.
    await _close_all(list(state.hub.connections), closing)
    # Wait for the closing handshakes (each socket gives up on its own after
    # CLOSING_TIMEOUT): a socket the exiting process leaves with unread bytes
    # is reset, and its client could lose the close frame and the last deltas.
    pending = [f for f in closing if not f.done()]
    if pending:
        await asyncio.wait(pending, timeout=CLOSING_TIMEOUT + 1.0)
    log.info("drained in %.1f s (%d subscribers left)", loop.time() - start, len(state.hub.connections))


# Closes per loop turn when many are due together (--drain-seconds 0): the
# subscribers still streaming and the publishers keep their turns.
CLOSES_PER_TURN = 256


async def _close_all(conns: list[Connection], closing: set[asyncio.Future[None]]) -> None:
    for i, conn in enumerate(conns):
        if i and i % CLOSES_PER_TURN == 0:
            await asyncio.sleep(0)
        ws = conn.ws
        if ws is not None:
            ws.end_connection(DRAIN_CLOSE_CODE, DRAIN_CLOSE_REASON)
            if isinstance(ws, SubscriberSocket):
                closing.add(ws.done)  # set once the connection is gone
