"""The service as a user runs it: `orderbook serve` in its own process, with
the built-in simulator (what `make run` starts) and across a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from orderbook.v1 import stream_pb2

from .harness import FEED_TOKEN, Publisher, Subscriber, instrument, start_server_process, update

pytestmark = pytest.mark.timeout(90)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


@pytest.fixture
def sim_server(tmp_path):
    sp = start_server_process(tmp_path, "--seed", "7", "--simulator-rate", "400")
    yield sp
    sp.stop()


async def test_embedded_default_serves_live_simulated_books(sim_server):
    symbols = get_json(sim_server.http + "/symbols")["symbols"]
    scales = {s["symbol"]: (s["price_scale"], s["size_scale"]) for s in symbols}
    assert scales["BTC-USD"] == (2, 8) and scales["AAPL"] == (2, 0) and len(scales) >= 4
    async with Subscriber.connect(sim_server.url) as sub:
        for sym in ("BTC-USD", "AAPL"):
            await sub.subscribe(sym)
        await sub.until(lambda: all(len(sub.seen.get(s, [])) >= 10 for s in ("BTC-USD", "AAPL")), timeout=20)
        # Every delta's prev_seq chained and its checksum verified in the follower.
        for sym in ("BTC-USD", "AAPL"):
            f = sub.followers[sym]
            assert f.synced and f.book.bid_count() > 0 and f.book.ask_count() > 0
            assert not f.book.crossed()
    book = get_json(sim_server.http + "/book/BTC-USD?depth=3")
    assert len(book["bids"]) == 3 and len(book["bids"][0][1].split(".")[1]) == 8


def test_watch_prints_a_top_of_book(sim_server):
    out = subprocess.run(
        [sys.executable, "-m", "orderbook.cli", "watch", "BTC-USD", "--url", sim_server.url, "--once", "--rows", "3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "BTC-USD" in out.stdout and "seq" in out.stdout.lower()


async def test_restart_gives_a_new_epoch_and_resume_falls_back_to_a_snapshot(tmp_path):
    args = ("--no-simulator", "--feed-token", FEED_TOKEN)
    first = start_server_process(tmp_path, *args)
    port = first.port
    try:
        async with Publisher.connect(first.feed_url) as pub:
            await pub.send([instrument("R")], [update("R", bids=[(100, 1)], asks=[(105, 2)])])
            await pub.send(updates=[update("R", bids=[(101, 3)])])
        async with Subscriber.connect(first.url) as sub:
            await sub.subscribe("R")
            await sub.until_seq("R", 2)
            follower = sub.followers["R"]
            old_point = follower.resume_point()
    finally:
        first.stop()
    second = start_server_process(tmp_path, *args, port=port)
    try:
        async with Publisher.connect(second.feed_url) as pub:
            await pub.send([instrument("R")], [update("R", bids=[(90, 9)], asks=[(95, 1)])])
            await pub.send(updates=[update("R", asks=[(96, 4)])])
        async with Subscriber.connect(second.url) as sub:
            sub.followers["R"] = follower
            await sub.subscribe("R", resume=old_point)
            await sub.until(lambda: sub.snapshots.get("R"))
            ack = sub.acks[0]
            assert ack.start == stream_pb2.START_SNAPSHOT
            assert ack.reason == stream_pb2.SNAPSHOT_REASON_STALE_EPOCH
            assert ack.epoch != old_point.epoch
            assert follower.book.bids() == [(90, 9)] and follower.book.asks() == [(95, 1), (96, 4)]
            assert follower.seq == 2 and follower.epoch == ack.epoch
    finally:
        second.stop()
