"""The trading page at GET / in real Chromium against real nodes: its books
equal the node's at the same seq with every message verified, it survives a
node killed and restarted (new epoch) and a node killed behind HAProxy
(resume, no snapshot) without a reload, and its depth and conflation controls
change the subscription."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request

import pytest

from .browser_harness import ARTIFACTS, BOOK_AT_NODE_SEQ, PageErrors, chromium, trim, wait_js, wait_text
from .harness import (
    FEED_TOKEN,
    Publisher,
    free_port,
    has_symbol,
    instrument,
    readyz,
    start_server_process,
    until,
    update,
)
from .redis_harness import redis_factory, redis_proc  # noqa: F401
from .test_cluster_failures import SteadyPublisher, cluster, connections, running_haproxy, slots_landing_on  # noqa: F401

pytestmark = pytest.mark.timeout(120)

SYMBOL = "BTC-USD"


def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def symbol_js(symbol: str, expr: str) -> str:
    """A JS predicate on window.orderbook.symbols[symbol] (as `s`)."""
    return f"(() => {{ const s = window.orderbook?.symbols?.[{json.dumps(symbol)}]; return !!s && ({expr}); }})()"


async def open_page(browser, url: str):
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    errors = PageErrors(page)
    await page.goto(url, wait_until="domcontentloaded")
    return page, errors


async def assert_book_matches_node(page, symbol: str, depth: int) -> dict:
    """The page's book equals GET /book at the same seq (exact decimal strings)."""
    got = await page.evaluate(BOOK_AT_NODE_SEQ, [symbol, depth])
    node, mine = got["node"], got["page"]
    assert mine is not None, f"the page never held a book at or before the node's seq {node['seq']}"
    assert mine["epoch"] == node["epoch"]
    assert trim(mine["bids"], depth) == node["bids"], f"bids differ at node seq {node['seq']} (page seq {mine['seq']})"
    assert trim(mine["asks"], depth) == node["asks"], f"asks differ at node seq {node['seq']} (page seq {mine['seq']})"
    if depth == 0:
        assert int(mine["seq"]) == node["seq"]
        assert mine["checksum"] == node["checksum"]
    return got


@pytest.fixture
def node(tmp_path):
    """One node with the built-in simulator, as `make run` starts it."""
    started = []

    def start(*extra: str, port: int | None = None):
        n = start_server_process(tmp_path, *extra, port=port)
        started.append(n)
        return n

    yield start
    for n in started:
        n.kill()


# ------------------------------------------------------------------ live traffic


async def test_page_book_equals_the_node_over_simulator_traffic(node):
    n = node("--simulator-rate", "200")
    async with chromium() as browser:
        page, errors = await open_page(browser, f"{n.http}/?symbol={SYMBOL}")
        await wait_js(page, symbol_js(SYMBOL, "s.state === 'live'"))
        started = time.monotonic()
        checks = 0
        # At least 10 s of simulator traffic, compared with the node every so often.
        while time.monotonic() - started < 10 or checks < 3:
            await assert_book_matches_node(page, SYMBOL, 0)
            checks += 1
            await asyncio.sleep(1.5)  # spacing between comparisons; traffic flows meanwhile
        s = await page.evaluate(f"window.orderbook.symbols[{json.dumps(SYMBOL)}]")
        assert s["state"] == "live"
        assert (s["checksumFailures"], s["gaps"], s["resyncs"]) == (0, 0, 0), s
        assert s["verified"] > 100, s
        assert s["snapshots"] == 1
        stats = await page.evaluate("window.orderbook.stats")
        assert stats["decodeErrors"] == 0
        assert stats["latency"]["p99Ms"] is not None
        # The page draws at most once per frame, and does draw.
        assert await page.evaluate("window.orderbook.frames") > 0
        assert await page.evaluate("window.orderbook.connection") == "live"
        assert await page.evaluate("document.body.dataset.connection") == "live"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "trading-page-live.png"
        await page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot under live traffic: {shot}")
        assert errors.unexpected() == []


async def test_page_stays_live_and_verified_on_a_node_with_compression(node):
    """Chromium offers permessage-deflate by itself: with --compression the
    page's socket agrees to it (as the 101 it received says), and every
    message, the compressed snapshot included, still verifies."""
    n = node("--compression", "--simulator-rate", "200")
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        errors = PageErrors(page)
        cdp = await page.context.new_cdp_session(page)
        handshakes: list[dict] = []
        cdp.on("Network.webSocketHandshakeResponseReceived", lambda e: handshakes.append(e["response"]))
        await cdp.send("Network.enable")
        await page.goto(f"{n.http}/?symbol={SYMBOL}", wait_until="domcontentloaded")
        await wait_js(page, symbol_js(SYMBOL, "s.state === 'live'"))
        assert handshakes, "the page's WebSocket handshake was not seen"
        headers = {k.lower(): v for k, v in handshakes[0]["headers"].items()}
        assert headers.get("sec-websocket-extensions", "").startswith("permessage-deflate"), headers
        await wait_js(page, symbol_js(SYMBOL, "s.verified > 100"))
        await assert_book_matches_node(page, SYMBOL, 0)
        s = await page.evaluate(f"window.orderbook.symbols[{json.dumps(SYMBOL)}]")
        assert s["state"] == "live"
        assert (s["checksumFailures"], s["gaps"], s["resyncs"], s["snapshots"]) == (0, 0, 0, 1), s
        assert (await page.evaluate("window.orderbook.stats"))["decodeErrors"] == 0
        assert errors.unexpected() == []


async def test_page_opens_the_symbol_and_depth_of_its_url_and_lists_symbols(node):
    n = node()
    symbols = [s["symbol"] for s in http_json(n.http + "/symbols")["symbols"]]
    async with chromium() as browser:
        page, errors = await open_page(browser, f"{n.http}/?symbol=ETH-USD&depth=10")
        await wait_js(page, symbol_js("ETH-USD", "s.state === 'live' && s.depth === 10"))
        selected = await page.evaluate("window.orderbook.selected")
        assert selected == {"symbol": "ETH-USD", "depth": 10, "intervalMs": 0}
        options = await page.eval_on_selector_all("select#symbol option", "els => els.map(e => e.value)")
        assert options == symbols
        # An unknown symbol falls back to the first one, and says so.
        await page.goto(f"{n.http}/?symbol=NOPE", wait_until="domcontentloaded")
        await wait_js(page, symbol_js(symbols[0], "s.state === 'live'"))
        await wait_text(page, "NOPE")
        # The window.orderbook object is read-only.
        await page.evaluate("(() => { try { window.orderbook.connection = 'x'; } catch (e) {} })()")
        assert await page.evaluate("window.orderbook.connection") == "live"
        assert errors.unexpected("NOPE", "404") == []


# ------------------------------------------------------------------ controls


async def test_depth_and_conflation_controls_change_the_subscription(node):
    n = node("--simulator-rate", "200")
    async with chromium() as browser:
        page, errors = await open_page(browser, f"{n.http}/?symbol={SYMBOL}&depth=10")
        await wait_js(page, symbol_js(SYMBOL, "s.state === 'live' && s.depth === 10"))
        await assert_book_matches_node(page, SYMBOL, 10)

        await page.select_option("select#depth", "25")
        await wait_js(page, symbol_js(SYMBOL, "s.state === 'live' && s.depth === 25"))
        assert "depth=25" in page.url
        got = await assert_book_matches_node(page, SYMBOL, 25)
        assert len(got["page"]["bids"]) == min(25, len(got["node"]["bids"]))

        # The ladder shows exactly the subscription's book: its top 25.
        await page.select_option("select#interval", "1000")
        await wait_js(page, symbol_js(SYMBOL, "s.state === 'live' && s.intervalMs === 1000"))
        assert "interval=1000" in page.url
        # Read both in one turn of the page's loop, once the ladder shows the book's seq.
        ladder, book = await wait_js(
            page,
            f"(() => {{ const l = window.orderbook.ladder(), b = window.orderbook.book({json.dumps(SYMBOL)});"
            " return l && b && l.seq === b.seq && [l, b]; })()",
        )
        assert ladder["bids"] == book["bids"][:25] and ladder["asks"] == book["asks"][:25]
        # (A conflated book is the node's only at the seqs it is sent; the
        # checksum of each merged delta has proved that.)

        # Conflated at 1 s: about one delta a second, still verified and gap-free.
        before = await page.evaluate(f"window.orderbook.symbols[{json.dumps(SYMBOL)}]")
        await asyncio.sleep(3.2)  # three conflation intervals of traffic
        after = await page.evaluate(f"window.orderbook.symbols[{json.dumps(SYMBOL)}]")
        delivered = after["verified"] - before["verified"]
        assert 1 <= delivered <= 5, f"{delivered} updates in 3.2 s at interval 1000 ms"
        assert int(after["seq"]) - int(before["seq"]) >= delivered

        await page.select_option("select#interval", "0")
        await page.select_option("select#depth", "0")
        await wait_js(page, symbol_js(SYMBOL, "s.state === 'live' && s.depth === 0 && s.intervalMs === 0"))
        await assert_book_matches_node(page, SYMBOL, 0)
        s = await page.evaluate(f"window.orderbook.symbols[{json.dumps(SYMBOL)}]")
        assert (s["checksumFailures"], s["gaps"]) == (0, 0), s
        assert errors.unexpected() == []


# ------------------------------------------------------------------ failures


async def test_node_killed_and_restarted_page_rebuilds_from_a_new_epoch_without_reload(node):
    port = free_port()
    first = node(port=port)
    async with chromium() as browser:
        page, errors = await open_page(browser, f"{first.http}/?symbol={SYMBOL}")
        await wait_js(page, symbol_js(SYMBOL, "s.state === 'live'"))
        old_epoch = await page.evaluate(f"window.orderbook.symbols[{json.dumps(SYMBOL)}].epoch")
        await page.evaluate("window.__marker = 'still the same page'")

        first.kill()  # SIGKILL: no close frame
        await wait_js(page, "window.orderbook.connection === 'reconnecting'")
        await wait_text(page, "reconnecting")
        await wait_js(page, symbol_js(SYMBOL, "s.state === 'stale'"))

        second = node(port=port)
        new_epoch = http_json(second.http + "/healthz")["epoch"]
        assert new_epoch != old_epoch
        await wait_js(page, symbol_js(SYMBOL, f"s.state === 'live' && s.epoch === {json.dumps(new_epoch)}"), timeout=30)
        s = await page.evaluate(f"window.orderbook.symbols[{json.dumps(SYMBOL)}]")
        assert s["lastStart"] == "snapshot" and s["lastReason"] == "stale_epoch" and s["newEpoch"], s
        assert await page.evaluate("window.__marker") == "still the same page", "the page reloaded"
        await wait_text(page, "new epoch")
        await assert_book_matches_node(page, SYMBOL, 0)
        # The socket's failed reconnects are the browser's own console noise.
        assert errors.unexpected("WebSocket", "ERR_CONNECTION_REFUSED", "readyz") == []


async def test_page_behind_haproxy_resumes_on_the_survivor_with_no_gap_and_no_snapshot(tmp_path, cluster):  # noqa: F811
    first = cluster()
    await until(lambda: readyz(first.http).get("role") == "sequencer")
    second = cluster()
    nodes = [first, second]
    # The page lands on a replica, which is then killed.
    victim, survivor = second, first
    slots = await slots_landing_on(tmp_path, nodes, victim)
    async with (
        running_haproxy(tmp_path, *slots) as (lb_ws, _stats),
        Publisher.connect(survivor.feed_url) as pub,
        chromium() as browser,
    ):
        reply = await pub.send([instrument("F")], [update("F", asks=[(100_000, 1)])])
        assert reply.WhichOneof("kind") == "ack", reply
        await until(lambda: all(has_symbol(n.http, "F") for n in nodes))
        lb_http = lb_ws.replace("ws://", "http://").removesuffix("/ws")
        page, errors = await open_page(browser, f"{lb_http}/?symbol=F")
        await wait_js(page, symbol_js("F", "s.state === 'live'"))
        await until(lambda: connections(victim) == 1 and connections(survivor) == 0)
        await page.evaluate("window.__marker = 1")

        async with SteadyPublisher(pub, "F", spacing=0.01) as steady:
            await wait_js(page, symbol_js("F", "Number(s.seq) >= 30"))
            victim.kill()
            await wait_js(page, symbol_js("F", "s.lastStart === 'resumed' && s.state === 'live'"), timeout=30)
            resumed_seq = int(await page.evaluate("window.orderbook.symbols.F.seq"))
            await wait_js(page, symbol_js("F", f"Number(s.seq) >= {resumed_seq + 30}"), timeout=15)
        total = 1 + steady.published
        await wait_js(page, symbol_js("F", f"Number(s.seq) === {total}"), timeout=15)
        s = await page.evaluate("window.orderbook.symbols.F")
        assert s["snapshots"] == 1, f"a snapshot was sent instead of a resume: {s}"
        assert s["resumes"] >= 1
        assert (s["gaps"], s["checksumFailures"], s["resyncs"]) == (0, 0, 0), s
        assert await page.evaluate("window.__marker") == 1, "the page reloaded"
        assert connections(survivor) == 1
        await wait_text(page, "resumed")
        await assert_book_matches_node(page, "F", 0)
        assert errors.unexpected("WebSocket", "ERR_CONNECTION", "readyz") == []


# ------------------------------------------------------------------ worker mode


async def test_worker_mode_draws_the_verified_books_of_every_watched_symbol(node):
    """?worker=1&watch=all: the client runs in a Web Worker; the ladder and the
    markets panel show exactly the node's books once the feed stops."""
    n = node("--no-simulator", "--feed-token", FEED_TOKEN)
    rng = random.Random(7)
    async with Publisher.connect(n.feed_url) as pub, chromium() as browser:
        first = [
            update(s, bids=[(10_000 - i, 1 + i) for i in range(30)], asks=[(10_001 + i, 2 + i) for i in range(30)])
            for s in ("WA", "WB")
        ]
        reply = await pub.send([instrument("WA"), instrument("WB")], first)
        assert reply.WhichOneof("kind") == "ack", reply
        page, errors = await open_page(browser, f"{n.http}/?symbol=WA&worker=1&watch=all")
        await wait_js(page, "['WA', 'WB'].every((s) => window.orderbook.symbols[s]?.state === 'live')")
        assert (await page.evaluate("window.orderbook.perf.mode")) == "worker"
        assert await page.evaluate("window.orderbook.book('WA')") is None  # books stay in the worker
        for _ in range(200):  # one change per update: sizes, removals, new levels
            s = rng.choice(("WA", "WB"))
            price = rng.randrange(9_960, 10_040)
            size = rng.choice((0, rng.randrange(1, 50)))
            side = {"bids": [(price, size)]} if price <= 10_000 else {"asks": [(price, size)]}
            reply = await pub.send(updates=[update(s, **side)])
            assert reply.WhichOneof("kind") == "ack", reply
        final = {s: http_json(f"{n.http}/book/{s}?depth=20") for s in ("WA", "WB")}
        for s, b in final.items():
            await wait_js(page, symbol_js(s, f"s.seq === '{b['seq']}'"))
        ladder = await wait_js(
            page, f"(() => {{ const l = window.orderbook.ladder(); return l.seq === '{final['WA']['seq']}' && l; }})()"
        )
        assert (ladder["bids"], ladder["asks"]) == (final["WA"]["bids"], final["WA"]["asks"])
        rows = await wait_js(
            page,
            "(() => { const m = window.orderbook.markets(); return m.length === 2 && m.every((r) => r.seq === "
            + json.dumps({s: str(b["seq"]) for s, b in final.items()})
            + "[r.symbol]) && m; })()",
        )
        for row in rows:
            b = final[row["symbol"]]
            assert (row["bid"], row["ask"]) == (b["bids"][0][0], b["asks"][0][0]), row
        for s in ("WA", "WB"):
            v = await page.evaluate(f"window.orderbook.symbols[{json.dumps(s)}]")
            assert (v["gaps"], v["checksumFailures"], v["resyncs"]) == (0, 0, 0), v
            assert v["checksum"] == http_json(f"{n.http}/book/{s}?depth=0")["checksum"]
        assert await page.evaluate("window.orderbook.perf.workerStreamMs") > 0
        assert errors.unexpected() == []
