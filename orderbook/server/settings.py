"""Server configuration: one frozen value built by the CLI or by tests.

A field that `orderbook serve` sets carries its option in its metadata
(`option`): the flag, its help and, where it has one, the environment
variable read when the flag is absent. The CLI builds the option from the
field, so each default is written here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orderbook.core.history import HistoryLimits
from orderbook.core.market import FeedLimits
from orderbook.replay.player import ReplayPlan

# Where the web build writes the trading page (gitignored; in the wheel when built).
DEFAULT_UI_DIR = Path(__file__).resolve().parent / "static"

# The metadata key of a field's `Option`.
OPTION = "orderbook.serve"


@dataclass(frozen=True, slots=True)
class Option:
    """How `orderbook serve` sets one Settings field.

    Its default is the field's, or the environment variable `env` when set.
    A bool field is a flag that turns its default around (`--allow-takeover`
    sets False to True, `--no-simulator` True to False); a tuple field's
    option is repeatable. `scale`: the field holds the option's value times
    this (`--lease-ttl` is in seconds, `lease_ttl_ms` in ms)."""

    flag: str
    help: str
    metavar: str | None = None
    env: str | None = None
    scale: int = 1


def option(
    flag: str, help: str, *, metavar: str | None = None, env: str | None = None, scale: int = 1
) -> dict[str, Option]:
    """Field metadata naming the `serve` option of the field."""
    return {OPTION: Option(flag, help, metavar, env, scale)}


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = field(
        default="127.0.0.1",
        metadata=option("--host", "address to listen on (0.0.0.0: every interface)", env="ORDERBOOK_HOST"),
    )
    port: int = field(default=8000, metadata=option("--port", "port to listen on", env="PORT"))
    # WebSocket Origin allow-list. Empty: same host as the request, and
    # localhost/127.0.0.1/[::1] on any port. "*" allows every origin.
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "--origin",
            "allowed WebSocket Origin (repeatable; '*' = any; default: the request's own host, and localhost "
            "on any port; a list replaces that)",
            metavar="ORIGIN",
        ),
    )
    # CORS allow-list of the HTTP endpoints (/healthz, /readyz, /symbols,
    # /book/...). Empty: no CORS header at all. "*" allows every origin.
    cors_origins: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "--cors-origin",
            "pages on ORIGIN may read the HTTP endpoints (CORS; repeatable; '*' = any; default: none)",
            metavar="ORIGIN",
        ),
    )
    # The built trading page served at GET / and its files at /<name>. Without
    # an index.html there, GET / answers a page that says how to build it.
    # None: no page (GET / is 404). (serve --ui-dir / --no-ui, in the CLI.)
    ui_dir: Path | None = DEFAULT_UI_DIR
    subscriber_token: str | None = field(
        default=None,
        metadata=option(
            "--token", "subscriber token; none: /ws needs no token", metavar="TOKEN", env="ORDERBOOK_TOKEN"
        ),
    )
    feed_token: str | None = field(
        default=None,
        metadata=option(
            "--feed-token",
            "publisher token: enables /feed; none: /feed is refused",
            metavar="TOKEN",
            env="ORDERBOOK_FEED_TOKEN",
        ),
    )
    # TLS on the node's own port: with both, wss:// and https:// (PEM files,
    # read once at start; orderbook/server/tls.py). Neither: plain ws:// and http://.
    tls_cert: str | None = field(
        default=None,
        metadata=option(
            "--tls-cert",
            "PEM certificate chain: serve wss:// and https:// on --port (with --tls-key); none: plain ws:// and http://",
            metavar="FILE",
            env="ORDERBOOK_TLS_CERT",
        ),
    )
    tls_key: str | None = field(
        default=None,
        metadata=option("--tls-key", "PEM private key of --tls-cert", metavar="FILE", env="ORDERBOOK_TLS_KEY"),
    )
    # On SIGTERM or SIGINT (orderbook/server/drain.py): /readyz says "draining",
    # new upgrades get 503, subscribers are closed with 1001 spread over this
    # window so that they do not all reconnect elsewhere at once; then the node stops.
    drain_seconds: float = field(
        default=5.0,
        metadata=option(
            "--drain-seconds",
            "on SIGTERM/SIGINT, close subscribers (1001, reconnect) spread over this many seconds, then stop; "
            "0: all at once; a second signal stops at once",
            metavar="SECONDS",
        ),
    )
    ping_interval: float = field(
        default=25.0, metadata=option("--ping-interval", "seconds between WebSocket pings", metavar="SECONDS")
    )
    ping_timeout: float = field(
        default=20.0,
        metadata=option("--ping-timeout", "seconds to wait for a pong before the peer is closed", metavar="SECONDS"),
    )
    symbol_heartbeat: float = field(
        default=2.0, metadata=option("--heartbeat", "seconds before a quiet symbol gets a Heartbeat", metavar="SECONDS")
    )
    # Resume history per symbol (serve --history-entries, --history-bytes, in the CLI).
    history: HistoryLimits = field(default_factory=HistoryLimits)
    max_connections: int = field(
        default=10_000, metadata=option("--max-connections", "subscriber connections (503 beyond)", metavar="N")
    )
    max_subscriptions: int = 1_000  # per connection
    max_depth: int = 1_000  # largest depth-limited subscription; 0 (full) is always allowed
    max_message_bytes: int = 64 * 1024  # largest client message (close 1009 beyond)
    max_feed_message_bytes: int = 16 * 1024 * 1024
    # Feed limits (docs/operations.md "Limits"; 0 = none): a batch that would
    # break one is refused whole (ERROR_CODE_INVALID_UPDATE naming the limit).
    max_levels_per_side: int = field(
        default=100_000,
        metadata=option(
            "--max-levels-per-side",
            "levels one book side may hold; a batch beyond is refused whole (0 = no limit)",
            metavar="N",
        ),
    )
    max_symbols: int = field(
        default=10_000,
        metadata=option(
            "--max-symbols", "symbols this node may define; a batch beyond is refused whole (0 = no limit)", metavar="N"
        ),
    )
    max_batch_levels: int = field(
        default=100_000,
        metadata=option(
            "--max-batch-levels", "levels across all updates of one feed batch (0 = no limit)", metavar="N"
        ),
    )
    # HTTP: the largest `depth` of GET /book (a longer side needs depth <= it);
    # a token that /symbols and /book/... require (None: open). /healthz,
    # /readyz and the page's files stay open.
    http_max_depth: int = field(
        default=1_000,
        metadata=option(
            "--http-max-depth",
            "largest depth of GET /book; longer sides need the WebSocket (0 = no limit)",
            metavar="N",
        ),
    )
    http_token: str | None = field(
        default=None,
        metadata=option(
            "--http-token",
            "token that /symbols and /book need (Authorization: Bearer or ?token=); may equal --token; none: open",
            metavar="TOKEN",
            env="ORDERBOOK_HTTP_TOKEN",
        ),
    )
    # Before the upgrade of /ws and /feed (0 = none; 429 with Retry-After):
    # connections per source IP, handshakes per second per source IP (token
    # bucket with a burst), and handshakes per second from everyone together.
    # (Generous enough for an office behind one NAT address, or a local load run.)
    max_connections_per_ip: int = field(
        default=1_000,
        metadata=option(
            "--max-connections-per-ip",
            "WebSocket connections per source IP (429 beyond; 0 = no limit; behind a proxy: --trust-proxy, or raise it)",
            metavar="N",
        ),
    )
    handshake_rate: float = field(
        default=100.0,
        metadata=option(
            "--handshake-rate",
            "WebSocket handshakes per second per source IP (429 beyond; 0 = no limit)",
            metavar="PER_S",
        ),
    )
    handshake_burst: float = field(
        default=200.0,
        metadata=option(
            "--handshake-burst",
            "handshakes one source IP may make at once before --handshake-rate applies",
            metavar="N",
        ),
    )
    global_handshake_rate: float = field(
        default=500.0,
        metadata=option(
            "--global-handshake-rate",
            "WebSocket handshakes per second from everyone together (429 beyond; 0 = no limit)",
            metavar="PER_S",
        ),
    )
    global_handshake_burst: float = field(
        default=1_000.0,
        metadata=option(
            "--global-handshake-burst",
            "handshakes everyone together may make at once before --global-handshake-rate applies",
            metavar="N",
        ),
    )
    # The rest wait with reading paused (orderbook/server/accept_pacing.py).
    accepts_per_turn: int = field(
        default=16,
        metadata=option(
            "--accepts-per-turn",
            "new connections started per event-loop turn, round-robin by client address; the rest wait in a "
            "later turn, so a connection storm cannot stall streaming subscribers",
            metavar="N",
        ),
    )
    # Stored as the networks' text (orderbook/server/client_address.py reads it).
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "--trust-proxy",
            "a proxy network whose X-Forwarded-For names the client: connections from it count, for the "
            "per-IP limits and in logs, as the right-most forwarded address outside every --trust-proxy "
            "network (repeatable; default: none, the TCP peer)",
            metavar="CIDR",
        ),
    )
    # permessage-deflate (RFC 7692) on /ws, agreed with clients that offer it:
    # without context takeover, so each message is compressed once for every
    # subscriber (orderbook/server/outgoing.py). Off by default: it spends the
    # node's one core to save bandwidth (docs/operations.md "Compression").
    compression: bool = field(
        default=False,
        metadata=option(
            "--compression",
            "agree to permessage-deflate on /ws with clients that offer it (no context takeover: each message is "
            "compressed once for all of them; small ones are sent as they are)",
        ),
    )
    # Off: every subscriber gets its own queue and write, the reference path
    # the shared write must match byte for byte (tests and benchmarks).
    shared_write: bool = field(
        default=True,
        metadata=option(
            "--no-shared-write",
            "give each subscriber its own queue of frames instead of one write per group of subscribers per flush "
            "(same bytes, more work; for comparison)",
        ),
    )
    # Bytes queued for one client (in our queue plus the transport's) beyond
    # which its deltas are dropped and a snapshot is sent once it drains.
    client_buffer_limit: int = field(
        default=4 * 1024 * 1024,
        metadata=option(
            "--client-buffer",
            "bytes queued for one client beyond which its deltas are dropped (a snapshot follows when it drains)",
            metavar="BYTES",
        ),
    )
    slow_client_timeout: float = field(
        default=30.0,
        metadata=option(
            "--slow-client-timeout",
            "seconds a client may stay over --client-buffer before it is closed (1013)",
            metavar="SECONDS",
        ),
    )
    # Subscriber input (docs/operations.md "Limits"; 0 = none): a token bucket
    # with a burst over every frame of a connection.
    client_rate: float = field(
        default=1_000.0,
        metadata=option(
            "--client-rate",
            "messages per second one subscriber may send; past it (and --client-burst) its connection is not "
            "read until it may go on (0 = no limit)",
            metavar="PER_S",
        ),
    )
    client_burst: float = field(
        default=2_000.0,
        metadata=option(
            "--client-burst", "messages one subscriber may send at once before --client-rate applies", metavar="N"
        ),
    )
    # The burst lets a client subscribe to as many symbols as it may hold at once.
    churn_rate: float = field(
        default=100.0,
        metadata=option(
            "--churn-rate",
            "subscribes + unsubscribes per second per connection; past it (and --churn-burst) "
            "ERROR_CODE_RATE_LIMITED (0 = no limit)",
            metavar="PER_S",
        ),
    )
    churn_burst: float = field(
        default=1_000.0,
        metadata=option(
            "--churn-burst",
            "subscribes + unsubscribes one connection may make at once before --churn-rate applies",
            metavar="N",
        ),
    )
    max_fragments: int = field(
        default=1024,
        metadata=option(
            "--max-fragments", "frames in one fragmented client message (close 1009 beyond; 0 = no limit)", metavar="N"
        ),
    )
    # Until it drains; then a snapshot.
    degrade_interval_ms: int = field(
        default=500,
        metadata=option(
            "--degrade-interval",
            "a client past half its --client-buffer gets updates conflated over MS ms until it drains",
            metavar="MS",
        ),
    )
    # The longest conflation interval a subscription may ask for.
    max_interval_ms: int = 60_000
    # Consecutive bad messages before a client is closed (1008).
    max_client_errors: int = 20
    # Without it such a batch is refused (ERROR_CODE_SOURCE_CONFLICT).
    allow_takeover: bool = field(
        default=False,
        metadata=option(
            "--allow-takeover",
            "a /feed batch may take a symbol from the simulator or --replay (it must replace the whole book)",
        ),
    )
    # Prometheus metrics (orderbook/server/metrics.py, docs/operations.md §12):
    # GET /metrics on the node's port, or on a port of its own (plain HTTP, on
    # --host) so that the public port need not expose it.
    metrics_port: int = field(
        default=0,
        metadata=option(
            "--metrics-port",
            "serve /metrics on this port instead (plain HTTP; the node's port then answers 404 there); "
            "0: on the node's port",
            metavar="N",
        ),
    )
    # Two series per symbol (seq, subscribers): with many thousands of symbols
    # they cost the scrape more than the rest together.
    metrics_per_symbol: bool = field(
        default=True,
        metadata=option(
            "--no-metrics-per-symbol",
            "leave the per-symbol series (labelled by symbol) out of /metrics, for nodes with many symbols",
        ),
    )
    # Built-in market simulator (the embedded default feed); off in a cluster
    # and with --replay, whatever this says (the CLI turns it off).
    simulator: bool = field(default=True, metadata=option("--no-simulator", "serve only what /feed publishes"))
    simulator_rate: float = field(
        default=200.0,
        metadata=option("--simulator-rate", "simulator book updates per second, all symbols together", metavar="PER_S"),
    )
    simulator_seed: int | None = field(
        default=None,
        metadata=option("--seed", "simulator seed: the same seed gives the same market (default: random)", metavar="N"),
    )
    # A recording played as the feed instead of the simulator (serve --replay).
    replay: ReplayPlan | None = None
    # Epoch of this process's sequences; None: derived from the start time.
    # With Redis, the cluster's epoch (kept in Redis) is used instead.
    epoch: int | None = None
    # How log lines are written to stderr (orderbook/logs.py): "text" for
    # people, "json" (one object per line) for log collectors.
    log_format: str = field(
        default="text",
        metadata=option(
            "--log-format",
            "log lines on stderr: text, or json (one object per line with time, level, logger, message, and "
            "conn, peer, symbol where they apply)",
            metavar="text|json",
            env="ORDERBOOK_LOG_FORMAT",
        ),
    )
    # Worker processes sharing the port (SO_REUSEPORT), each serving the same
    # sequenced stream; 1: this process serves alone (orderbook/server/workers.py).
    workers: int = field(
        default=1,
        metadata=option(
            "--workers",
            "worker processes serving on the one port (the kernel spreads connections); above 1 the first "
            "process supervises them and, without --redis, sequences for them",
            metavar="N",
        ),
    )
    # Set by the supervisor for its workers: the local channel to the
    # sequencer (without Redis), and the worker's number (from 0).
    sequencer_socket: str | None = None
    worker: int | None = None
    # Cluster mode: nodes share one sequenced log in Redis (None: embedded).
    redis_url: str | None = field(
        default=None,
        metadata=option(
            "--redis",
            "join a cluster through this Redis (redis://host:port/db); the simulator is then off; none: no cluster",
            metavar="URL",
            env="ORDERBOOK_REDIS",
        ),
    )
    redis_prefix: str = field(
        default="orderbook", metadata=option("--redis-prefix", "key prefix of the cluster in Redis", metavar="PREFIX")
    )
    # How long the sequencer's lease lasts without renewal: the failover time.
    lease_ttl_ms: int = field(
        default=3000,
        metadata=option("--lease-ttl", "sequencer lease in seconds (failover time)", metavar="SECONDS", scale=1000),
    )
    # The sequencer writes a cluster snapshot every this many log entries and
    # keeps `log_retention` entries before it for nodes that lag.
    snapshot_every: int = field(
        default=1000, metadata=option("--snapshot-every", "log entries between cluster snapshots", metavar="N")
    )
    log_retention: int = field(
        default=10_000,
        metadata=option("--log-retention", "log entries kept before the newest cluster snapshot", metavar="N"),
    )

    @property
    def feed_limits(self) -> FeedLimits:
        return FeedLimits(self.max_levels_per_side, self.max_symbols, self.max_batch_levels)
