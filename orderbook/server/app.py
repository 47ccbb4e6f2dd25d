"""The Sanic application factory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sanic import Sanic
from sanic.response import HTTPResponse

from . import background, cors, handshake_limits, http_api, sanic_seam, ui
from .accept_pacing import AcceptPacer
from .cluster import Cluster
from .feed_ws import feed_endpoint
from .hub import Hub
from .settings import Settings
from .state import ServerState
from .subscriber_ws import subscriber_endpoint

log = logging.getLogger("orderbook.server")


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_coro(), exc_info=task.exception())


# The protocol class to serve the app with (app.run / create_server(protocol=)).
PROTOCOL = sanic_seam.PacedProtocol


def create_app(settings: Settings, name: str = "orderbook") -> Sanic:
    sanic_seam.check()  # an incompatible Sanic fails here, by name
    app = Sanic(name)
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
        cluster = None
        if settings.redis_url:
            cluster = await Cluster.connect(settings, loop)
            epoch = cluster.epoch
        else:
            epoch = settings.epoch if settings.epoch is not None else time.time_ns()
        state = ServerState(settings, Hub(settings, epoch, loop), handshake_limits.Gate(settings), cluster=cluster)
        app.ctx.state = state
        hub = state.hub
        tick = max(settings.symbol_heartbeat / 4, 0.01)
        # A cluster may replace the hub when its epoch changes: look it up each time.
        current = lambda: state.hub  # noqa: E731
        stale = lambda: cluster is not None and cluster.stale  # noqa: E731
        duties = [background.heartbeats(current, tick, stale), background.lag_sweeper(current)]
        if settings.ping_interval and settings.ping_interval > 0:
            duties.append(background.keepalive(current, settings.ping_interval, settings.ping_timeout))
        if cluster is not None:
            duties.append(cluster.run(state))
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
        if state.cluster is not None:
            await state.cluster.close()

    return app
