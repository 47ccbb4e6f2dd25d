"""Graceful drain (SIGTERM, SIGINT): the node says "draining" on /readyz,
refuses new upgrades, closes its subscribers with 1001 "draining: reconnect"
spread over --drain-seconds, keeps its publishers until they are gone, then
stops; a second signal stops it at once. In a cluster, 2,000 subscribers of
a drained node resume on the other node without a gap; the Python client
behind the TLS-terminating HAProxy moves over without an error.

The close schedule itself (orderbook/server/drain.py) is pure and driven
directly."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import random
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from orderbook.client import OrderbookClient
from orderbook.server.drain import CLOSE_REASON, DrainSchedule
from orderbook.session.backoff import Backoff

from .drain_swarm import Swarm
from .harness import (
    FEED_TOKEN,
    Publisher,
    Subscriber,
    free_port,
    has_symbol,
    http_get,
    instrument,
    readyz,
    start_server_process,
    until,
    update,
)
from .redis_harness import redis_factory, redis_proc  # noqa: F401
from .test_tls import Pki, haproxy_tls

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------ the schedule


def test_one_slot_per_subscriber_in_shuffled_order():
    n, window = 1000, 5.0
    schedule = DrainSchedule(range(n), window, random.Random(3))
    times = schedule.times
    slot = window / n
    # Each close lies in its own slot: as even as a fixed rate, never two together.
    for i, t in enumerate(times):
        assert i * slot <= t < (i + 1) * slot
    order = schedule.due(window)
    assert sorted(order) == list(range(n)) and order != list(range(n))
    assert schedule.next_at() is None and len(schedule) == 0


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 50),
    window=st.floats(0, 10, allow_nan=False),
    steps=st.lists(st.floats(0, 12, allow_nan=False), max_size=20),
    seed=st.integers(0, 2**32),
)
def test_each_subscriber_is_handed_out_once_when_its_time_comes(n, window, steps, seed):
    schedule = DrainSchedule(range(n), window, random.Random(seed))
    planned = schedule.times
    times: dict[int, float] = {}
    seen: list[int] = []
    elapsed = 0.0
    for step in [*sorted(steps), window]:
        elapsed = max(elapsed, step)
        due = schedule.due(elapsed)
        k = len(seen)
        for j, item in enumerate(due):
            times[item] = planned[k + j]
            assert planned[k + j] <= elapsed
        seen.extend(due)
        nxt = schedule.next_at()
        assert nxt is None or nxt > elapsed
    assert sorted(seen) == list(range(n))
    assert all(0 <= t <= max(window, 0) for t in times.values())


def test_a_window_of_zero_closes_everyone_at_once():
    schedule = DrainSchedule("abc", 0.0, random.Random(1))
    assert schedule.next_at() == 0.0
    assert sorted(schedule.due(0.0)) == ["a", "b", "c"]
    assert DrainSchedule([], 5.0, random.Random(1)).next_at() is None


# ------------------------------------------------------------------ one node


async def upgrade(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Authorization": f"Bearer {FEED_TOKEN}",
    }
    return await http_get(port, path, headers)


async def test_a_draining_node_refuses_upgrades_keeps_publishers_and_a_second_signal_stops_it(tmp_path):
    node = start_server_process(tmp_path, "--no-simulator", "--feed-token", FEED_TOKEN, "--drain-seconds", "60")
    try:
        async with Publisher.connect(node.feed_url) as pub:
            reply = await pub.send([instrument("A")], [update("A", bids=[(990, 5)], asks=[(1010, 5)])])
            assert reply.WhichOneof("kind") == "ack"
            async with Subscriber.connect(node.url) as sub:
                await sub.subscribe("A")
                await sub.until(lambda: sub.snapshots.get("A"))
                node.proc.send_signal(signal.SIGTERM)

                await until(lambda: readyz(node.http).get("status") == "draining", 10)
                status, _, _ = await http_get(node.port, "/readyz")
                assert status == 503
                for path in ("/ws", "/feed"):
                    status, headers, body = await upgrade(node.port, path)
                    assert status == 503, (path, body)
                    assert headers.get("retry-after") == "1"
                    assert b"draining" in body and b"reconnect to another node" in body
                # Plain HTTP is still served meanwhile.
                status, _, _ = await http_get(node.port, "/healthz")
                assert status == 200

                # The publisher stays: its batches are applied and reach the
                # subscribers not closed yet (one slot of 60 s: almost surely this one).
                reply = await pub.send(updates=[update("A", bids=[(991, 1)])])
                assert reply.WhichOneof("kind") == "ack"
                await sub.until(lambda: len(sub.seen.get("A", [])) == 1, 10)

                # A second signal: everyone closed now, the node stops.
                started = time.monotonic()
                node.proc.send_signal(signal.SIGINT)
                await asyncio.wait_for(sub.ws.wait_closed(), 15)
                assert (sub.ws.close_code, sub.ws.close_reason) == (1001, "server shutting down")
                await asyncio.wait_for(pub.ws.wait_closed(), 15)
        await asyncio.to_thread(node.proc.wait, 15)
        assert node.proc.returncode == 0
        assert time.monotonic() - started < 15  # not the 60 s window
        log = node.log_path.read_text()
        assert "SIGTERM: draining" in log and "SIGINT while draining: stopping now" in log
    finally:
        node.kill()


async def test_the_python_client_takes_the_drain_close_as_a_reconnect_not_an_error(tmp_path):
    node = start_server_process(tmp_path, "--no-simulator", "--feed-token", FEED_TOKEN, "--drain-seconds", "1")
    try:
        async with Publisher.connect(node.feed_url) as pub:
            await pub.send([instrument("A")], [update("A", bids=[(990, 5)], asks=[(1010, 5)])])
            client = OrderbookClient(node.url, ["A"], backoff=Backoff(rng=random.Random(1)))
            async with client:
                await client.wait_synced(timeout=10)
                drained_at = time.monotonic()
                node.proc.send_signal(signal.SIGTERM)
                await until(lambda: client.last_close_code == 1001, 10)
                assert client.last_close_reason == CLOSE_REASON
                # It comes back at once (jittered within 0.25 s): here the
                # same node refuses it while draining, or is gone.
                await until(lambda: client.stats.connect_failures >= 1, 10)
                # The close itself is no error (only the refused attempts
                # after it are), and the client keeps its book to resume from.
                assert not [e for e in client.last_errors if isinstance(e, ConnectionClosed)]
                assert len(client.last_errors) == client.stats.connect_failures
                assert client.books["A"].seq == 1
                assert time.monotonic() - drained_at < 1 + 5  # within the window and one close handshake
        await asyncio.to_thread(node.proc.wait, 15)
        assert node.proc.returncode == 0
    finally:
        node.kill()


# ------------------------------------------------------------------ a cluster: 2,000 subscribers move


def cluster_node(tmp_path: Path, redis_url: str, *extra: str):
    return start_server_process(
        tmp_path,
        *("--redis", redis_url, "--feed-token", FEED_TOKEN, "--lease-ttl", "1"),
        # Every subscriber of this test comes from 127.0.0.1.
        *("--max-connections-per-ip", "0", "--handshake-rate", "0", "--global-handshake-rate", "0"),
        *extra,
    )


class Pump:
    """Publishes one change every `interval` seconds until stopped."""

    def __init__(self, pub: Publisher, symbol: str, interval: float) -> None:
        self.pub, self.symbol, self.interval = pub, symbol, interval
        self.published = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            i = self.published
            reply = await self.pub.send(updates=[update(self.symbol, bids=[(900 + i % 50, 1 + i)])])
            assert reply.WhichOneof("kind") == "ack", reply
            self.published += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def __aenter__(self) -> Pump:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


async def watch_readyz(http: str, seen: list[str], stop: asyncio.Event) -> None:
    while not stop.is_set():
        status = (await asyncio.to_thread(readyz, http)).get("status")
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        await asyncio.sleep(0.05)  # sampling the node's answer over time


N = 2000
WINDOW = 4.0


async def test_2000_subscribers_drained_over_the_window_resume_on_the_other_node_without_a_gap(
    tmp_path,
    redis_proc,  # noqa: F811
):
    # The survivor starts first and takes the sequencer lease, so that the
    # drained node's stop changes nothing but where subscribers are.
    survivor = cluster_node(tmp_path, redis_proc.url)
    drained = None
    swarm = None
    try:
        await until(lambda: readyz(survivor.http).get("role") == "sequencer")
        drained = cluster_node(tmp_path, redis_proc.url, "--drain-seconds", str(WINDOW))
        async with Publisher.connect(survivor.feed_url) as pub:
            reply = await pub.send([instrument("D")], [update("D", bids=[(990, 5)], asks=[(1010, 5)])])
            assert reply.WhichOneof("kind") == "ack", reply
            await until(lambda: has_symbol(drained.http, "D") and has_symbol(survivor.http, "D"))

            swarm = Swarm([drained.url, survivor.url], "D", N)
            await swarm.connect_all(timeout=60)
            assert swarm.live == [N, 0]

            seen: list[str] = []
            stop_watching = asyncio.Event()
            async with Pump(pub, "D", 0.05) as pump:
                await swarm.until(lambda: swarm.newest >= 5, 10, "deltas flowing")
                watcher = asyncio.create_task(watch_readyz(drained.http, seen, stop_watching))
                swarm.t0 = swarm.loop.time()
                drained.proc.send_signal(signal.SIGTERM)
                await swarm.until(lambda: swarm.live == [0, N], WINDOW + 40, "every subscriber live on the survivor")
                stop_watching.set()
                await watcher
                await asyncio.to_thread(drained.proc.wait, 20)
                assert drained.proc.returncode == 0
            final = 1 + pump.published  # the first book, then one change per batch
            await swarm.until(lambda: all(s.seq == final for s in swarm.subs), 30, "the last change everywhere")

        assert not swarm.problems(), swarm.problems()[:10]
        for sub in swarm.subs:
            assert [(c.code, c.reason, c.node) for c in sub.closes] == [(1001, CLOSE_REASON, 0)], sub.index
            assert (sub.snapshots, sub.resumes) == (1, 1), (sub.index, sub.snapshot_reasons)
            # No gap, no duplicate across the switch: every change once, in order.
            assert sub.first_seq is not None
            assert sub.seqs == list(range(sub.first_seq + 1, final + 1)), sub.index
        assert "draining" in seen, seen

        # Spread over the window, not a herd at its start (uniform: 10% per tenth).
        times = swarm.close_times(0)
        assert len(times) == N
        first_tenth = sum(t < WINDOW / 10 for t in times) / N
        assert first_tenth < 0.3, f"{first_tenth:.0%} of the closes in the first tenth of the window"
        assert times[N // 2] > WINDOW / 4, f"median close at {times[N // 2]:.2f} s"
        assert times[-1] > WINDOW / 2
        assert times[-1] < WINDOW + 10  # the clients' clock includes the load of this machine
    finally:
        if swarm is not None:
            swarm.stop()
        for node in (drained, survivor):
            if node is not None:
                node.kill()


# ------------------------------------------------------------------ behind the TLS-terminating HAProxy


def proxy_states(stats_url: str) -> dict[str, str]:
    """HAProxy's view of the nodes (UP, DOWN, ...); {} while it does not answer."""
    try:
        with urllib.request.urlopen(stats_url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == "nodes" and r["svname"].startswith("node")}


async def test_python_clients_behind_the_tls_proxy_move_to_the_other_node_without_an_error(
    tmp_path,
    redis_proc,  # noqa: F811
):
    """A rolling restart as deployed: HAProxy (docker/haproxy-tls.cfg) keeps
    the draining node in rotation, so its sessions are not cut at once; each
    client, closed with 1001 "draining: reconnect", comes back through the
    proxy, whose retry of the drained node's 503 lands it on the other node,
    and resumes there. The client sees no error and no refusal."""
    pki = Pki(tmp_path)
    nodes = [cluster_node(tmp_path, redis_proc.url, "--drain-seconds", "2") for _ in range(2)]
    clients: list[OrderbookClient] = []
    try:
        async with Publisher.connect(nodes[0].feed_url) as pub:
            reply = await pub.send([instrument("D")], [update("D", bids=[(990, 5)], asks=[(1010, 5)])])
            assert reply.WhichOneof("kind") == "ack", reply
            await until(lambda: all(has_symbol(n.http, "D") for n in nodes))
        bind, stats = free_port(), free_port()
        slots = [f"127.0.0.1:{n.port}" for n in nodes]
        with haproxy_tls(tmp_path, *slots, bind, pki.pem, stats) as (proc, log):
            stats_url = f"http://127.0.0.1:{stats}/stats;csv"
            await until(lambda: proxy_states(stats_url) == {"node1": "UP", "node2": "UP"})
            assert proc.poll() is None, log.read_text()
            for _ in range(3):
                client = OrderbookClient(f"wss://127.0.0.1:{bind}/ws", ["D"], ssl=pki.client_context(), record=True)
                clients.append(client)
                await client.__aenter__()
            for client in clients:
                await client.wait_synced(timeout=10)
            # Sticky by source address: all three are on one node; drain that one.
            await until(lambda: sorted(readyz(n.http).get("connections") for n in nodes) == [0, 3])
            home = next(n for n in nodes if readyz(n.http).get("connections") == 3)
            other = nodes[1] if home is nodes[0] else nodes[0]
            async with Publisher.connect(other.feed_url) as pub, Pump(pub, "D", 0.02) as pump:
                await until(lambda: all(c.books["D"].seq >= 5 for c in clients))
                home.proc.send_signal(signal.SIGTERM)
                await until(lambda: all(c.stats.resumes == 1 for c in clients), 20)
                await until(lambda: readyz(other.http).get("connections") == 3)
                await asyncio.to_thread(home.proc.wait, 20)
                assert home.proc.returncode == 0
            final = 1 + pump.published
            for client in clients:
                await client.wait_seq("D", final, timeout=10)
                st = client.stats
                assert (client.last_close_code, client.last_close_reason) == (1001, CLOSE_REASON)
                assert not client.last_errors, list(client.last_errors)
                assert (st.connects, st.connect_failures, st.resumes) == (2, 0, 1)
                assert (st.gaps, st.duplicates, st.resyncs, st.checksum_failures) == (0, 0, 0, 0)
                assert client.snapshot_counts["D"] == 1
                (snap,) = client.snapshot_seqs["D"]
                assert client.seen_seqs["D"] == [(snap[0], q) for q in range(snap[1] + 1, final + 1)]
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)
        for node in nodes:
            node.kill()
