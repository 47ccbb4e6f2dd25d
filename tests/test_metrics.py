"""GET /metrics: what a node counts, as an operator scraping it sees it, over
real sockets. Every figure is checked against what the clients themselves
sent, received or were refused."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import socket
import time

import pytest
import websockets
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from orderbook.core.history import HistoryLimits
from orderbook.core.resume import ResumePoint
from orderbook.server.app import begin_drain, create_app
from orderbook.wire import codec

from .harness import (
    Publisher,
    Subscriber,
    eventually,
    free_port,
    http_get,
    http_request,
    instrument,
    serve_in_process,
    start_server_process,
    test_settings,
    update,
)
from .test_slow_consumer import churn, churn_batch, small_buffer_connection

pytestmark = pytest.mark.timeout(90)


class Scrape:
    """One scrape of /metrics: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.values[s.name, frozenset(s.labels.items())] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in self.values, f"no sample {name}{labels} in /metrics"
        return self.values[key]

    def names(self) -> set[str]:
        return {name for name, _ in self.values}

    def labelled(self, name: str, label: str) -> dict[str, float]:
        return {dict(labels)[label]: v for (n, labels), v in self.values.items() if n == name}


async def scrape(port: int, headers: dict[str, str] | None = None) -> Scrape:
    status, got, body = await http_get(port, "/metrics", headers)
    assert status == 200, body
    assert got["content-type"] == CONTENT_TYPE_LATEST
    return Scrape(body.decode())


def upgrade_headers(**extra: str) -> dict[str, str]:
    """A valid WebSocket upgrade request's headers (for handshakes refused before the 101)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": key}


async def refused(port: int, path: str, headers: dict[str, str]) -> int:
    status, _, _ = await http_request(port, path, headers=headers)
    assert status != 101
    return status


# ------------------------------------------------------------------ traffic


async def test_counters_and_gauges_match_what_the_clients_saw():
    async with (
        serve_in_process() as srv,
        Publisher.connect(srv.feed_url) as pub,
        Subscriber.connect(srv.url) as sub,
    ):
        updates = [update("A", bids=[(100, 1), (99, 2)], asks=[(101, 1)])]
        updates += [update("A", bids=[(100 - i % 3, 2 + i)]) for i in range(20)]
        await pub.send([instrument("A")], updates[:1])
        await sub.subscribe("A")
        # The raw bytes of every message the subscriber gets: protobuf payloads.
        received: dict[str, list[int]] = {}
        while "snapshot" not in received:
            data = await asyncio.wait_for(sub.ws.recv(), 10)
            received.setdefault(codec.parse_server_message(data).WhichOneof("kind"), []).append(len(data))
        for u in updates[1:]:
            await pub.send(updates=[u])
        while len(received.get("delta", [])) < 20:
            data = await asyncio.wait_for(sub.ws.recv(), 10)
            received.setdefault(codec.parse_server_message(data).WhichOneof("kind"), []).append(len(data))

        m = await scrape(srv.port)
        assert m("orderbook_messages_sent_total", kind="delta") == 20
        assert m("orderbook_sent_payload_bytes_total", kind="delta") == sum(received["delta"])
        assert m("orderbook_messages_sent_total", kind="snapshot") == 1
        assert m("orderbook_sent_payload_bytes_total", kind="snapshot") == sum(received["snapshot"])
        assert m("orderbook_messages_sent_total", kind="other") == len(received["subscribed"]) == 1
        # One write per flush that had something for the subscriber: at most one per message.
        assert 1 <= m("orderbook_socket_writes_total") <= 22
        assert m("orderbook_feed_batches_accepted_total") == 21
        assert m("orderbook_deltas_published_total") == 21
        assert m("orderbook_level_changes_total") == sum(len(u.bids) + len(u.asks) for u in updates)
        assert m("orderbook_symbol_seq", symbol="A") == srv.hub.channels["A"].seqbook.seq == 21
        assert m("orderbook_symbol_subscribers", symbol="A") == 1
        assert m("orderbook_connections", endpoint="/ws") == 1
        assert m("orderbook_connections", endpoint="/feed") == 1
        assert m("orderbook_symbols") == 1
        assert m("orderbook_ready") == 1
        assert m.labelled("orderbook_subscriptions", "kind") == {"full": 1, "depth": 0, "conflated": 0}
        # Sampled (the oldest change of a flush, at most one flush every 10 ms).
        assert 1 <= m("orderbook_publish_to_write_seconds_count") <= 20
        assert 0 < m("orderbook_publish_to_write_seconds_sum") < 10 * m("orderbook_publish_to_write_seconds_count")

        async with Subscriber.connect(srv.url) as depth, Subscriber.connect(srv.url) as conflated:
            await depth.subscribe("A", depth=5)
            await conflated.send(codec.subscribe_message("A", interval_ms=100, request_id=1))
            await depth.until(lambda: depth.snapshots.get("A"))
            await conflated.until(lambda: conflated.snapshots.get("A"))
            m = await scrape(srv.port)
            assert m.labelled("orderbook_subscriptions", "kind") == {"full": 1, "depth": 1, "conflated": 1}
            assert m("orderbook_symbol_subscribers", symbol="A") == 3
            assert m("orderbook_connections", endpoint="/ws") == 3
        await eventually(lambda: len(srv.hub.connections) == 1)
        assert (await scrape(srv.port))("orderbook_connections", endpoint="/ws") == 1


async def test_heartbeats_and_errors_are_counted_by_kind():
    async with (
        serve_in_process(test_settings(symbol_heartbeat=0.05)) as srv,
        Publisher.connect(srv.feed_url) as pub,
        Subscriber.connect(srv.url) as sub,
    ):
        await pub.send([instrument("A")], [update("A", bids=[(100, 1)], asks=[(101, 1)])])
        await sub.subscribe("A")
        await sub.until(lambda: len(sub.heartbeats) >= 3)
        await sub.subscribe("NOPE")
        await sub.until(lambda: sub.errors)
        m = await scrape(srv.port)
        assert m("orderbook_messages_sent_total", kind="error") == 1
        # Heartbeats keep coming: at least those the subscriber has read were counted.
        assert m("orderbook_messages_sent_total", kind="heartbeat") >= len(sub.heartbeats) >= 3


async def test_no_metrics_per_symbol_leaves_out_the_symbol_series_only():
    async with serve_in_process(test_settings(metrics_per_symbol=False)) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("A"), instrument("B")], [update("A", bids=[(100, 1)])])
        m = await scrape(srv.port)
        assert not {n for n in m.names() if n.startswith("orderbook_symbol_")}
        assert 'symbol="' not in m.text
        assert m("orderbook_symbols") == 2
        assert m("orderbook_deltas_published_total") == 1


async def test_each_app_has_its_own_registry():
    async with serve_in_process() as busy, serve_in_process() as idle, Publisher.connect(busy.feed_url) as pub:
        await pub.send([instrument("A")], [update("A", bids=[(100, 1)])])
        assert (await scrape(busy.port))("orderbook_feed_batches_accepted_total") == 1
        quiet = await scrape(idle.port)
        assert quiet("orderbook_feed_batches_accepted_total") == 0
        assert quiet("orderbook_handshakes_total", endpoint="/feed", outcome="accepted") == 0


async def test_a_blocked_event_loop_shows_in_the_lag_histogram():
    async with serve_in_process() as srv:

        def late(m: Scrape) -> float:
            """Wake-ups more than 0.1 s late."""
            return m("orderbook_event_loop_lag_seconds_count") - m("orderbook_event_loop_lag_seconds_bucket", le="0.1")

        before = await scrape(srv.port)
        time.sleep(0.3)  # noqa: ASYNC251  (the point: hold the node's loop)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while late(after := await scrape(srv.port)) == late(before):
            assert loop.time() < deadline, "a wake-up 0.2 s late was not seen"
            await asyncio.sleep(0.05)  # polling a condition under a deadline
        assert late(after) - late(before) == 1
        assert after("orderbook_event_loop_lag_seconds_sum") - before("orderbook_event_loop_lag_seconds_sum") >= 0.15


# ------------------------------------------------------------------ refusals


async def test_handshakes_are_counted_by_outcome():
    settings = test_settings(subscriber_token="sub-secret", max_connections=1, feed_token=None)
    async with serve_in_process(settings) as srv:
        port = srv.port
        assert await refused(port, "/ws", {}) == 426
        assert await refused(port, "/ws", {**upgrade_headers(), "Origin": "https://evil.example"}) == 403
        assert await refused(port, "/ws", upgrade_headers()) == 401
        assert await refused(port, "/ws", {**upgrade_headers(), "Sec-WebSocket-Version": "8"}) == 426
        assert await refused(port, "/feed", upgrade_headers()) == 403
        async with websockets.connect(srv.url + "?token=sub-secret"):
            assert await refused(port, "/ws?token=sub-secret", upgrade_headers()) == 503
            m = await scrape(port)
        outcomes = {
            (e, o): m("orderbook_handshakes_total", endpoint=e, outcome=o)
            for e in ("/ws", "/feed")
            for o in ("accepted", "origin", "token", "full", "rate_limited", "bad_request", "disabled", "draining")
        }
        assert {k: v for k, v in outcomes.items() if v} == {
            ("/ws", "bad_request"): 2,
            ("/ws", "origin"): 1,
            ("/ws", "token"): 1,
            ("/ws", "accepted"): 1,
            ("/ws", "full"): 1,
            ("/feed", "disabled"): 1,
        }


async def test_rate_limited_and_wrong_token_handshakes_are_counted():
    settings = test_settings(handshake_rate=0.01, handshake_burst=2)
    async with serve_in_process(settings) as srv:
        port = srv.port
        assert await refused(port, "/feed", {**upgrade_headers(), "Authorization": "Bearer wrong"}) == 401
        async with Publisher.connect(srv.feed_url):
            assert await refused(port, "/ws", upgrade_headers()) == 429
            assert await refused(port, "/feed", upgrade_headers()) == 429
            m = await scrape(port)
        assert m("orderbook_handshakes_total", endpoint="/feed", outcome="token") == 1
        assert m("orderbook_handshakes_total", endpoint="/feed", outcome="accepted") == 1
        assert m("orderbook_handshakes_total", endpoint="/ws", outcome="rate_limited") == 1
        assert m("orderbook_handshakes_total", endpoint="/feed", outcome="rate_limited") == 1


async def test_handshakes_refused_while_draining_are_counted():
    async with serve_in_process(test_settings(drain_seconds=0.0)) as srv:
        await begin_drain(srv.app)
        assert await refused(srv.port, "/ws", upgrade_headers()) == 503
        assert await refused(srv.port, "/feed", upgrade_headers()) == 503
        m = await scrape(srv.port)
        assert m("orderbook_handshakes_total", endpoint="/ws", outcome="draining") == 1
        assert m("orderbook_handshakes_total", endpoint="/feed", outcome="draining") == 1
        assert m("orderbook_ready") == 0


async def test_refused_feed_batches_are_counted_by_code():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        ok = await pub.send([instrument("A"), instrument("B", price_increment=5)], [update("A", bids=[(100, 1)])])
        assert ok.WhichOneof("kind") == "ack"
        unknown = await pub.send(updates=[update("NOPE", bids=[(1, 1)])])
        off_tick = await pub.send(updates=[update("B", bids=[(101, 1)])])
        conflict = await pub.send([instrument("A", price_scale=3)])
        codes = [r.error.code for r in (unknown, off_tick, conflict)]
        assert codes == [
            codec.ErrorCode.ERROR_CODE_INVALID_UPDATE,
            codec.ErrorCode.ERROR_CODE_INVALID_UPDATE,
            codec.ErrorCode.ERROR_CODE_INSTRUMENT_CONFLICT,
        ]
        await pub.ws.send(b"\xff\xff not protobuf")
        malformed = codec.parse_feed_reply(await asyncio.wait_for(pub.ws.recv(), 10))
        assert malformed.error.code == codec.ErrorCode.ERROR_CODE_MALFORMED_MESSAGE
        m = await scrape(srv.port)
        refusals = {k: v for k, v in m.labelled("orderbook_feed_batches_refused_total", "code").items() if v}
        assert refusals == {"invalid_update": 2, "instrument_conflict": 1, "malformed_message": 1}
        assert m("orderbook_feed_batches_accepted_total") == 1


async def test_resyncs_are_counted_by_reason_and_resumes_apart():
    settings = test_settings(history=HistoryLimits(max_entries=3, max_bytes=1 << 20))
    async with serve_in_process(settings) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("A")], [update("A", bids=[(100, 1)])])
        for i in range(6):
            await pub.send(updates=[update("A", bids=[(100, 2 + i)])])
        epoch, seq = srv.hub.epoch, srv.hub.channels["A"].seqbook.seq
        asks = [
            (ResumePoint(epoch + 1, seq), 0),  # stale_epoch
            (ResumePoint(epoch, seq + 5), 0),  # ahead
            (ResumePoint(epoch, 1), 0),  # history_exhausted (3 entries kept)
            (ResumePoint(epoch, seq), 5),  # unsupported: depth-limited
            (ResumePoint(epoch, seq - 1), 0),  # resumed
            (None, 0),  # a new subscription: no resync
        ]
        for resume, depth in asks:
            async with Subscriber.connect(srv.url) as sub:
                await sub.send(codec.subscribe_message("A", depth, resume, 1))
                await sub.until(lambda sub=sub: sub.acks)
        m = await scrape(srv.port)
        assert m.labelled("orderbook_resyncs_total", "reason") == {
            "stale_epoch": 1,
            "ahead": 1,
            "history_exhausted": 1,
            "unsupported": 1,
            "slow_consumer": 0,
        }
        assert m("orderbook_resumes_total") == 1
        assert m("orderbook_messages_sent_total", kind="snapshot") == 5
        assert m("orderbook_messages_sent_total", kind="delta") == 1  # the one change the resume replayed


async def test_a_slow_consumer_is_counted_as_it_lags_then_resyncs():
    settings = test_settings(client_buffer_limit=64 * 1024, slow_client_timeout=60.0)
    async with serve_in_process(settings) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [churn(0)])
        ws = await small_buffer_connection(srv.url)
        slow = Subscriber(ws)
        await slow.subscribe("S")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        i = 0
        # Publish until the operator sees it: a connection over its limit.
        while (m := await scrape(srv.port))("orderbook_slow_consumer_actions_total", action="lagging") == 0:
            assert loop.time() < deadline, "the slow client never showed as lagging"
            for _ in range(10):
                i += 1
                await pub.send(updates=churn_batch(i))
        assert m("orderbook_slow_connections") == 1
        assert m("orderbook_resyncs_total", reason="slow_consumer") == 0
        # It reads again: drained, it gets a fresh snapshot.
        await slow.until(lambda: slow.snapshots.get("S", 0) >= 2, timeout=30)
        m = await scrape(srv.port)
        assert m("orderbook_resyncs_total", reason="slow_consumer") >= 1
        assert m("orderbook_slow_consumer_actions_total", action="lagging") == 1
        assert m("orderbook_slow_consumer_actions_total", action="closed") == 0
        await eventually(lambda: srv.hub.slow_connections == 0)
        assert (await scrape(srv.port))("orderbook_slow_connections") == 0
        await ws.close()


async def test_a_slow_consumer_closed_for_good_is_counted():
    settings = test_settings(client_buffer_limit=32 * 1024, slow_client_timeout=0.5)
    async with serve_in_process(settings) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [churn(0)])
        ws = await small_buffer_connection(srv.url)
        await ws.send(codec.subscribe_message("S").SerializeToString())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        i = 0
        while (await scrape(srv.port))("orderbook_slow_consumer_actions_total", action="closed") == 0:
            assert loop.time() < deadline, "the stuck client was never closed"
            i += 1
            await pub.send(updates=churn_batch(i))
        m = await scrape(srv.port)
        assert m("orderbook_slow_consumer_actions_total", action="closed") == 1
        assert m("orderbook_slow_consumer_actions_total", action="lagging") == 1
        assert m("orderbook_connections", endpoint="/ws") == 0
        ws.transport.abort()


# ------------------------------------------------------------------ where /metrics is served


async def test_http_token_guards_metrics_on_the_node_port():
    async with serve_in_process(test_settings(http_token="http-secret")) as srv:
        status, _, _ = await http_get(srv.port, "/metrics")
        assert status == 401
        await scrape(srv.port, {"Authorization": "Bearer http-secret"})


async def test_metrics_port_serves_metrics_and_the_node_port_does_not():
    metrics_port = free_port()
    async with serve_in_process(test_settings(metrics_port=metrics_port)) as srv, Publisher.connect(srv.feed_url) as p:
        await p.send([instrument("A")], [update("A", bids=[(100, 1)])])
        status, _, _ = await http_get(srv.port, "/metrics")
        assert status == 404
        m = await scrape(metrics_port)
        assert m("orderbook_feed_batches_accepted_total") == 1
        head = await raw_response(metrics_port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")  # no body
        assert f"Content-Type: {CONTENT_TYPE_LATEST}".encode() in head
        assert (await http_get(metrics_port, "/metrics?x=1"))[0] == 200
        status, _, body = await http_get(metrics_port, "/symbols")
        assert (status, body) == (404, b"this port serves /metrics only\n")
        status, got, _ = await http_request(metrics_port, "/metrics", "POST")
        assert (status, got["allow"]) == (405, "GET, HEAD")
        assert await raw_status(metrics_port, b"HELLO\r\n\r\n") == 400
        assert await raw_status(metrics_port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n") == 431
    # Stopped with the node: nothing listens there any more.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", metrics_port)


async def raw_response(port: int, request: bytes) -> bytes:
    """Everything the peer sends back before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def raw_status(port: int, request: bytes) -> int:
    return int((await raw_response(port, request)).split()[1])


def test_a_metrics_port_that_cannot_work_is_refused_before_start():
    with pytest.raises(ValueError, match="--metrics-port 8100 is the node's own --port"):
        create_app(dataclasses.replace(test_settings(), port=8100, metrics_port=8100), name="metrics_same_port")
    with pytest.raises(ValueError, match="not a port"):
        create_app(dataclasses.replace(test_settings(), metrics_port=70_000), name="metrics_bad_port")


def test_a_taken_metrics_port_stops_the_node_at_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="server exited"):
            node = start_server_process(tmp_path, "--metrics-port", str(port), "--no-simulator")
            node.stop()  # (not reached: it must not start)
    logs = "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    assert "address already in use" in logs.lower()
