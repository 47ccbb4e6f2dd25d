"""The limits of docs/operations.md "Limits": feed limits in the pure core
and over /feed, GET /book's depth, --http-token, and the handshake and
per-IP connection limits before the upgrade. Real sockets where it matters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.request

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from orderbook.cli import build_parser, serve_settings
from orderbook.core.errors import LimitExceeded
from orderbook.core.events import FeedBatch
from orderbook.core.market import FeedLimits, Market
from orderbook.server.handshake_limits import LogThrottle
from orderbook.server.settings import Settings
from orderbook.wire import codec

from .harness import (
    Publisher,
    Subscriber,
    eventually,
    http_get,
    instrument,
    serve_in_process,
    start_server_process,
    test_settings,
    update,
)

pytestmark = pytest.mark.timeout(60)

INVALID_UPDATE = codec.ErrorCode.ERROR_CODE_INVALID_UPDATE
WAIT = 5.0


def levels(n: int, start: int = 100, size: int = 1) -> list[tuple[int, int]]:
    return [(start + i, size) for i in range(n)]


# ------------------------------------------------------------------ pure core


def market(**kw) -> Market:
    m = Market(1, FeedLimits(**kw))
    m.apply(FeedBatch(1, (instrument("A"),), ()))
    return m


def refused(m: Market, batch: FeedBatch, limit: str) -> LimitExceeded:
    before = [(sb.seq, sb.book.bids(), sb.book.asks()) for sb in m]
    symbols = m.symbols()
    with pytest.raises(LimitExceeded) as info:
        m.apply(batch)
    assert info.value.limit == limit and str(info.value.value) in str(info.value) and limit in str(info.value)
    assert [(sb.seq, sb.book.bids(), sb.book.asks()) for sb in m] == before and m.symbols() == symbols
    return info.value


def test_levels_per_side_counts_the_book_after_each_update():
    m = market(max_levels_per_side=5)
    m.apply(FeedBatch(2, (), (update("A", bids=levels(5)),)))
    # Sizes changed, levels removed and added back: still 5.
    m.apply(FeedBatch(3, (), (update("A", bids=[(100, 0), (104, 7), (200, 1)]),)))
    assert m.get("A").book.bid_count() == 5
    # One more level, even spread over two updates of one batch: refused whole.
    exc = refused(
        m, FeedBatch(4, (), (update("A", asks=levels(1, 300)), update("A", bids=[(201, 1)]))), "max_levels_per_side"
    )
    assert exc.symbol == "A" and "bid" in str(exc)
    # A replace counts only its own levels (last write per price, zeros dropped).
    m.apply(FeedBatch(5, (), (update("A", bids=[*levels(5, 1000), (1000, 0), (1001, 0)], replace=True),)))
    assert m.get("A").book.bid_count() == 3
    refused(m, FeedBatch(6, (), (update("A", bids=levels(6, 1000), replace=True),)), "max_levels_per_side")
    # A new symbol's first update counts from 0; the asks side on its own.
    refused(m, FeedBatch(7, (instrument("B"),), (update("B", asks=levels(6)),)), "max_levels_per_side")
    assert "B" not in m
    m.apply(FeedBatch(8, (instrument("B"),), (update("B", asks=levels(5), bids=levels(5, 10)),)))


def test_a_side_beyond_the_limit_may_shrink_but_not_grow():
    m = Market(1)
    m.apply(FeedBatch(1, (instrument("A"),), (update("A", bids=levels(10)),)))
    m.limits = FeedLimits(max_levels_per_side=5)  # as after a restart with a lower limit
    m.apply(FeedBatch(2, (), (update("A", bids=[(100, 0)]),)))
    refused(m, FeedBatch(3, (), (update("A", bids=[(100, 2)]),)), "max_levels_per_side")
    m.apply(FeedBatch(4, (), (update("A", bids=[(101, 0), (102, 0), (150, 1)]),)))
    assert m.get("A").book.bid_count() == 8


def test_max_symbols_and_max_batch_levels():
    m = market(max_symbols=3, max_batch_levels=10)
    m.apply(FeedBatch(2, (instrument("A"), instrument("B"), instrument("C")), ()))  # A again: not new
    refused(m, FeedBatch(3, (instrument("D"),), ()), "max_symbols")
    exc = refused(m, FeedBatch(4, (), (update("A", bids=levels(6)), update("B", asks=levels(5)))), "max_batch_levels")
    assert "11" in str(exc)
    m.apply(FeedBatch(5, (), (update("A", bids=levels(5)), update("B", asks=levels(5)))))
    assert Market(1).limits == FeedLimits()  # none by default (tools, verify)


def test_no_limits_is_the_default_and_zero_means_none():
    m = Market(1, FeedLimits(0, 0, 0))
    m.apply(FeedBatch(1, tuple(instrument(f"S{i}") for i in range(50)), (update("S0", bids=levels(2000)),)))
    assert len(m) == 50


# ------------------------------------------------------------------ /feed over real sockets


async def test_feed_batches_over_each_limit_are_refused_whole_and_subscribers_go_on(caplog):
    settings = test_settings(max_levels_per_side=50, max_symbols=4, max_batch_levels=120)
    async with serve_in_process(settings) as srv, Publisher.connect(srv.feed_url) as pub:
        reply = await pub.send([instrument("A"), instrument("B")], [update("A", bids=levels(10), asks=levels(10, 500))])
        assert reply.WhichOneof("kind") == "ack", reply
        async with Subscriber.connect(srv.url) as s1, Subscriber.connect(srv.url) as s2:
            for s in (s1, s2):
                await s.subscribe("A")
                await s.until_seq("A", 1)
            over = {
                "max_levels_per_side": ([], [update("B", asks=levels(1)), update("A", bids=levels(41, 1000))]),
                "max_symbols": ([instrument("C"), instrument("D"), instrument("E")], [update("A", bids=[(100, 5)])]),
                "max_batch_levels": (
                    [],
                    [update("A", bids=[(100, 3)])] + [update("B", asks=levels(30, 10 * i)) for i in range(4)],
                ),
            }
            values = {"max_levels_per_side": 50, "max_symbols": 4, "max_batch_levels": 120}
            with caplog.at_level(logging.WARNING, logger="orderbook.limits"):
                for limit, (insts, updates) in over.items():
                    reply = await pub.send(insts, updates)
                    assert reply.WhichOneof("kind") == "error", (limit, reply)
                    assert reply.error.code == INVALID_UPDATE
                    assert limit in reply.error.message and str(values[limit]) in reply.error.message
            assert sum("refused feed batch" in r.getMessage() for r in caplog.records) == 3
            # Nothing of any of them was applied.
            assert srv.hub.market.symbols() == ["A", "B"]
            sb = srv.hub.market.get("A")
            assert sb.seq == 1 and sb.book.bid_count() == 10 and sb.book.bid_size(100) == 1
            assert srv.hub.market.get("B").seq == 0
            # The subscribers saw nothing of them, and go on with no gap.
            reply = await pub.send([], [update("A", bids=[(100, 9)])])
            assert reply.WhichOneof("kind") == "ack" and reply.ack.changes == 1
            for s in (s1, s2):
                await s.until_seq("A", 2)
                assert s.errors == [] and s.seen["A"] == [(srv.hub.epoch, 2)]
                assert s.followers["A"].book.bid_size(100) == 9


async def test_the_default_feed_limits_hold():
    async with serve_in_process(test_settings()) as srv, Publisher.connect(srv.feed_url) as pub:
        reply = await pub.send([instrument("A")], [update("A", bids=levels(100_001))])
        assert reply.error.code == INVALID_UPDATE and "max_batch_levels" in reply.error.message
        assert "A" not in srv.hub.market


# ------------------------------------------------------------------ GET /book depth


async def test_book_depth_is_capped():
    async with serve_in_process(test_settings(http_max_depth=10)) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("A"), instrument("S")], [update("A", bids=levels(11)), update("S", asks=levels(10))])
        status, _, body = await http_get(srv.port, "/book/A?depth=11")
        assert status == 400 and "http_max_depth" in json.loads(body)["error"] and "10" in json.loads(body)["error"]
        status, _, body = await http_get(srv.port, "/book/A?depth=0")
        err = json.loads(body)["error"]
        assert status == 400 and "http_max_depth" in err and "WebSocket" in err
        status, _, body = await http_get(srv.port, "/book/A?depth=10")
        assert status == 200 and len(json.loads(body)["bids"]) == 10
        status, _, body = await http_get(srv.port, "/book/S?depth=0")  # a whole book within the cap
        assert status == 200 and len(json.loads(body)["asks"]) == 10


# ------------------------------------------------------------------ --http-token


async def test_http_token():
    settings = test_settings(http_token="s3cret", cors_origins=("http://page.example",))
    async with serve_in_process(settings) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("A")], [update("A", bids=levels(2))])
        for path in ("/symbols", "/book/A"):
            status, headers, body = await http_get(srv.port, path)
            assert status == 401 and headers["www-authenticate"].startswith("Bearer"), body
            assert "token" in json.loads(body)["error"]
            status, _, _ = await http_get(srv.port, path, {"Authorization": "Bearer wrong"})
            assert status == 401
            status, _, _ = await http_get(srv.port, path, {"Authorization": "Bearer s3cret"})
            assert status == 200
            status, _, _ = await http_get(srv.port, path + "?token=s3cret")
            assert status == 200
        for path in ("/healthz", "/readyz"):
            status, _, _ = await http_get(srv.port, path)
            assert status == 200
        # A page on another origin may send the header (CORS preflight).
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(
            f"OPTIONS /symbols HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nOrigin: http://page.example\r\n"
            "Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: Authorization\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = (await asyncio.wait_for(reader.read(), WAIT)).decode("latin-1").lower()
        writer.close()
        assert " 204 " in head.split("\r\n")[0] and "access-control-allow-headers: authorization" in head


# ------------------------------------------------------------------ before the upgrade


async def expect_429(url: str, **kw) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, proxy=None, **kw):
            pass
    resp = info.value.response
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    return info.value


async def test_connections_per_ip():
    async with serve_in_process(test_settings(max_connections_per_ip=3)) as srv:
        async with contextlib.AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(Subscriber.connect(srv.url)) for _ in range(3)]
            exc = await expect_429(srv.url)
            assert b"max_connections_per_ip" in exc.response.body
            await expect_429(srv.feed_url)  # /feed counts too
            await subs[0].ws.close()
            await eventually(lambda: srv.app.ctx.state.gate.connections("127.0.0.1") < 3, WAIT, "a connection released")
            async with Subscriber.connect(srv.url):
                pass
        await eventually(lambda: not srv.app.ctx.state.gate.connections("127.0.0.1"), WAIT, "every connection released")


async def test_handshake_burst_per_ip_and_global():
    async with serve_in_process(test_settings(handshake_rate=0.5, handshake_burst=4)) as srv:
        for _ in range(4):
            async with Subscriber.connect(srv.url):
                pass
        exc = await expect_429(srv.url)
        assert b"handshake_rate" in exc.response.body and int(exc.response.headers["Retry-After"]) == 2
    async with serve_in_process(test_settings(global_handshake_rate=0.1, global_handshake_burst=2)) as srv:
        for _ in range(2):
            async with Subscriber.connect(srv.url):
                pass
        exc = await expect_429(srv.url)
        assert b"global_handshake_rate" in exc.response.body and int(exc.response.headers["Retry-After"]) == 10


async def test_refused_handshakes_leave_subscribers_alone():
    async with (
        serve_in_process(test_settings(handshake_rate=0.01, handshake_burst=3)) as srv,
        Publisher.connect(srv.feed_url) as pub,
    ):
        await pub.send([instrument("A")], [update("A", bids=levels(3))])
        async with Subscriber.connect(srv.url) as s1, Subscriber.connect(srv.url) as s2:
            for s in (s1, s2):
                await s.subscribe("A")
                await s.until_seq("A", 1)
            for _ in range(20):
                await expect_429(srv.url)
            await pub.send([], [update("A", bids=[(100, 4)])])
            for s in (s1, s2):
                await s.until_seq("A", 2)
                assert s.errors == [] and s.seen["A"] == [(srv.hub.epoch, 2)]


# ------------------------------------------------------------------ options, log


def test_cli_defaults_and_flags():
    args = build_parser().parse_args(["serve"])
    s = serve_settings(args)
    d = Settings()
    assert (s.max_levels_per_side, s.max_symbols, s.max_batch_levels) == (100_000, 10_000, 100_000)
    assert (s.http_max_depth, s.http_token, s.max_connections_per_ip) == (1000, None, 1000)
    assert (s.handshake_rate, s.handshake_burst, s.global_handshake_rate, s.global_handshake_burst) == (
        100,
        200,
        500,
        1000,
    )
    for name in (
        "max_levels_per_side",
        "max_symbols",
        "max_batch_levels",
        "http_max_depth",
        "http_token",
        "max_connections_per_ip",
        "handshake_rate",
        "handshake_burst",
        "global_handshake_rate",
        "global_handshake_burst",
    ):
        assert getattr(s, name) == getattr(d, name), name
    args = build_parser().parse_args(
        [
            "serve",
            "--max-levels-per-side",
            "7",
            "--max-symbols",
            "0",
            "--max-batch-levels",
            "9",
            "--http-max-depth",
            "5",
            "--http-token",
            "t",
            "--max-connections-per-ip",
            "0",
            "--handshake-rate",
            "1.5",
            "--handshake-burst",
            "3",
            "--global-handshake-rate",
            "0",
            "--global-handshake-burst",
            "4",
        ]
    )
    s = serve_settings(args)
    assert s.feed_limits == FeedLimits(7, 0, 9)
    assert (
        s.http_max_depth,
        s.http_token,
        s.max_connections_per_ip,
        s.handshake_rate,
        s.handshake_burst,
        s.global_handshake_rate,
        s.global_handshake_burst,
    ) == (5, "t", 0, 1.5, 3, 0, 4)


def test_log_throttle_holds_back_a_flood():
    now = [0.0]
    records: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test.throttle")
    logger.addHandler(Sink())
    logger.propagate = False
    t = LogThrottle(logger, 1.0, clock=lambda: now[0])
    for _ in range(1000):
        t.warning("k", "refused %s", "x")
    t.warning("other", "refused %s", "y")
    now[0] = 1.5
    t.warning("k", "refused %s", "x")
    assert records == ["refused x", "refused y", "refused x (and 999 more like it since the last line)"]


# ------------------------------------------------------------------ the page with --http-token


async def test_trading_page_lists_symbols_with_http_token(tmp_path):
    from .browser_harness import chromium, require_page, wait_js

    require_page()
    n = start_server_process(tmp_path, "--http-token", "tok", "--token", "tok")
    try:
        req = urllib.request.Request(n.http + "/symbols", headers={"Authorization": "Bearer tok"})

        def listed() -> list[str]:
            with urllib.request.urlopen(req, timeout=5) as r:
                return [s["symbol"] for s in json.load(r)["symbols"]]

        symbols = await asyncio.to_thread(listed)
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{n.http}/?token=tok&symbol={symbols[0]}", wait_until="domcontentloaded")
            await wait_js(
                page,
                f"(() => {{ const s = window.orderbook?.symbols?.[{json.dumps(symbols[0])}];"
                " return !!s && s.state === 'live'; })()",
            )
            async with asyncio.timeout(20):
                while True:
                    options = await page.eval_on_selector_all("select#symbol option", "els => els.map(e => e.value)")
                    if options == symbols:
                        break
                    await asyncio.sleep(0.1)
    finally:
        n.kill()
