"""Locust load run for an orderbook deployment: see loadtests/README.md.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

`BookSubscriber` users each hold one WebSocket on /ws, subscribe to a few
symbols drawn from a weighted mix, keep verified books (prev_seq continuity,
checksums, heartbeat positions) and report every book message to Locust with
its latency; every stream incident is a Locust failure. `FeedPublisher` (one
user, only with --publish-rate > 0) drives its own symbols through /feed.

The WebSocket client is websocket-client: blocking sockets, which Locust's
gevent monkey-patching makes cooperative, one greenlet per user.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
import threading
import time
import urllib.request
from pathlib import Path

import gevent
import websocket
from locust import User, constant, events, task
from locust.exception import StopUser

# `loadtests` is imported as a package from the repository root, whatever
# directory Locust was started from.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from loadtests.streamcheck import (  # noqa: E402
    Endpoints,
    Pacer,
    Report,
    StreamChecker,
    StreamFailure,
    endpoints,
    parse_mix,
    pick_symbols,
)
from orderbook.client.urls import with_token  # noqa: E402
from orderbook.core.instrument import Instrument  # noqa: E402
from orderbook.feeds.simulator import MarketSimulator  # noqa: E402
from orderbook.session.backoff import Backoff  # noqa: E402
from orderbook.session.errors import code_name  # noqa: E402
from orderbook.wire.codec import (  # noqa: E402
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_PROTO,
    feed_message,
    parse_feed_reply,
    to_json,
)

log = logging.getLogger("loadtests")

REQUEST_TYPE = "WS"
CONNECT_TIMEOUT = 10.0
# Reconnection delays: full jitter up to min(cap, base * 2^attempt).
RECONNECT_BASE = 0.25
RECONNECT_CAP = 5.0
# Longest a publisher waits for the answer to one batch.
FEED_REPLY_TIMEOUT = 10.0


# ----------------------------------------------------------------------------- options


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    # On the parser itself: Locust's own add_argument (web UI flags, secrets)
    # is not available on argument groups.
    parser.add_argument(
        "--symbols",
        default="all",
        env_var="LOCUST_OB_SYMBOLS",
        help="weighted symbol mix, e.g. 'BTC-USD:3,ETH-USD:1,AAPL:1' (weight 1 if omitted), "
        "or 'all' = every symbol in GET /symbols with equal weights",
    )
    parser.add_argument(
        "--symbols-per-user",
        type=int,
        default=1,
        env_var="LOCUST_OB_SYMBOLS_PER_USER",
        help="distinct symbols each subscriber draws from the mix",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=0,
        env_var="LOCUST_OB_DEPTH",
        help="levels per side per subscription (0 = full book)",
    )
    parser.add_argument(
        "--interval-ms",
        type=int,
        default=0,
        env_var="LOCUST_OB_INTERVAL_MS",
        help="conflation interval per subscription in ms (0 = every change)",
    )
    parser.add_argument(
        "--encoding",
        default="proto",
        choices=["proto", "json"],
        env_var="LOCUST_OB_ENCODING",
        help="subprotocol: binary protobuf or protobuf's JSON mapping",
    )
    parser.add_argument(
        "--token",
        default="",
        env_var="LOCUST_OB_TOKEN",
        is_secret=True,
        help="subscriber token, if the server has one (sent as ?token=)",
    )
    parser.add_argument(
        "--origin",
        default="",
        env_var="LOCUST_OB_ORIGIN",
        help="Origin header to send (none by default, as non-browser clients)",
    )
    parser.add_argument(
        "--per-symbol",
        action="store_true",
        default=False,
        env_var="LOCUST_OB_PER_SYMBOL",
        help="one stats row per kind and symbol ('delta BTC-USD') instead of per kind",
    )
    parser.add_argument(
        "--latency-from",
        default="publish",
        choices=["publish", "event"],
        env_var="LOCUST_OB_LATENCY_FROM",
        help="delta latency from the server's send time (publish_time_ns) or the source's "
        "event time (event_time_ns, when the feed sets it)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=10.0,
        env_var="LOCUST_OB_STALL_TIMEOUT",
        help="seconds without any frame before a subscriber counts a disconnect and reconnects",
    )
    parser.add_argument(
        "--symbol-wait",
        type=float,
        default=10.0,
        env_var="LOCUST_OB_SYMBOL_WAIT",
        help="seconds after a subscriber starts during which unknown symbols are retried without a failure",
    )
    parser.add_argument(
        "--inject-checksum-fault",
        type=int,
        default=0,
        env_var="LOCUST_OB_INJECT_CHECKSUM_FAULT",
        include_in_web_ui=False,
        help="testing the failure path: corrupt the checksum of every Nth delta each subscriber receives",
    )
    # The publisher's options are read at start-up, so not offered in the web UI.
    parser.add_argument(
        "--publish-rate",
        type=float,
        default=0.0,
        env_var="LOCUST_OB_PUBLISH_RATE",
        include_in_web_ui=False,
        help="updates per second that one FeedPublisher user sends through /feed (0 = no publisher)",
    )
    parser.add_argument(
        "--publish-symbols",
        default="LOAD-A,LOAD-B",
        env_var="LOCUST_OB_PUBLISH_SYMBOLS",
        include_in_web_ui=False,
        help="symbols the publisher defines and updates (comma-separated)",
    )
    parser.add_argument(
        "--publish-interval-ms",
        type=float,
        default=50.0,
        env_var="LOCUST_OB_PUBLISH_INTERVAL_MS",
        include_in_web_ui=False,
        help="time between publisher batches",
    )
    parser.add_argument(
        "--feed-token",
        default="",
        env_var="LOCUST_OB_FEED_TOKEN",
        include_in_web_ui=False,
        is_secret=True,
        help="the server's --feed-token (required with --publish-rate)",
    )


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    options = environment.parsed_options
    if options is None:  # Locust used as a library with no options
        return
    # The publisher exists only when asked for; otherwise it would take one
    # of the -u users and fail on a server without a feed token.
    if options.publish_rate <= 0 and FeedPublisher in environment.user_classes:
        environment.user_classes.remove(FeedPublisher)
    if options.publish_rate > 0 and not options.feed_token:
        raise ValueError("--publish-rate needs --feed-token (the server's --feed-token)")
    # Fail at start-up rather than once per user (the web UI form is checked
    # again by each user as it starts).
    parse_mix(options.symbols)
    if options.symbols_per_user < 1:
        raise ValueError("--symbols-per-user must be >= 1")


# ----------------------------------------------------------------------------- shared helpers


_symbols_lock = threading.Lock()  # a gevent lock once Locust has monkey-patched
_all_symbols: dict[str, list[str]] = {}


def server_symbols(http_base: str) -> list[str]:
    """The symbols of GET /symbols, fetched once per process and host."""
    with _symbols_lock:
        cached = _all_symbols.get(http_base)
        if cached is None:
            with urllib.request.urlopen(http_base + "/symbols", timeout=CONNECT_TIMEOUT) as r:
                cached = [s["symbol"] for s in json.load(r)["symbols"]]
            if not cached:
                raise ValueError(f"{http_base}/symbols lists no symbol")
            _all_symbols[http_base] = cached
        return cached


def _node(user: User) -> Endpoints:
    if not user.host:
        raise ValueError("no host: run with --host http://HOST:PORT")
    return endpoints(user.host)


def _close_quietly(ws: websocket.WebSocket | None) -> None:
    if ws is None:
        return
    try:
        ws.close(timeout=1)
    except Exception:  # already broken: nothing to tell the peer
        with contextlib.suppress(Exception):
            ws.shutdown()


class _FailureLog:
    """Logs each failure's detail, at most `per_second` lines a second per
    process: a broken server can fail thousands of messages a second."""

    def __init__(self, per_second: int = 20) -> None:
        self.per_second = per_second
        self.window = 0
        self.logged = 0
        self.skipped = 0

    def __call__(self, name: str, failure: StreamFailure) -> None:
        window = int(time.monotonic())
        if window != self.window:
            if self.skipped:
                log.warning("%d more failures not logged", self.skipped)
            self.window, self.logged, self.skipped = window, 0, 0
        if self.logged < self.per_second:
            self.logged += 1
            log.warning("%s: %s", name, failure.detail)
        else:
            self.skipped += 1


_log_failure = _FailureLog()


def fire(environment, name: str, response_time: float, length: int, error: StreamFailure | None) -> None:
    """One row entry in Locust's statistics: a success, or a failure when
    `error` is set."""
    if error is not None:
        _log_failure(name, error)
    environment.events.request.fire(
        request_type=REQUEST_TYPE,
        name=name,
        response_time=response_time,
        response_length=length,
        exception=error,
        context={},
    )


class Disconnected(Exception):
    """The connection ended (closed, dropped, or stalled)."""


# ----------------------------------------------------------------------------- subscribers


class BookSubscriber(User):
    """One WebSocket on /ws with verified books for a few symbols."""

    wait_time = constant(0)  # the one task runs until the user is stopped

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.node = _node(self)
        mix = parse_mix(options.symbols)
        if mix is None:
            mix = [(s, 1.0) for s in server_symbols(self.node.http)]
        if options.symbols_per_user < 1:
            raise ValueError("--symbols-per-user must be >= 1")
        rng = random.Random()
        self.symbols = pick_symbols(mix, options.symbols_per_user, rng)
        self.json = options.encoding == "json"
        self.stall_timeout = options.stall_timeout
        self.checker = StreamChecker(
            self.symbols,
            depth=options.depth,
            interval_ms=options.interval_ms,
            per_symbol=options.per_symbol,
            latency_from=options.latency_from,
            symbol_wait=options.symbol_wait,
            corrupt_every=options.inject_checksum_fault,
            started=time.monotonic(),
            rng=rng,
        )
        self.backoff = Backoff(RECONNECT_BASE, RECONNECT_CAP, rng=rng)
        self.ws: websocket.WebSocket | None = None
        self.delivered = False

    def on_stop(self) -> None:
        ws, self.ws = self.ws, None
        _close_quietly(ws)
        skewed = self.checker.counts.clock_skew if hasattr(self, "checker") else 0
        if skewed:
            log.warning(
                "%d messages arrived before the server's timestamp: this machine's clock is behind "
                "the server's, and those latencies were counted as 0 ms", skewed,
            )  # fmt: skip

    @task
    def stream(self) -> None:
        """Connect, subscribe, read until the connection ends; again after a
        jittered backoff, resuming the verified books."""
        while True:
            ws = self._connect()
            if ws is not None:
                self.ws = ws
                self.delivered = False
                try:
                    self._session(ws)
                except Disconnected as exc:
                    self._fire("disconnect", 0.0, 0, StreamFailure("disconnected", str(exc)))
                finally:
                    self.ws = None
                    _close_quietly(ws)
                # A connection that carried book data starts the delays over.
                if self.delivered:
                    self.backoff.reset()
            gevent.sleep(self.backoff.next_delay())

    def _connect(self) -> websocket.WebSocket | None:
        options = self.environment.parsed_options
        url = with_token(self.node.ws, options.token or None)
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                url,
                timeout=CONNECT_TIMEOUT,
                subprotocols=[SUBPROTOCOL_JSON if self.json else SUBPROTOCOL_PROTO],
                origin=options.origin or None,
                skip_utf8_validation=True,  # protobuf's JSON encoder writes valid UTF-8
            )
        except (websocket.WebSocketException, OSError) as exc:
            status = getattr(exc, "status_code", None)
            what = f"HTTP {status}" if status else type(exc).__name__
            self._fire("connect", _elapsed_ms(started), 0, StreamFailure(f"connect failed: {what}", str(exc)))
            return None
        self._fire("connect", _elapsed_ms(started), 0, None)
        return ws

    def _session(self, ws: websocket.WebSocket) -> None:
        """Read frames until the connection ends: always by Disconnected.
        Sets `delivered` once book data arrives."""
        checker = self.checker
        self._send(ws, checker.start_connection(time.monotonic()))
        last_frame = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                wait = last_frame + self.stall_timeout - now
                if wait <= 0:
                    raise Disconnected(f"stalled: nothing received for {self.stall_timeout:g} s")
                due = checker.next_due()
                if due is not None:
                    wait = min(wait, due - now)
                ws.settimeout(max(wait, 0.01))
                try:
                    opcode, data = ws.recv_data()
                except websocket.WebSocketTimeoutException:
                    self._send(ws, checker.due(time.monotonic()))
                    continue
                recv_ns = time.time_ns()
                last_frame = time.monotonic()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    raise Disconnected(f"closed by the server ({_close_code(data)})")
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    data = data.decode("utf-8", "replace")
                elif opcode != websocket.ABNF.OPCODE_BINARY:
                    continue
                reports, out = checker.handle(data, recv_ns, last_frame)
                for r in reports:
                    self._report(r)
                    if r.error is None:
                        self.delivered = True
                if out:
                    self._send(ws, out)
                if checker.next_due() is not None and checker.next_due() <= last_frame:
                    self._send(ws, checker.due(last_frame))
        except (websocket.WebSocketConnectionClosedException, OSError, websocket.WebSocketException) as exc:
            raise Disconnected(f"{type(exc).__name__}: {exc}") from None

    def _send(self, ws: websocket.WebSocket, messages) -> None:
        for msg in messages:
            if self.json:
                ws.send(to_json(msg))
            else:
                ws.send_binary(msg.SerializeToString())

    def _report(self, r: Report) -> None:
        self._fire(r.name, r.response_time, r.length, r.error)

    def _fire(self, name: str, response_time: float, length: int, error: StreamFailure | None) -> None:
        fire(self.environment, name, response_time, length, error)


# ----------------------------------------------------------------------------- publisher


class FeedPublisher(User):
    """Publishes generated book updates for its own symbols through /feed at
    --publish-rate updates/s, one batch every --publish-interval-ms, each
    acknowledged before the next (the server's back-pressure)."""

    fixed_count = 1  # one publisher, spawned before the subscribers
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.node = _node(self)
        if options.publish_rate <= 0 or not options.feed_token:
            raise StopUser()
        symbols = [s.strip() for s in options.publish_symbols.split(",") if s.strip()]
        if not symbols:
            raise ValueError("--publish-symbols names no symbol")
        instruments = [Instrument(s, price_scale=2, size_scale=4, venue="locust") for s in symbols]
        self.simulator = MarketSimulator(random.Random(), instruments)
        self.rate = options.publish_rate
        self.interval = max(options.publish_interval_ms, 1.0) / 1000.0
        self.token = options.feed_token
        self.backoff = Backoff(RECONNECT_BASE, RECONNECT_CAP)
        self.ws: websocket.WebSocket | None = None
        self.updates = 0
        self.started = time.monotonic()

    def on_stop(self) -> None:
        ws, self.ws = self.ws, None
        _close_quietly(ws)
        seconds = time.monotonic() - getattr(self, "started", time.monotonic())
        if seconds > 0 and getattr(self, "updates", 0):
            log.info("publisher: %d updates in %.1f s (%.1f/s)", self.updates, seconds, self.updates / seconds)

    @task
    def publish(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                ws = websocket.create_connection(
                    self.node.feed, timeout=CONNECT_TIMEOUT, header=[f"Authorization: Bearer {self.token}"]
                )
            except (websocket.WebSocketException, OSError) as exc:
                status = getattr(exc, "status_code", None)
                what = f"HTTP {status}" if status else type(exc).__name__
                self._fire("feed connect", _elapsed_ms(started), 0, StreamFailure(f"connect failed: {what}", str(exc)))
                gevent.sleep(self.backoff.next_delay())
                continue
            self._fire("feed connect", _elapsed_ms(started), 0, None)
            self.ws = ws
            try:
                self._session(ws)
            except Disconnected as exc:
                self._fire("feed disconnect", 0.0, 0, StreamFailure("disconnected", str(exc)))
            finally:
                self.ws = None
                _close_quietly(ws)
            gevent.sleep(self.backoff.next_delay())

    def _session(self, ws: websocket.WebSocket) -> None:
        ws.settimeout(FEED_REPLY_TIMEOUT)
        # (Re)define the symbols and set every book to the simulator's own,
        # so the books stay coherent across reconnections.
        if not self._batch(ws, self.simulator.initial_batch(time.time_ns()), 0):
            return
        self.backoff.reset()
        pacer = Pacer(self.rate, time.monotonic())
        tick = time.monotonic()
        while True:
            n = pacer.due(time.monotonic())
            if n:
                if not self._batch(ws, self.simulator.next_batch(time.time_ns(), n), n):
                    return
                pacer.done(n)
            tick += self.interval
            gevent.sleep(max(0.0, tick - time.monotonic()))

    def _batch(self, ws: websocket.WebSocket, batch, n: int) -> bool:
        """Send one batch and wait for its reply; False if it was refused."""
        payload = feed_message(batch).SerializeToString()
        started = time.perf_counter()
        try:
            ws.send_binary(payload)
            while True:
                opcode, data = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    raise Disconnected(f"closed by the server ({_close_code(data)})")
                if opcode == websocket.ABNF.OPCODE_BINARY:
                    break
        except websocket.WebSocketTimeoutException:
            raise Disconnected(f"no reply within {FEED_REPLY_TIMEOUT:g} s") from None
        except (websocket.WebSocketException, OSError) as exc:
            raise Disconnected(f"{type(exc).__name__}: {exc}") from None
        elapsed = _elapsed_ms(started)
        reply = parse_feed_reply(data)
        if reply.WhichOneof("kind") != "ack" or reply.ack.batch_id != batch.batch_id:
            err = reply.error
            code = code_name(err.code)
            failure = StreamFailure(f"batch refused: {code}", f"{code} ({err.symbol}): {err.message}")
            self._fire("publish", elapsed, len(payload), failure)
            return False
        self.updates += n
        self._fire("publish", elapsed, len(payload), None)
        return True

    def _fire(self, name: str, response_time: float, length: int, error: StreamFailure | None) -> None:
        fire(self.environment, name, response_time, length, error)


# ----------------------------------------------------------------------------- small helpers


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _close_code(payload: bytes) -> str:
    if len(payload) >= 2:
        code = int.from_bytes(payload[:2], "big")
        reason = payload[2:].decode("utf-8", "replace")
        return f"{code} {reason}".strip()
    return "no code"
