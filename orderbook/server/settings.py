"""Server configuration: one frozen value built by the CLI or by tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orderbook.core.history import HistoryLimits
from orderbook.core.market import FeedLimits
from orderbook.replay.player import ReplayPlan

# Where the web build writes the trading page (gitignored; in the wheel when built).
DEFAULT_UI_DIR = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    # WebSocket Origin allow-list. Empty: same host as the request, and
    # localhost/127.0.0.1/[::1] on any port. "*" allows every origin.
    allowed_origins: tuple[str, ...] = ()
    # CORS allow-list of the HTTP endpoints (/healthz, /readyz, /symbols,
    # /book/...). Empty: no CORS header at all. "*" allows every origin.
    cors_origins: tuple[str, ...] = ()
    # The built trading page served at GET / and its files at /<name>. Without
    # an index.html there, GET / answers a page that says how to build it.
    # None: no page (GET / is 404).
    ui_dir: Path | None = DEFAULT_UI_DIR
    # Subscriber token (None: subscribers need no token).
    subscriber_token: str | None = None
    # Publisher token for /feed (None: /feed is refused).
    feed_token: str | None = None
    # WebSocket ping interval and the pong wait before a peer is declared dead.
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    # A subscribed symbol with no change for this long gets a Heartbeat.
    symbol_heartbeat: float = 2.0
    history: HistoryLimits = field(default_factory=HistoryLimits)
    max_connections: int = 10_000
    max_subscriptions: int = 1_000  # per connection
    max_depth: int = 1_000  # largest depth-limited subscription; 0 (full) is always allowed
    max_message_bytes: int = 64 * 1024  # largest client message (close 1009 beyond)
    max_feed_message_bytes: int = 16 * 1024 * 1024
    # Feed limits (docs/operations.md "Limits"; 0 = none): a batch that would
    # break one is refused whole (ERROR_CODE_INVALID_UPDATE naming the limit).
    max_levels_per_side: int = 100_000  # levels one book side may hold
    max_symbols: int = 10_000  # symbols defined on this node
    max_batch_levels: int = 100_000  # levels across all updates of one batch
    # HTTP: the largest `depth` of GET /book (a longer side needs depth <= it);
    # a token that /symbols and /book/... require (None: open). /healthz,
    # /readyz and the page's files stay open.
    http_max_depth: int = 1_000
    http_token: str | None = None
    # Before the upgrade of /ws and /feed (0 = none; 429 with Retry-After):
    # connections per source IP, handshakes per second per source IP (token
    # bucket with a burst), and handshakes per second from everyone together.
    # (Generous enough for an office behind one NAT address, or a local load run.)
    max_connections_per_ip: int = 1_000
    handshake_rate: float = 100.0
    handshake_burst: float = 200.0
    global_handshake_rate: float = 500.0
    global_handshake_burst: float = 1_000.0
    # New connections started per event-loop turn, round-robin by address;
    # the rest wait with reading paused (orderbook/server/accept_pacing.py).
    accepts_per_turn: int = 16
    # Proxies whose X-Forwarded-For is believed (CIDRs, `serve --trust-proxy`):
    # a connection from inside one is counted, for the per-IP limits and in
    # the logs, as the right-most forwarded address outside all of them
    # (orderbook/server/client_address.py). Empty: the TCP peer, always.
    trusted_proxies: tuple[str, ...] = ()
    # Bytes queued for one client (in our queue plus the transport's) beyond
    # which its deltas are dropped and a snapshot is sent once it drains.
    client_buffer_limit: int = 4 * 1024 * 1024
    # A client that stays over the limit this long is closed (1013).
    slow_client_timeout: float = 30.0
    # Subscriber input (docs/operations.md "Limits"; 0 = none). Messages per
    # second per connection, every frame counted (token bucket with a burst):
    # past it the connection is not read until tokens come back.
    client_rate: float = 1_000.0
    client_burst: float = 2_000.0
    # Subscribe + Unsubscribe per second per connection: past it a request is
    # answered ERROR_CODE_RATE_LIMITED (and counts as a bad message). The
    # burst lets a client subscribe to as many symbols as it may hold at once.
    churn_rate: float = 100.0
    churn_burst: float = 1_000.0
    # Frames in one fragmented client message (close 1009 beyond).
    max_fragments: int = 1024
    # A client past half its buffer limit has its live subscriptions moved to
    # updates conflated over this interval until it drains (then a snapshot).
    degrade_interval_ms: int = 500
    # The longest conflation interval a subscription may ask for.
    max_interval_ms: int = 60_000
    # Consecutive bad messages before a client is closed (1008).
    max_client_errors: int = 20
    # A /feed batch may take a symbol over from the simulator or the node's
    # replay (its first update of the symbol must replace the whole book);
    # without it such a batch is refused (ERROR_CODE_SOURCE_CONFLICT).
    allow_takeover: bool = False
    # Built-in market simulator (the embedded default feed).
    simulator: bool = True
    simulator_rate: float = 200.0  # book updates per second, all symbols together
    simulator_seed: int | None = None
    # A recording played as the feed instead of the simulator (serve --replay).
    replay: ReplayPlan | None = None
    # Epoch of this process's sequences; None: derived from the start time.
    # With Redis, the cluster's epoch (kept in Redis) is used instead.
    epoch: int | None = None
    # Cluster mode: nodes share one sequenced log in Redis (None: embedded).
    redis_url: str | None = None
    redis_prefix: str = "orderbook"
    # How long the sequencer's lease lasts without renewal: the failover time.
    lease_ttl_ms: int = 3000
    # The sequencer writes a cluster snapshot every this many log entries and
    # keeps `log_retention` entries before it for nodes that lag.
    snapshot_every: int = 1000
    log_retention: int = 10_000

    @property
    def feed_limits(self) -> FeedLimits:
        return FeedLimits(self.max_levels_per_side, self.max_symbols, self.max_batch_levels)
