"""What a load-test subscriber does with the frames it receives, without I/O.

`StreamChecker` is a shell around the subscriber session
(orderbook/session/), which keeps one `BookFollower` per symbol across
reconnections, verifies every message and decides what to send back
(in-band resynchronisation, subscription retries). The checker turns what
the session reports into `Report`s, one Locust request event each. It holds
no socket and never sleeps or reads a clock: the caller passes the times in.
That keeps gevent out of it, so the verification rules are tested in plain
pytest, and the Locust users stay thin.

Each incident is reported once, as a `StreamFailure` on the row of the
message that revealed it: a gap, a duplicate, a checksum mismatch or an epoch
change on a delta or heartbeat; a snapshot the subscriber did not ask for (the
server resynchronised it) or one that answers a refused resume; an Error
frame. The snapshot that the subscriber then asks for itself is a success.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from orderbook.core.errors import OrderbookError
from orderbook.core.follower import BookFollower
from orderbook.session.errors import code_name
from orderbook.session.outputs import (
    BookUpdated,
    ErrorOutcome,
    ErrorReceived,
    HeartbeatChecked,
    Output,
    Resync,
    RetrySubscribe,
    Send,
    Started,
)
from orderbook.session.policy import RefusalPolicy
from orderbook.session.session import SubscriberSession
from orderbook.session.states import Phase, ResyncReason
from orderbook.wire.codec import (
    ClientMessage,
    ErrorCode,
    MalformedMessage,
    ServerMessage,
    parse_server_message,
)

# Retries of a subscription the server refused on the same connection: every
# refusal is retried (and each reported, but for a symbol not defined yet).
RETRY_BASE = 0.5
RETRY_CAP = 10.0
RETRY_MIN = 0.1  # full jitter may draw ~0; never retry in a tight loop
_REFUSALS = RefusalPolicy(give_up=frozenset(), retry_base=RETRY_BASE, retry_cap=RETRY_CAP, retry_floor=RETRY_MIN)


class StreamFailure(Exception):
    """A Locust failure. The message names the kind of incident and the
    symbol, never seq numbers, so Locust's failures table groups like
    incidents; `detail` keeps the specifics for the log."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


@dataclass(frozen=True, slots=True)
class Report:
    """One Locust request event: `response_time` in milliseconds, `length`
    in bytes of the frame, `error` None for a success."""

    name: str
    response_time: float
    length: int
    error: StreamFailure | None = None


# ----------------------------------------------------------------------------- configuration


def parse_mix(text: str) -> list[tuple[str, float]] | None:
    """`"BTC-USD:3,ETH-USD:1,AAPL"` -> [(symbol, weight)], weight 1 when
    omitted; `"all"` -> None (every symbol the server lists, equal weights).

    Only a number after the last ':' is a weight, so symbols that contain
    ':' themselves still work when given a weight."""
    text = text.strip()
    if text.lower() == "all":
        return None
    mix: list[tuple[str, float]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        symbol, weight = item, 1.0
        head, sep, tail = item.rpartition(":")
        if sep:
            try:
                weight = float(tail)
            except ValueError:
                pass
            else:
                symbol = head.strip()
        if not symbol:
            raise ValueError(f"empty symbol in {text!r}")
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"weight of {symbol} must be a positive number, got {tail!r}")
        if any(s == symbol for s, _ in mix):
            raise ValueError(f"{symbol} appears twice in {text!r}")
        mix.append((symbol, weight))
    if not mix:
        raise ValueError(f"no symbol in {text!r}")
    return mix


def pick_symbols(mix: Sequence[tuple[str, float]], count: int, rng: random.Random) -> tuple[str, ...]:
    """`count` distinct symbols drawn by weight without replacement (all of
    them if `count` is at least their number)."""
    pool = list(mix)
    chosen: list[str] = []
    while pool and len(chosen) < count:
        total = sum(w for _, w in pool)
        x = rng.uniform(0.0, total)
        for i, (symbol, weight) in enumerate(pool):
            x -= weight
            if x <= 0 or i == len(pool) - 1:
                chosen.append(symbol)
                del pool[i]
                break
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class Endpoints:
    http: str  # base for GET /symbols
    ws: str  # the subscriber endpoint
    feed: str  # the publisher endpoint


def endpoints(host: str) -> Endpoints:
    """Locust's --host (http(s):// or ws(s)://, optionally with a path prefix
    for a node behind a proxy) -> the node's URLs."""
    parts = urlsplit(host.strip())
    scheme = parts.scheme.lower()
    if scheme in ("http", "ws"):
        http_scheme, ws_scheme = "http", "ws"
    elif scheme in ("https", "wss"):
        http_scheme, ws_scheme = "https", "wss"
    else:
        raise ValueError(f"--host must be http(s)://HOST:PORT (or ws(s)://), got {host!r}")
    if not parts.netloc:
        raise ValueError(f"--host has no host name: {host!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/ws"):  # a full subscriber URL was given
        path = path[: -len("/ws")]
    http = urlunsplit((http_scheme, parts.netloc, path, "", ""))
    ws = urlunsplit((ws_scheme, parts.netloc, path + "/ws", "", ""))
    feed = urlunsplit((ws_scheme, parts.netloc, path + "/feed", "", ""))
    return Endpoints(http, ws, feed)


# ----------------------------------------------------------------------------- the checker


@dataclass(slots=True)
class CheckerCounts:
    """Totals since the checker was created (for a summary in the log)."""

    deltas: int = 0
    snapshots: int = 0
    heartbeats: int = 0
    resumes: int = 0
    failures: int = 0
    clock_skew: int = 0  # latencies that came out negative (clocks apart) and were clamped to 0


@dataclass(slots=True)
class StreamChecker:
    """One subscriber's books and subscriptions; see the module docstring.

    Call `start_connection` after each successful connect and send what it
    returns, then `handle` for each received frame and `due` whenever the
    caller's clock passes `next_due()`.
    """

    symbols: tuple[str, ...]
    depth: int = 0
    interval_ms: int = 0
    per_symbol: bool = False  # stats rows per symbol ("delta BTC-USD") instead of per kind
    latency_from: str = "publish"  # "publish": server send time; "event": source time when known
    symbol_wait: float = 10.0  # seconds from `started` during which an unknown symbol is quietly retried
    corrupt_every: int = 0  # test hook: flip the checksum of every Nth delta received
    started: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    session: SubscriberSession = field(init=False)
    counts: CheckerCounts = field(init=False, default_factory=CheckerCounts)
    _sent: dict[str, float] = field(init=False, default_factory=dict)  # symbol -> when its Subscribe went out
    _refused: dict[str, str] = field(init=False, default_factory=dict)  # symbol -> why its resume was refused
    _retry_at: dict[str, float] = field(init=False, default_factory=dict)
    _received: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.latency_from not in ("publish", "event"):
            raise ValueError(f"latency_from must be 'publish' or 'event', got {self.latency_from!r}")
        if self.depth < 0 or self.interval_ms < 0 or self.corrupt_every < 0:
            raise ValueError("depth, interval_ms and corrupt_every must be >= 0")
        self.session = SubscriberSession(
            self.symbols, depth=self.depth, interval_ms=self.interval_ms, refusals=_REFUSALS, rng=self.rng
        )

    @property
    def followers(self) -> dict[str, BookFollower]:
        return self.session.books

    # ------------------------------------------------------------------ connection

    def start_connection(self, now: float) -> list[ClientMessage]:
        """Subscribe every symbol on a new connection: full-depth books that
        are still verified resume from their (epoch, seq)."""
        self._retry_at.clear()
        self._refused.clear()
        return self._sends(self.session.open(), now)

    def live(self, symbol: str) -> bool:
        return self.session.is_live(symbol)

    def next_due(self) -> float | None:
        """When `due` next has something to send, if ever."""
        return min(self._retry_at.values(), default=None)

    def due(self, now: float) -> list[ClientMessage]:
        """Subscriptions whose retry time has come."""
        out: list[ClientMessage] = []
        for symbol, at in tuple(self._retry_at.items()):
            if at <= now:
                del self._retry_at[symbol]
                out.extend(self._sends(self.session.retry(symbol), now))
        return out

    # ------------------------------------------------------------------ receiving

    def handle(self, data: bytes | str, recv_ns: int, now: float) -> tuple[list[Report], list[ClientMessage]]:
        """One received frame -> (what to report, what to send).

        `recv_ns`: wall-clock receipt time (time.time_ns), compared with the
        server's timestamps; `now`: the caller's monotonic seconds."""
        reports: list[Report] = []
        length = len(data)
        try:
            msg = parse_server_message(data)
        except MalformedMessage as exc:
            self._fail(reports, "malformed", 0.0, length, StreamFailure("undecodable server message", str(exc)))
            return reports, []
        kind = msg.WhichOneof("kind")
        if kind == "delta":
            outputs = self._on_delta(msg, recv_ns, length, reports)
        elif kind == "heartbeat":
            outputs = self._on_heartbeat(msg, recv_ns, length, reports)
        elif kind == "snapshot":
            outputs = self._on_snapshot(msg, recv_ns, now, length, reports)
        elif kind == "subscribed":
            outputs = self._on_subscribed(msg, now, length, reports)
        elif kind == "error":
            outputs = self._on_error(msg, now, length, reports)
        else:
            # Unsubscribed (the session subscribes again), Pong and kinds
            # newer than this code are no book messages: nothing to report.
            outputs = self.session.receive(msg)
        return reports, self._sends(outputs, now)

    def _on_delta(self, msg: ServerMessage, recv_ns: int, length: int, reports: list[Report]) -> list[Output]:
        pd = msg.delta
        if not self.session.is_live(pd.symbol):
            # Sent before our Subscribe or Unsubscribe reached the server.
            return self.session.receive(msg)
        self._received += 1
        if self.corrupt_every and self._received % self.corrupt_every == 0:
            pd.checksum ^= 1
        source = pd.event_time_ns if self.latency_from == "event" and pd.event_time_ns else pd.publish_time_ns
        latency = self._latency(recv_ns, source)
        name = self._name("delta", pd.symbol)
        outputs = self.session.receive(msg)
        for o in outputs:
            if isinstance(o, BookUpdated):
                self.counts.deltas += 1
                reports.append(Report(name, latency, length))
            elif isinstance(o, Resync):
                self._fail(reports, name, latency, length, _stream_failure(o.error, o.symbol))
        return outputs

    def _on_heartbeat(self, msg: ServerMessage, recv_ns: int, length: int, reports: list[Report]) -> list[Output]:
        hb = msg.heartbeat
        latency = self._latency(recv_ns, hb.time_ns) if self.session.is_live(hb.symbol) else 0.0
        name = self._name("heartbeat", hb.symbol)
        outputs = self.session.receive(msg)
        for o in outputs:
            if isinstance(o, HeartbeatChecked):
                self.counts.heartbeats += 1
                if o.stale:
                    # The node is cut off from its source (Redis): the book may be behind.
                    self._fail(reports, name, latency, length, StreamFailure(f"stale heartbeat on {o.symbol}"))
                else:
                    reports.append(Report(name, latency, length))
            elif isinstance(o, Resync):
                self._fail(reports, name, latency, length, _stream_failure(o.error, o.symbol))
        return outputs

    def _on_snapshot(
        self, msg: ServerMessage, recv_ns: int, now: float, length: int, reports: list[Report]
    ) -> list[Output]:
        ps = msg.snapshot
        symbol = ps.symbol
        asked = self.session.phase(symbol) is Phase.SNAPSHOT_WAIT
        # An asked-for snapshot measures subscribe -> book; one the server
        # pushes (resynchronising us) measures its build time -> receipt.
        elapsed = _ms(now - self._sent.get(symbol, now)) if asked else self._latency(recv_ns, ps.time_ns)
        name = self._name("snapshot", symbol)
        outputs = self.session.receive(msg)
        for o in outputs:
            if isinstance(o, BookUpdated):
                self.counts.snapshots += 1
                refused = self._refused.pop(symbol, "")
                if not o.solicited:
                    self._fail(reports, name, elapsed, length, StreamFailure(f"resync snapshot on {symbol}"))
                elif refused:
                    failure = StreamFailure(f"resume refused ({refused}) on {symbol}")
                    self._fail(reports, name, elapsed, length, failure)
                else:
                    reports.append(Report(name, elapsed, length))
            elif isinstance(o, Resync):
                self._fail(reports, name, elapsed, length, _stream_failure(o.error, o.symbol))
        return outputs

    def _on_subscribed(self, msg: ServerMessage, now: float, length: int, reports: list[Report]) -> list[Output]:
        m = msg.subscribed
        elapsed = _ms(now - self._sent.get(m.symbol, now))
        name = self._name("resumed", m.symbol)
        outputs = self.session.receive(msg)
        for o in outputs:
            if isinstance(o, Started):
                if o.resumed:
                    self.counts.resumes += 1
                    reports.append(Report(name, elapsed, length))
                elif o.offered is not None:
                    self._refused[o.symbol] = o.reason.removeprefix("SNAPSHOT_REASON_")
            elif isinstance(o, Resync) and o.reason is ResyncReason.RESUME:
                detail = f"{o.symbol}: resumed at ({m.epoch}, {m.seq}): {o.error}"
                self._fail(reports, name, elapsed, length, StreamFailure(f"resume mismatch on {o.symbol}", detail))
        return outputs

    def _on_error(self, msg: ServerMessage, now: float, length: int, reports: list[Report]) -> list[Output]:
        e = msg.error
        code = code_name(e.code)
        detail = f"{code} ({e.symbol}): {e.message}"
        outputs = self.session.receive(msg)
        for o in outputs:
            if not isinstance(o, ErrorReceived):
                continue
            symbol = o.symbol
            # A feed may define a symbol a little after the run starts, so
            # unknown symbols are retried quietly for `symbol_wait` seconds first.
            waiting = (
                o.outcome is ErrorOutcome.RETRY
                and e.code == ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL
                and now - self.started < self.symbol_wait
            )
            if not waiting:
                failure = StreamFailure(f"{code} on {symbol}" if symbol else code, detail)
                self._fail(reports, self._name("error", symbol), 0.0, length, failure)
        return outputs

    # ------------------------------------------------------------------ helpers

    def _sends(self, outputs: list[Output], now: float) -> list[ClientMessage]:
        """The messages to send; notes when each Subscribe goes out and when
        each refused one is due again."""
        out: list[ClientMessage] = []
        for o in outputs:
            if isinstance(o, Send):
                out.append(o.message)
                if o.message.WhichOneof("kind") == "subscribe":
                    self._sent[o.message.subscribe.symbol] = now
            elif isinstance(o, RetrySubscribe):
                self._retry_at[o.symbol] = now + o.delay
        return out

    def _name(self, kind: str, symbol: str) -> str:
        return f"{kind} {symbol}" if self.per_symbol and symbol else kind

    def _latency(self, recv_ns: int, sent_ns: int) -> float:
        if sent_ns <= 0:
            return 0.0  # the server gave no time
        ms = (recv_ns - sent_ns) / 1e6
        if ms < 0:
            self.counts.clock_skew += 1
            return 0.0
        return ms

    def _fail(self, reports: list[Report], name: str, elapsed: float, length: int, failure: StreamFailure) -> None:
        self.counts.failures += 1
        reports.append(Report(name, elapsed, length, failure))


def _stream_failure(exc: OrderbookError, symbol: str) -> StreamFailure:
    return StreamFailure(f"{type(exc).__name__} on {symbol}", str(exc))


def _ms(seconds: float) -> float:
    return max(0.0, seconds * 1000.0)


# ----------------------------------------------------------------------------- publishing


class Pacer:
    """How many updates a publisher owes at a given time to keep `rate`
    updates/s since `start`. After a stall it catches up by at most
    `max_burst` seconds' worth, so a slow server is not hit by one huge batch."""

    __slots__ = ("max_burst", "rate", "sent", "start")

    def __init__(self, rate: float, start: float, max_burst: float = 1.0) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, got {rate}")
        self.rate, self.start, self.max_burst, self.sent = rate, start, max_burst, 0

    def due(self, now: float) -> int:
        owed = math.floor((now - self.start) * self.rate) - self.sent
        cap = max(1, math.ceil(self.rate * self.max_burst))
        if owed > cap:
            # Forget what cannot be caught up: the schedule restarts from here.
            self.sent += owed - cap
            owed = cap
        return max(0, owed)

    def done(self, n: int) -> None:
        self.sent += n
