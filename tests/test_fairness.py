"""No client harms another (issue: one connection freezes everyone): each
attack runs against an in-process server while two verifying subscribers
follow a symbol published every 20 ms and /healthz is polled. Their worst
silence and /healthz stay bounded, every delta arrives with no gap (the
Subscriber's followers check each seq), and the attacker meets its limit."""

from __future__ import annotations

import asyncio
import contextlib
import time

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from orderbook.server.connection import Connection
from orderbook.server.outgoing import Outgoing
from orderbook.wire import codec
from orderbook.wire.codec import Encoding

from .attacks import (
    OP_BINARY,
    OP_PONG,
    RawClient,
    app_pings,
    churn_pairs,
    client_frame,
    empty_continuations,
    rss_mb,
    watched_symbol,
    ws_pings,
)
from .harness import eventually, serve_in_process, test_settings

MAX_SILENCE = 0.5  # seconds; steady publishing every 20 ms
MAX_HEALTHZ = 0.5


@contextlib.asynccontextmanager
async def watched(**overrides):
    """A server watched as in `watched_symbol`; yields (server, watch) and
    checks afterwards that the watchers were unharmed."""
    async with serve_in_process(test_settings(**overrides)) as srv:
        async with watched_symbol(srv.port) as w:
            yield srv, w.watch
        w.assert_unharmed(MAX_SILENCE, MAX_HEALTHZ)


async def _gone(srv, before: int, timeout: float) -> None:
    await eventually(lambda: len(srv.hub.connections) <= before, timeout, "the attacker's disconnection")
    assert len(srv.hub.connections) == before, "the attacker is still connected"
    await asyncio.sleep(0.2)  # the lag sweep drops it first, then sends the close frame


async def _connect_attacker(srv, rcvbuf: int | None = None):
    """The attacker's raw client and its Connection on the server."""
    before = set(srv.hub.connections)
    atk = await RawClient.connect(srv.port, rcvbuf)
    for _ in range(100):
        new = set(srv.hub.connections) - before
        if new:
            return atk, new.pop()
        await asyncio.sleep(0.01)
    raise AssertionError("the attacker's connection never showed up")


async def test_churn_pairs_from_a_reading_client_are_rate_limited():
    async with watched() as (srv, _):
        atk = await RawClient.connect(srv.port)
        assert await atk.write(churn_pairs(20_000, "TEST"))
        frames = []
        with contextlib.suppress(asyncio.TimeoutError):
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                frames.append(await atk.read_frame(deadline - time.monotonic()))
        errors = [
            codec.parse_server_message(p).error
            for op, p in frames
            if op == OP_BINARY and codec.parse_server_message(p).WhichOneof("kind") == "error"
        ]
        assert errors and {e.code for e in errors} == {codec.ErrorCode.ERROR_CODE_RATE_LIMITED}
        # Back-pressure: about --client-burst then --client-rate messages a second were handled.
        assert len(frames) < 2000
        atk.abort()


async def test_churn_pairs_from_a_client_that_never_reads_are_closed_1013():
    async with watched(client_rate=0, churn_rate=0, client_buffer_limit=256 * 1024, slow_client_timeout=1.0) as (
        srv,
        _,
    ):
        before, rss0 = len(srv.hub.connections), rss_mb()
        atk, conn = await _connect_attacker(srv, rcvbuf=4096)
        await atk.write(churn_pairs(80_000, "TEST"))  # 3.4 MB
        await _gone(srv, before, 8.0)
        assert srv.hub.stats_slow_closed >= 1 and conn.ws.close_code == 1013
        assert rss_mb() - rss0 < 150  # MB; was 275 with unbounded replies
        atk.abort()


async def test_websocket_ping_flood_from_a_client_that_never_reads_stays_bounded():
    async with watched(client_rate=0, client_buffer_limit=256 * 1024, slow_client_timeout=1.0) as (srv, _):
        before, rss0 = len(srv.hub.connections), rss_mb()
        atk, conn = await _connect_attacker(srv, rcvbuf=4096)
        writer = asyncio.create_task(atk.write(ws_pings(100_000)))  # 13 MB in, 12.7 MB of pongs
        peak = 0
        for _ in range(30):
            await asyncio.sleep(0.1)
            for c in srv.hub.connections:
                peak = max(peak, c.buffered())
        # Its pongs count against its budget: over it, it is not read (and then closed).
        assert peak <= 256 * 1024 + 64 * 1024
        await _gone(srv, before, 8.0)
        assert conn.ws.close_code == 1013
        assert rss_mb() - rss0 < 100
        atk.abort()
        writer.cancel()


async def test_app_ping_flood_in_one_write_is_handled_in_slices():
    async with watched(client_rate=0) as (srv, _):
        atk = await RawClient.connect(srv.port)
        assert await atk.write(app_pings(100_000))
        pongs = 0
        with contextlib.suppress(asyncio.TimeoutError):
            while pongs < 100_000:
                op, _ = await atk.read_frame(5.0)
                pongs += op == OP_BINARY
        assert pongs == 100_000
        atk.abort()


async def test_empty_continuation_flood_is_closed_1009_at_the_fragment_limit():
    async with watched(max_fragments=1024) as (srv, _):
        before = len(srv.hub.connections)
        atk, conn = await _connect_attacker(srv)
        writer = asyncio.create_task(atk.write(empty_continuations(2_000_000)))  # 12 MB
        await _gone(srv, before, 5.0)
        # The client may not see the close frame: its own writes after it reset the connection.
        assert conn.ws.close_code == 1009
        writer.cancel()
        atk.abort()


async def test_a_client_that_only_sends_unsolicited_pongs_is_closed_by_keepalive():
    async with watched(ping_interval=0.3, ping_timeout=0.5) as (srv, _):
        before = len(srv.hub.connections)
        atk = await RawClient.connect(srv.port, rcvbuf=4096)
        start = time.monotonic()
        while len(srv.hub.connections) > before and time.monotonic() - start < 5.0:
            await atk.write(client_frame(OP_PONG, b"unsolicited"))
            await asyncio.sleep(0.1)
        assert len(srv.hub.connections) == before
        atk.abort()


# ------------------------------------------------------------------ the output budget, without I/O


class FakeTransport:
    """A socket that takes bytes only when the test drains it."""

    def __init__(self) -> None:
        self.buffer = 0

    def write(self, data: bytes) -> None:
        self.buffer += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffer

    def is_closing(self) -> bool:
        return False


LIMIT = 10_000
ops = st.one_of(
    st.tuples(st.just("request"), st.lists(st.integers(1, 3_000), min_size=1, max_size=5)),
    st.tuples(st.just("delta"), st.integers(1, 2_000)),
    st.tuples(st.just("flush"), st.just(0)),
    st.tuples(st.just("drain"), st.integers(0, 20_000)),
)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=200))
def test_queued_bytes_never_exceed_the_budget_plus_one_request_or_message(steps):
    """A request is handled only while `accepts_input`; its replies are never
    dropped, deltas are past the limit. Queued bytes stay within the budget
    plus the replies of one request or one delta, whatever the interleaving."""
    transport = FakeTransport()
    conn = Connection(transport, Encoding.PROTOBUF, LIMIT, lambda c: None, lambda c: None)
    sub = type("Sub", (), {"lagging": False})()
    now = 0.0
    for kind, arg in steps:
        now += 0.01
        if kind == "request":
            if conn.accepts_input(now):
                for size in arg:
                    conn.send(Outgoing(payload=b"r" * size))
        elif kind == "delta":
            conn.push(sub, Outgoing(payload=b"d" * arg), now)
        elif kind == "flush":
            conn.flush()
        else:
            transport.buffer = max(0, transport.buffer - arg)
        # One request's replies (at most 5 x 3,000 bytes, framed) past the budget, never more.
        assert conn.buffered() <= LIMIT + 5 * (3_000 + 4)
