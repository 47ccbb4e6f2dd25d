"""What a load-test subscriber does with the frames it receives, without I/O.

`StreamChecker` keeps one `BookFollower` per symbol across reconnections,
turns every received frame into `Report`s (one Locust request event each) and
into the `ClientMessage`s to send back (in-band resynchronisation,
subscription retries). It holds no socket and never sleeps or reads a clock:
the caller passes the times in. That keeps gevent out of it, so the
verification rules are tested in plain pytest, and the Locust users stay thin.

Each incident is reported once, as a `StreamFailure` on the row of the
message that revealed it: a gap, a duplicate, a checksum mismatch or an epoch
change on a delta or heartbeat; a snapshot the subscriber did not ask for (the
server resynchronised it) or one that answers a refused resume; an Error
frame. The snapshot that the subscriber then asks for itself is a success.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from orderbook.client.backoff import Backoff
from orderbook.core.errors import StreamError
from orderbook.core.follower import BookFollower
from orderbook.core.resume import ResumePoint
from orderbook.wire.codec import (
    ClientMessage,
    ErrorCode,
    MalformedMessage,
    ServerMessage,
    instrument_from_pb,
    levels_from_pb,
    parse_server_message,
    subscribe_message,
    unsubscribe_message,
)

# Enum values read from the descriptor: the codec is the only module that
# imports generated code, and values are never renumbered.
_SUBSCRIBED = ServerMessage.DESCRIPTOR.fields_by_name["subscribed"].message_type
_START_RESUMED = _SUBSCRIBED.fields_by_name["start"].enum_type.values_by_name["START_RESUMED"].number
_REASONS = _SUBSCRIBED.fields_by_name["reason"].enum_type

# Retries of a subscription the server refused on the same connection.
RETRY_BASE = 0.5
RETRY_CAP = 10.0
RETRY_MIN = 0.1  # full jitter may draw ~0; never retry in a tight loop


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


class _State(enum.Enum):
    SUBSCRIBING = "subscribing"  # Subscribe sent
    SNAPSHOT_WAIT = "snapshot-wait"  # START_SNAPSHOT acknowledged
    LIVE = "live"
    UNSUBSCRIBING = "unsubscribing"  # resynchronising: Unsubscribe sent


@dataclass(slots=True)
class _Sub:
    symbol: str
    state: _State
    request_id: int
    sent: float  # when the Subscribe was sent (caller's monotonic seconds)
    resume: ResumePoint | None
    refused: str = ""  # why the server refused our resume point, if it did


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
    followers: dict[str, BookFollower] = field(init=False)
    counts: CheckerCounts = field(init=False, default_factory=CheckerCounts)
    _subs: dict[str, _Sub] = field(init=False, default_factory=dict)
    _retry_at: dict[str, float] = field(init=False, default_factory=dict)
    _retry: dict[str, Backoff] = field(init=False, default_factory=dict)
    _ids: itertools.count = field(init=False, default_factory=lambda: itertools.count(1))
    _received: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.latency_from not in ("publish", "event"):
            raise ValueError(f"latency_from must be 'publish' or 'event', got {self.latency_from!r}")
        if self.depth < 0 or self.interval_ms < 0 or self.corrupt_every < 0:
            raise ValueError("depth, interval_ms and corrupt_every must be >= 0")
        self.followers = {s: BookFollower(s) for s in self.symbols}

    # ------------------------------------------------------------------ connection

    def start_connection(self, now: float) -> list[ClientMessage]:
        """Subscribe every symbol on a new connection: full-depth books that
        are still verified resume from their (epoch, seq)."""
        self._subs = {}
        self._retry_at.clear()
        out: list[ClientMessage] = []
        for symbol in self.symbols:
            self._subscribe(symbol, now, out)
        return out

    def live(self, symbol: str) -> bool:
        sub = self._subs.get(symbol)
        return sub is not None and sub.state is _State.LIVE

    def next_due(self) -> float | None:
        """When `due` next has something to send, if ever."""
        return min(self._retry_at.values(), default=None)

    def due(self, now: float) -> list[ClientMessage]:
        """Subscriptions whose retry time has come."""
        out: list[ClientMessage] = []
        for symbol, at in tuple(self._retry_at.items()):
            if at <= now:
                del self._retry_at[symbol]
                if symbol not in self._subs:
                    self._subscribe(symbol, now, out)
        return out

    # ------------------------------------------------------------------ receiving

    def handle(self, data: bytes | str, recv_ns: int, now: float) -> tuple[list[Report], list[ClientMessage]]:
        """One received frame -> (what to report, what to send).

        `recv_ns`: wall-clock receipt time (time.time_ns), compared with the
        server's timestamps; `now`: the caller's monotonic seconds."""
        reports: list[Report] = []
        out: list[ClientMessage] = []
        length = len(data)
        try:
            msg = parse_server_message(data)
        except MalformedMessage as exc:
            self._fail(reports, "malformed", 0.0, length, StreamFailure("undecodable server message", str(exc)))
            return reports, out
        kind = msg.WhichOneof("kind")
        if kind == "delta":
            self._on_delta(msg.delta, recv_ns, length, reports, out)
        elif kind == "heartbeat":
            self._on_heartbeat(msg.heartbeat, recv_ns, length, reports, out)
        elif kind == "snapshot":
            self._on_snapshot(msg.snapshot, recv_ns, now, length, reports, out)
        elif kind == "subscribed":
            self._on_subscribed(msg.subscribed, now, length, reports, out)
        elif kind == "unsubscribed":
            self._on_unsubscribed(msg.unsubscribed, now, out)
        elif kind == "error":
            self._on_error(msg.error, now, length, reports, out)
        # Pong and kinds newer than this code are not book messages: ignored.
        return reports, out

    def _on_delta(self, pd, recv_ns: int, length: int, reports: list[Report], out: list[ClientMessage]) -> None:
        sub = self._subs.get(pd.symbol)
        if sub is None or sub.state is not _State.LIVE:
            # Sent before our Subscribe or Unsubscribe reached the server.
            return
        self._received += 1
        checksum = pd.checksum
        if self.corrupt_every and self._received % self.corrupt_every == 0:
            checksum ^= 1
        source = pd.event_time_ns if self.latency_from == "event" and pd.event_time_ns else pd.publish_time_ns
        latency = self._latency(recv_ns, source)
        name = self._name("delta", sub.symbol)
        try:
            self.followers[sub.symbol].apply_delta(
                pd.epoch, pd.seq, pd.prev_seq, levels_from_pb(pd.bids), levels_from_pb(pd.asks), checksum
            )
        except StreamError as exc:
            self._fail(reports, name, latency, length, _stream_failure(exc, sub.symbol))
            self._resync(sub, out)
            return
        self.counts.deltas += 1
        reports.append(Report(name, latency, length))

    def _on_heartbeat(self, hb, recv_ns: int, length: int, reports: list[Report], out: list[ClientMessage]) -> None:
        sub = self._subs.get(hb.symbol)
        if sub is None or sub.state is not _State.LIVE:
            return
        follower = self.followers[sub.symbol]
        latency = self._latency(recv_ns, hb.time_ns)
        name = self._name("heartbeat", sub.symbol)
        # A depth-limited stream skips changes below its top levels, so the
        # symbol's seq may be ahead of our last delta (as the client allows).
        lenient = self.depth and hb.epoch == follower.epoch and hb.seq >= (follower.seq or 0)
        if not lenient:
            try:
                follower.check_heartbeat(hb.epoch, hb.seq)
            except StreamError as exc:
                self._fail(reports, name, latency, length, _stream_failure(exc, sub.symbol))
                self._resync(sub, out)
                return
        self.counts.heartbeats += 1
        if hb.stale:
            # The node is cut off from its source (Redis): the book may be behind.
            self._fail(reports, name, latency, length, StreamFailure(f"stale heartbeat on {sub.symbol}"))
            return
        reports.append(Report(name, latency, length))

    def _on_snapshot(
        self, ps, recv_ns: int, now: float, length: int, reports: list[Report], out: list[ClientMessage]
    ) -> None:
        sub = self._subs.get(ps.symbol)
        if sub is None or sub.state not in (_State.SNAPSHOT_WAIT, _State.LIVE):
            return
        asked = sub.state is _State.SNAPSHOT_WAIT
        # An asked-for snapshot measures subscribe -> book; one the server
        # pushes (resynchronising us) measures its build time -> receipt.
        elapsed = _ms(now - sub.sent) if asked else self._latency(recv_ns, ps.time_ns)
        name = self._name("snapshot", sub.symbol)
        instrument = instrument_from_pb(ps.instrument) if ps.HasField("instrument") else None
        try:
            self.followers[sub.symbol].apply_snapshot(
                ps.epoch, ps.seq, levels_from_pb(ps.bids), levels_from_pb(ps.asks), ps.checksum, instrument, ps.depth
            )
        except StreamError as exc:
            self._fail(reports, name, elapsed, length, _stream_failure(exc, sub.symbol))
            self._resync(sub, out)
            return
        sub.state = _State.LIVE
        self._retry.pop(sub.symbol, None)
        self.counts.snapshots += 1
        if not asked:
            self._fail(reports, name, elapsed, length, StreamFailure(f"resync snapshot on {sub.symbol}"))
        elif sub.refused:
            failure = StreamFailure(f"resume refused ({sub.refused}) on {sub.symbol}")
            sub.refused = ""
            self._fail(reports, name, elapsed, length, failure)
        else:
            reports.append(Report(name, elapsed, length))

    def _on_subscribed(self, m, now: float, length: int, reports: list[Report], out: list[ClientMessage]) -> None:
        sub = self._subs.get(m.symbol)
        if sub is None or sub.state is not _State.SUBSCRIBING or m.request_id != sub.request_id:
            return
        follower = self.followers[sub.symbol]
        if m.start == _START_RESUMED:
            name = self._name("resumed", sub.symbol)
            r = sub.resume
            if (
                r is None
                or not follower.synced
                or (follower.epoch, follower.seq) != (r.epoch, r.seq)
                or (m.epoch, m.seq) != (r.epoch, r.seq)
            ):
                detail = f"{sub.symbol}: resumed at ({m.epoch}, {m.seq}), asked {r}"
                failure = StreamFailure(f"resume mismatch on {sub.symbol}", detail)
                self._fail(reports, name, _ms(now - sub.sent), length, failure)
                self._resync(sub, out)
                return
            sub.state = _State.LIVE
            self._retry.pop(sub.symbol, None)
            self.counts.resumes += 1
            reports.append(Report(name, _ms(now - sub.sent), length))
            return
        if sub.resume is not None:
            reason = _REASONS.values_by_number.get(m.reason)
            sub.refused = reason.name.removeprefix("SNAPSHOT_REASON_") if reason is not None else str(m.reason)
        # The book is not current until the snapshot replaces it.
        follower.desync()
        sub.state = _State.SNAPSHOT_WAIT

    def _on_unsubscribed(self, m, now: float, out: list[ClientMessage]) -> None:
        sub = self._subs.get(m.symbol)
        if sub is None or sub.state is not _State.UNSUBSCRIBING or m.request_id != sub.request_id:
            return
        del self._subs[sub.symbol]
        self._subscribe(sub.symbol, now, out)

    def _on_error(self, e, now: float, length: int, reports: list[Report], out: list[ClientMessage]) -> None:
        try:
            code = ErrorCode.Name(e.code)
        except ValueError:
            code = f"ERROR_CODE_{e.code}"
        detail = f"{code} ({e.symbol}): {e.message}"
        sub = self._sub_for_request(e.symbol, e.request_id)
        symbol = sub.symbol if sub is not None else e.symbol
        name = self._name("error", symbol)
        failure = StreamFailure(f"{code} on {symbol}" if symbol else code, detail)
        if sub is None or sub.state is _State.LIVE or sub.state is _State.SNAPSHOT_WAIT:
            self._fail(reports, name, 0.0, length, failure)
            return
        if sub.state is _State.UNSUBSCRIBING:
            # Whatever went wrong, the server no longer holds it: start over.
            self._fail(reports, name, 0.0, length, failure)
            del self._subs[sub.symbol]
            self._subscribe(sub.symbol, now, out)
            return
        if e.code == ErrorCode.ERROR_CODE_ALREADY_SUBSCRIBED:
            self._fail(reports, name, 0.0, length, failure)
            self._unsubscribe(sub, out)  # the acknowledgement subscribes again
            return
        # Refused: retry later on this connection. A feed may define a symbol
        # a little after the run starts, so unknown symbols are retried quietly
        # for `symbol_wait` seconds first.
        del self._subs[sub.symbol]
        retry = self._retry.setdefault(sub.symbol, Backoff(RETRY_BASE, RETRY_CAP, rng=self.rng))
        self._retry_at[sub.symbol] = now + max(retry.next_delay(), RETRY_MIN)
        waiting = e.code == ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL and now - self.started < self.symbol_wait
        if not waiting:
            self._fail(reports, name, 0.0, length, failure)

    # ------------------------------------------------------------------ helpers

    def _subscribe(self, symbol: str, now: float, out: list[ClientMessage]) -> None:
        follower = self.followers[symbol]
        # Resume only a book of the same shape; the server offers no resume
        # to depth-limited subscriptions, so they do not ask.
        resume = follower.resume_point() if self.depth == 0 and follower.depth == 0 else None
        rid = next(self._ids)
        self._subs[symbol] = _Sub(symbol, _State.SUBSCRIBING, rid, now, resume)
        out.append(subscribe_message(symbol, self.depth, resume, rid, self.interval_ms))

    def _unsubscribe(self, sub: _Sub, out: list[ClientMessage]) -> None:
        sub.state = _State.UNSUBSCRIBING
        sub.request_id = next(self._ids)
        out.append(unsubscribe_message(sub.symbol, sub.request_id))

    def _resync(self, sub: _Sub, out: list[ClientMessage]) -> None:
        """Take a fresh snapshot of one symbol in-band: Unsubscribe, then
        Subscribe without a resume point on the acknowledgement."""
        self.followers[sub.symbol].desync()
        self._unsubscribe(sub, out)

    def _sub_for_request(self, symbol: str, request_id: int) -> _Sub | None:
        if not request_id:
            return None
        sub = self._subs.get(symbol) if symbol else None
        if sub is not None and sub.request_id == request_id:
            return sub
        return next((s for s in self._subs.values() if s.request_id == request_id), None)

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


def _stream_failure(exc: StreamError, symbol: str) -> StreamFailure:
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
