"""What a node counts while it serves, read by /metrics when it is scraped
(orderbook/server/metrics.py).

Plain integers, bumped where the work is done and once per batch, per
fan-out group, per request or per flush: never once per subscriber per
message. The fan-out pays an integer add per group, not a metrics library
call per subscriber. One `Counts` lives as long as the node: a cluster that
replaces its hub on a new epoch hands the same object to the new hub, so
counters never go back.
"""

from __future__ import annotations

from typing import Final, Protocol

# Server messages by kind; "other": Subscribed, Unsubscribed and Pong.
KINDS: Final = ("snapshot", "delta", "heartbeat", "error", "other")
SNAPSHOT, DELTA, HEARTBEAT, ERROR, OTHER = range(len(KINDS))

ENDPOINTS: Final = ("/ws", "/feed")
# How a WebSocket handshake ended. "rate_limited": a per-IP or handshake-rate
# limit (429); "bad_request": not a valid WebSocket upgrade (400, 426);
# "disabled": /feed on a node without a feed token; "draining": the node is stopping.
OUTCOMES: Final = ("accepted", "origin", "token", "full", "rate_limited", "bad_request", "disabled", "draining")

# Why a subscriber got a snapshot where it asked to resume (the protocol's
# SnapshotReason, lower-cased), or, "slow_consumer", after it fell behind.
RESYNC_REASONS: Final = ("stale_epoch", "history_exhausted", "ahead", "unsupported", "slow_consumer")


class Observer(Protocol):
    """A histogram as the hot path sees it (prometheus_client's Histogram)."""

    def observe(self, amount: float) -> None: ...


class Discard:
    """An Observer that keeps nothing (a hub built without metrics)."""

    def observe(self, amount: float) -> None:
        pass


class Counts:
    __slots__ = (
        "degraded",
        "deltas",
        "feed_accepted",
        "feed_refused",
        "handshakes",
        "lagging",
        "level_changes",
        "message_bytes",
        "messages",
        "publish_to_write",
        "publishers",
        "redis_errors_feed",
        "resumes",
        "resyncs",
        "slow_closed",
        "writes",
    )

    def __init__(self, publish_to_write: Observer | None = None) -> None:
        # Messages queued for subscribers, and their encoded (protobuf) bytes, by KINDS index.
        self.messages = [0] * len(KINDS)
        self.message_bytes = [0] * len(KINDS)
        # Writes to subscribers' sockets: connections flushed, summed once per flush.
        self.writes = 0
        self.handshakes = {(e, o): 0 for e in ENDPOINTS for o in OUTCOMES}
        self.publishers = 0  # open /feed connections
        self.resyncs = dict.fromkeys(RESYNC_REASONS, 0)
        self.resumes = 0  # subscriptions resumed with exactly the changes they missed
        # Slow consumers: subscriptions degraded to conflation; connections that went
        # over their buffer limit (deltas dropped, input paused); connections closed 1013.
        self.degraded = 0
        self.lagging = 0
        self.slow_closed = 0
        self.feed_accepted = 0  # /feed batches acked
        self.feed_refused: dict[int, int] = {}  # /feed batches refused, by protocol ErrorCode
        self.deltas = 0  # changes published (one per symbol per update applied)
        self.level_changes = 0  # price levels set or removed by those changes
        self.redis_errors_feed = 0  # /feed batches a cluster node could not queue in Redis
        # Seconds from a change's publication in the hub to the end of the flush
        # that writes it (sampled: orderbook/server/hub.py LATENCY_SAMPLE_INTERVAL).
        self.publish_to_write: Observer = publish_to_write or Discard()

    def sent(self, kind: int, n: int, payload_bytes: int) -> None:
        """`n` messages of `kind`, `payload_bytes` each, queued for subscribers."""
        self.messages[kind] += n
        self.message_bytes[kind] += n * payload_bytes

    def handshake(self, endpoint: str, outcome: str) -> None:
        self.handshakes[endpoint, outcome] += 1

    def feed_refusal(self, code: int) -> None:
        self.feed_refused[code] = self.feed_refused.get(code, 0) + 1
