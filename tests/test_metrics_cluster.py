"""Cluster metrics as an operator sees them on real nodes over a private,
real Redis: the roles, the lease changing hands, Redis going away and coming
back, and a new epoch that replaces the hub without counters going back."""

from __future__ import annotations

import pytest

from orderbook.wire.codec import ErrorCode

from .harness import (
    FEED_TOKEN,
    Publisher,
    Subscriber,
    has_symbol,
    http_get,
    instrument,
    readyz,
    sequencer_of,
    start_server_process,
    until,
    update,
)
from .redis_harness import redis_factory, redis_proc  # noqa: F401
from .test_metrics import Scrape

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(tmp_path, redis_proc):  # noqa: F811
    """Start cluster nodes on the test's Redis; every one is killed at the end."""
    started = []

    def start(*extra: str):
        node = start_server_process(
            tmp_path, "--redis", redis_proc.url, "--feed-token", FEED_TOKEN, "--lease-ttl", "1", *extra
        )
        started.append(node)
        return node

    yield start
    for node in started:
        node.kill()


async def scrape(node) -> Scrape:
    status, _, body = await http_get(node.port, "/metrics")
    assert status == 200, body
    return Scrape(body.decode())


async def test_roles_and_the_lease_show_and_survive_a_redis_outage(redis_proc, cluster):  # noqa: F811
    nodes = [cluster(), cluster()]
    sequencer = await sequencer_of(nodes)
    replica = next(n for n in nodes if n is not sequencer)
    async with Publisher.connect(replica.feed_url) as pub:
        assert (await pub.send([instrument("R")], [update("R", bids=[(1, 1)])])).WhichOneof("kind") == "ack"
        await until(lambda: all(has_symbol(n.http, "R") for n in nodes))
        before = {n.port: await scrape(n) for n in nodes}
        for n in nodes:
            m = before[n.port]
            assert m("orderbook_cluster_role", role="sequencer") == (n is sequencer)
            assert m("orderbook_cluster_role", role="replica") == (n is not sequencer)
            assert m("orderbook_cluster_stale") == 0
            assert m("orderbook_cluster_log_position") >= 1
            assert m("orderbook_cluster_caught_up") == 1
            assert m("orderbook_symbol_seq", symbol="R") == 1
        assert before[sequencer.port]("orderbook_cluster_lease_changes_total", change="acquired") == 1
        assert before[replica.port]("orderbook_cluster_lease_changes_total", change="acquired") == 0

        redis_proc.stop()
        await until(lambda: all(readyz(n.http).get("status") == "stale" for n in nodes))
        reply = await pub.send(updates=[update("R", bids=[(2, 1)])])
        assert reply.error.code == ErrorCode.ERROR_CODE_INTERNAL
        during = {n.port: await scrape(n) for n in nodes}
        for n in nodes:
            m = during[n.port]
            assert m("orderbook_cluster_stale") == 1
            assert m("orderbook_ready") == 0
            assert m("orderbook_cluster_redis_errors_total", component="follower") >= 1
        m = during[replica.port]
        assert m("orderbook_cluster_redis_errors_total", component="feed") == 1
        assert m("orderbook_feed_batches_refused_total", code="internal") == 1

        redis_proc.start()
        await until(lambda: all(readyz(n.http).get("status") == "ready" for n in nodes))
        await sequencer_of(nodes)
        after = {n.port: await scrape(n) for n in nodes}
        for n in nodes:
            m = after[n.port]
            assert m("orderbook_cluster_stale") == 0
            assert m("orderbook_cluster_redis_reconnects_total") >= 1
        total = lambda change: sum(  # noqa: E731
            after[n.port]("orderbook_cluster_lease_changes_total", change=change) for n in nodes
        )
        # The sequencer lost its lease when Redis failed under it; one node holds it again.
        assert total("lost") >= 1
        assert total("acquired") == total("lost") + 1
        assert sum(after[n.port]("orderbook_cluster_role", role="sequencer") for n in nodes) == 1


async def test_a_new_epoch_is_counted_and_counters_never_go_back(redis_proc, cluster):  # noqa: F811
    node = cluster()
    await sequencer_of([node])
    async with Publisher.connect(node.feed_url) as pub, Subscriber.connect(node.url) as sub:
        assert (await pub.send([instrument("E")], [update("E", bids=[(1, 1)])])).WhichOneof("kind") == "ack"
        await until(lambda: has_symbol(node.http, "E"))
        await sub.subscribe("E")
        await sub.until(lambda: sub.snapshots.get("E"))
        before = await scrape(node)
        assert before("orderbook_cluster_epoch_changes_total") == 0
        assert before("orderbook_feed_batches_accepted_total") == 1

        redis_proc.command("FLUSHALL")
        await until(lambda: not has_symbol(node.http, "E"))
        await until(lambda: readyz(node.http).get("status") == "ready")
        after = await scrape(node)
        assert after("orderbook_cluster_epoch_changes_total") == 1
        # The new epoch's hub took over the node's counters: nothing went back.
        for name, labels in [
            ("orderbook_feed_batches_accepted_total", {}),
            ("orderbook_messages_sent_total", {"kind": "snapshot"}),
            ("orderbook_handshakes_total", {"endpoint": "/ws", "outcome": "accepted"}),
            ("orderbook_deltas_published_total", {}),
        ]:
            assert after(name, **labels) >= before(name, **labels) > 0, name
        assert after("orderbook_symbols") == 0
        assert after("orderbook_connections", endpoint="/ws") == 0  # closed 1012 with the old epoch
