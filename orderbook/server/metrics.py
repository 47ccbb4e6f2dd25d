"""Prometheus metrics of one node, exposed by prometheus-client at GET
/metrics (docs/operations.md §12 lists every series).

Each app has its own registry (`NodeMetrics`, on `app.ctx.metrics`): tests run
several nodes in one process, and the library's global registry would mix
them. What the node counts as it serves is plain integers in `Counts`
(orderbook/server/counts.py), bumped once per batch, group, request or
flush; gauges (connections, subscriptions, per-symbol seq) are read from the
node's state when Prometheus scrapes, never updated as they change. Only the
two histograms are the library's own objects: the event-loop lag (one sample
every LOOP_LAG_INTERVAL) and the publish-to-write latency (at most one per
hub.LATENCY_SAMPLE_INTERVAL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from sanic import Request, response

from orderbook.wire.codec import ErrorCode

from .counts import ENDPOINTS, KINDS, OUTCOMES, RESYNC_REASONS, Counts
from .http_api import _unauthorized
from .metrics_listener import MetricsListener
from .settings import Settings

if TYPE_CHECKING:
    from .cluster import Cluster
    from .hub import Hub
    from .state import ServerState

# How often the loop-lag probe sleeps; what it measures is how late it wakes.
LOOP_LAG_INTERVAL = 0.1
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PUBLISH_TO_WRITE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# Protocol error codes as label values: ERROR_CODE_INVALID_UPDATE -> invalid_update.
_CODE_LABELS = {number: name.removeprefix("ERROR_CODE_").lower() for name, number in ErrorCode.items()}
# Those a /feed reply carries (feed.proto): their series exist, at 0, before the first refusal.
_FEED_CODES = (
    ErrorCode.ERROR_CODE_MALFORMED_MESSAGE,
    ErrorCode.ERROR_CODE_UNKNOWN_MESSAGE,
    ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
    ErrorCode.ERROR_CODE_INVALID_UPDATE,
    ErrorCode.ERROR_CODE_INSTRUMENT_CONFLICT,
    ErrorCode.ERROR_CODE_SOURCE_CONFLICT,
    ErrorCode.ERROR_CODE_INTERNAL,
)


class NodeMetrics:
    """The registry of one node and the counters its hot path bumps."""

    def __init__(self, state: Callable[[], ServerState | None], per_symbol: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.loop_lag = Histogram(
            "orderbook_event_loop_lag_seconds",
            f"How late a timer set every {LOOP_LAG_INTERVAL:g} s fires: time the event loop was busy elsewhere",
            buckets=LOOP_LAG_BUCKETS,
            registry=self.registry,
        )
        publish_to_write = Histogram(
            "orderbook_publish_to_write_seconds",
            "From a change's publication in the hub to the end of the flush that writes it to the subscribers' "
            "sockets; the oldest change of a flush, at most one flush every 10 ms",
            buckets=PUBLISH_TO_WRITE_BUCKETS,
            registry=self.registry,
        )
        self.counts = Counts(publish_to_write)
        self.registry.register(NodeCollector(self.counts, state, per_symbol))
        # process_* (CPU, memory, file descriptors) and python_info, as the
        # library's default registry would have them.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.listener: MetricsListener | None = None

    async def serve(self, host: str, port: int) -> None:
        """Serve /metrics on a port of its own (--metrics-port)."""
        self.listener = MetricsListener(self.exposition)
        await self.listener.start(host, port)

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
            self.listener = None

    async def exposition(self) -> bytes:
        """The text format of every metric: collected here, on the loop (it
        reads the node's state), and written out in a thread, so a big scrape
        (many symbols) holds the loop for the reading only."""
        families = list(self.registry.collect())
        return await asyncio.to_thread(generate_latest, _Collected(families))

    async def watch_loop_lag(self) -> None:
        """Background duty: sleep LOOP_LAG_INTERVAL, observe how late the wake-up was."""
        loop = asyncio.get_running_loop()
        observe = self.loop_lag.observe
        while True:
            start = loop.time()
            await asyncio.sleep(LOOP_LAG_INTERVAL)
            observe(max(0.0, loop.time() - start - LOOP_LAG_INTERVAL))


def check_settings(settings: Settings) -> None:
    """A clear error, before anything listens, for a metrics port that cannot work."""
    port = settings.metrics_port
    if not 0 <= port <= 65535:
        raise ValueError(f"--metrics-port {port}: not a port (0 serves /metrics on the node's port)")
    if port and port == settings.port:
        raise ValueError(f"--metrics-port {port} is the node's own --port: give it another, or 0")


class _Collected:
    """Metric families already collected, as a Collector to write out."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


async def metrics_endpoint(request: Request) -> response.HTTPResponse:
    """GET /metrics on the node's port: with --http-token set, it needs the
    token as /symbols does (its per-symbol series tell as much)."""
    refused = _unauthorized(request)
    if refused is not None:
        return refused
    metrics: NodeMetrics = request.app.ctx.metrics
    return response.raw(await metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


class NodeCollector:
    """Every orderbook_* series, built from `Counts` and the node's state at
    scrape time."""

    def __init__(self, counts: Counts, state: Callable[[], ServerState | None], per_symbol: bool) -> None:
        self._counts = counts
        self._state = state
        self._per_symbol = per_symbol

    def collect(self) -> Iterator[Metric]:
        c = self._counts
        yield from _counters(c)
        state = self._state()
        if state is None:  # not started yet
            return
        hub = state.hub
        yield _gauge(
            "orderbook_ready",
            "1 while the node takes subscribers (/readyz answers ready or full)",
            [((), float(state.serving))],
        )
        yield _gauge(
            "orderbook_connections",
            "Open WebSocket connections: subscribers on /ws, publishers on /feed",
            [(("/ws",), len(hub.connections)), (("/feed",), c.publishers)],
            ["endpoint"],
        )
        yield _gauge(
            "orderbook_max_connections",
            "Subscriber connections allowed (--max-connections; 503 beyond)",
            [((), state.settings.max_connections)],
        )
        yield _gauge(
            "orderbook_slow_connections",
            "Subscriber connections now degraded to conflation or over their buffer limit",
            [((), hub.slow_connections)],
        )
        yield from self._subscriptions(hub)
        if state.cluster is not None:
            yield from _cluster(state.cluster, c)

    def _subscriptions(self, hub: Hub) -> Iterator[Metric]:
        per_symbol = self._per_symbol
        seqs = GaugeMetricFamily(
            "orderbook_symbol_seq", "The symbol's sequence number (seq of its last change)", labels=["symbol"]
        )
        subscribers = GaugeMetricFamily(
            "orderbook_symbol_subscribers", "Subscriptions to the symbol, of every kind", labels=["symbol"]
        )
        full = depth = conflated = 0
        for symbol, ch in hub.channels.items():
            f = len(ch.full)
            d = 0
            cf = sum(len(cg) for cg in ch.conflated.values())
            for g in ch.groups.values():
                d += len(g.subs)
                cf += sum(len(cg) for cg in g.conflated.values())
            full += f
            depth += d
            conflated += cf
            if per_symbol:
                seqs.add_metric([symbol], ch.seqbook.seq)
                subscribers.add_metric([symbol], f + d + cf)
        yield _gauge("orderbook_symbols", "Symbols this node serves", [((), len(hub.channels))])
        yield _gauge(
            "orderbook_subscriptions",
            "Subscriptions by what they receive: every change of the full book, of a depth-limited view, "
            "or conflated (asked for, or degraded because the client fell behind)",
            [(("full",), full), (("depth",), depth), (("conflated",), conflated)],
            ["kind"],
        )
        if per_symbol:
            yield seqs
            yield subscribers


def _gauge(
    name: str, doc: str, samples: Iterable[tuple[tuple[str, ...], float]], labels: list[str] | None = None
) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels or [])
    for values, value in samples:
        g.add_metric(list(values), value)
    return g


def _counter(
    name: str, doc: str, samples: Iterable[tuple[tuple[str, ...], float]], labels: list[str] | None = None
) -> CounterMetricFamily:
    # `name` without _total: the library adds it.
    m = CounterMetricFamily(name, doc, labels=labels or [])
    for values, value in samples:
        m.add_metric(list(values), value)
    return m


def _counters(c: Counts) -> Iterator[Metric]:
    yield _counter(
        "orderbook_handshakes",
        "WebSocket handshakes by endpoint and outcome: accepted, or refused for origin, token, full, "
        "rate_limited, bad_request, disabled (/feed without a feed token) or draining",
        [((e, o), c.handshakes[e, o]) for e in ENDPOINTS for o in OUTCOMES],
        ["endpoint", "outcome"],
    )
    yield _counter(
        "orderbook_messages_sent",
        "Server messages queued for subscribers, by kind (other: Subscribed, Unsubscribed, Pong); "
        "counted per fan-out group, so a delta or heartbeat dropped for a slow consumer counts too",
        [((k,), c.messages[i]) for i, k in enumerate(KINDS)],
        ["kind"],
    )
    yield _counter(
        "orderbook_sent_payload_bytes",
        "Encoded size (protobuf, before WebSocket framing) of the messages in orderbook_messages_sent_total",
        [((k,), c.message_bytes[i]) for i, k in enumerate(KINDS)],
        ["kind"],
    )
    yield _counter(
        "orderbook_socket_writes",
        "Writes to subscribers' sockets: one per connection per flush, each carrying every message queued for it",
        [((), c.writes)],
    )
    yield _counter(
        "orderbook_resyncs",
        "Snapshots sent where a subscription did not continue from what it held: asked to resume and could "
        "not (the protocol's SnapshotReason), or slow_consumer (after it fell behind and drained)",
        [((r,), c.resyncs[r]) for r in RESYNC_REASONS],
        ["reason"],
    )
    yield _counter("orderbook_resumes", "Subscriptions resumed with exactly the changes they missed", [((), c.resumes)])
    yield _counter(
        "orderbook_slow_consumer_actions",
        "Slow consumers: subscriptions degraded to conflation; connections that went over their buffer "
        "limit (deltas dropped, input paused) ('lagging'); connections closed 1013 ('closed')",
        [(("degraded",), c.degraded), (("lagging",), c.lagging), (("closed",), c.slow_closed)],
        ["action"],
    )
    yield _counter("orderbook_feed_batches_accepted", "/feed batches acked", [((), c.feed_accepted)])
    refused = dict.fromkeys(_FEED_CODES, 0) | c.feed_refused
    yield _counter(
        "orderbook_feed_batches_refused",
        "/feed batches refused, by the protocol error code of the reply",
        [((_CODE_LABELS.get(code, str(code)),), n) for code, n in refused.items()],
        ["code"],
    )
    yield _counter(
        "orderbook_deltas_published", "Book changes published (one per symbol per update applied)", [((), c.deltas)]
    )
    yield _counter(
        "orderbook_level_changes", "Price levels set or removed by the changes published", [((), c.level_changes)]
    )


def _cluster(cluster: Cluster, c: Counts) -> Iterator[Metric]:
    sequencer = cluster.sequencer
    f = cluster.follower
    holding = sequencer.holding
    yield _gauge(
        "orderbook_cluster_role",
        "1 for this node's role: sequencer while it believes it holds the lease, else replica",
        [(("sequencer",), float(holding)), (("replica",), float(not holding))],
        ["role"],
    )
    yield _gauge("orderbook_cluster_log_position", "Log entries this node has applied", [((), f.position if f else 0)])
    yield _gauge(
        "orderbook_cluster_replica_lag_seconds",
        "From the sequencer's stamp on the newest change this node applied to when it applied it",
        [((), f.lag_ms / 1000 if f else 0.0)],
    )
    yield _gauge(
        "orderbook_cluster_stale", "1 while Redis cannot be read (books may be behind)", [((), float(cluster.stale))]
    )
    yield _gauge(
        "orderbook_cluster_caught_up",
        "1 once this node's follower has reached the log's head as it was at its start",
        [((), float(bool(f and f.caught_up)))],
    )
    yield _counter(
        "orderbook_cluster_lease_changes",
        "Sequencer leases this node acquired and lost",
        [(("acquired",), sequencer.leases_acquired), (("lost",), sequencer.leases_lost)],
        ["change"],
    )
    yield _counter(
        "orderbook_cluster_redis_errors",
        "Redis errors met by the log follower, the sequencer, and /feed (a batch not queued)",
        [
            (("follower",), cluster.follower_redis_errors),
            (("sequencer",), sequencer.redis_errors),
            (("feed",), c.redis_errors_feed),
        ],
        ["component"],
    )
    yield _counter(
        "orderbook_cluster_redis_reconnects",
        "Times the log follower read from Redis again after failing to",
        [((), cluster.redis_reconnects)],
    )
    yield _counter(
        "orderbook_cluster_epoch_changes",
        "Times the cluster's log restarted under this node (a new epoch: every subscriber closed 1012)",
        [((), cluster.epoch_changes)],
    )
