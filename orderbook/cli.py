"""The `orderbook` command: `serve` runs a node, `watch` shows live books,
`replay` plays recorded market data into a node, `verify` checks a recording
against the venue's own references, `record` writes what a subscriber receives."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys

from orderbook.core.errors import InvalidInput
from orderbook.core.history import HistoryLimits


def _raise_fd_limit() -> tuple[int, int]:
    """Every subscriber is a file descriptor; the usual soft limit of 1024 is
    far too low for a broadcast server, so take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _serve(args: argparse.Namespace) -> int:
    from orderbook.server.app import PROTOCOL, create_app

    replay_plan = None
    if args.replay:
        if args.redis:
            print(
                "orderbook serve: --replay serves one node; to replay into a cluster, run "
                "`orderbook replay FILE --url <any node>`",
                file=sys.stderr,
            )
            return 2
        args.file = args.replay
        try:
            replay_plan = _plan(args)
        except (ValueError, InvalidInput) as exc:
            print(f"orderbook serve: {exc}", file=sys.stderr)
            return 2
    try:
        settings = serve_settings(args, replay_plan)
    except ValueError as exc:
        print(f"orderbook serve: {exc}", file=sys.stderr)
        return 2
    soft, _ = _raise_fd_limit()
    app = create_app(settings)
    print(
        f"orderbook: serving on http://{args.host}:{args.port}  "
        f"(WebSocket ws://{args.host}:{args.port}/ws, feed {'on' if args.feed_token else 'off'}, "
        f"{_feed_description(args)}, "
        f"fd limit {soft})",
        flush=True,
    )
    app.run(
        host=args.host,
        port=args.port,
        # A connection storm waits in the kernel's accept queue (and meets the
        # handshake limits) instead of having its SYNs dropped and retried 1 s later.
        backlog=args.backlog,
        protocol=PROTOCOL,
        single_process=True,
        access_log=args.access_log,
        motd=False,
    )
    return 0


def serve_settings(args: argparse.Namespace, replay_plan=None):
    """The Settings of `orderbook serve` from its parsed options."""
    from pathlib import Path

    from orderbook.server.settings import DEFAULT_UI_DIR, Settings

    ui_dir: Path | None = DEFAULT_UI_DIR
    if args.no_ui:
        ui_dir = None
    elif args.ui_dir is not None:
        ui_dir = Path(args.ui_dir).expanduser().resolve()
        if not ui_dir.is_dir():
            raise ValueError(f"--ui-dir {args.ui_dir} is not a directory")
    cors_origins = tuple(args.cors_origin or ())
    for origin in cors_origins:
        if not _is_origin(origin):
            raise ValueError(f"--cors-origin {origin!r} is neither '*' nor an origin (scheme://host[:port])")
    return Settings(
        host=args.host,
        port=args.port,
        allowed_origins=tuple(args.origin or ()),
        cors_origins=cors_origins,
        ui_dir=ui_dir,
        subscriber_token=args.token,
        feed_token=args.feed_token,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        symbol_heartbeat=args.heartbeat,
        history=HistoryLimits(args.history_entries, args.history_bytes),
        max_connections=args.max_connections,
        max_levels_per_side=args.max_levels_per_side,
        max_symbols=args.max_symbols,
        max_batch_levels=args.max_batch_levels,
        http_max_depth=args.http_max_depth,
        http_token=args.http_token,
        max_connections_per_ip=args.max_connections_per_ip,
        handshake_rate=args.handshake_rate,
        handshake_burst=args.handshake_burst,
        global_handshake_rate=args.global_handshake_rate,
        global_handshake_burst=args.global_handshake_burst,
        accepts_per_turn=args.accepts_per_turn,
        trusted_proxies=tuple(str(n) for n in args.trust_proxy or ()),
        client_buffer_limit=args.client_buffer,
        slow_client_timeout=args.slow_client_timeout,
        client_rate=args.client_rate,
        client_burst=args.client_burst,
        churn_rate=args.churn_rate,
        churn_burst=args.churn_burst,
        max_fragments=args.max_fragments,
        degrade_interval_ms=args.degrade_interval,
        allow_takeover=args.allow_takeover,
        simulator=not args.no_simulator and not args.redis and replay_plan is None,
        replay=replay_plan,
        redis_url=args.redis,
        redis_prefix=args.redis_prefix,
        lease_ttl_ms=int(args.lease_ttl * 1000),
        snapshot_every=args.snapshot_every,
        log_retention=args.log_retention,
        simulator_rate=args.simulator_rate,
        simulator_seed=args.seed,
    )


def _is_origin(value: str) -> bool:
    """'*', or scheme://host[:port] with nothing after (a trailing '/' aside)."""
    from urllib.parse import urlsplit

    if value == "*":
        return True
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return False
    bare = parts.path in ("", "/") and not (parts.query or parts.fragment)
    return bool(parts.scheme and parts.hostname) and bare


def _feed_description(args: argparse.Namespace) -> str:
    if args.redis:
        return "cluster " + _redact(args.redis)
    if args.replay:
        return f"replaying {args.replay}"
    return "simulator " + ("off" if args.no_simulator else "on")


# ----------------------------------------------------------------------------- replay / verify / record

# Reader options a format takes, as (cli dest, reader keyword).
_FORMAT_OPTIONS = {
    "kraken": ("depth",),
    "coinbase": ("price_scale", "size_scale"),
    "binance": ("snapshots",),
    "lobster": ("symbol", "levels"),
    "tardis": ("price_scale", "size_scale"),
    "recording": ("gaps",),
}


def _source(args: argparse.Namespace):
    from pathlib import Path

    from orderbook.replay.files import Source, detect_format

    path = Path(args.file)
    fmt = args.format
    if fmt == "auto":
        fmt = detect_format(path)
    options = {}
    for name in ("depth", "price_scale", "size_scale", "snapshots", "symbol", "levels", "gaps"):
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in _FORMAT_OPTIONS[fmt]:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to the {fmt} format")
        options[name] = value
    return Source(path, fmt, tuple(sorted(options.items())))


def _window(args: argparse.Namespace):
    from orderbook.replay.window import parse_time

    start = parse_time(args.start) if args.start else None
    end = parse_time(args.end) if args.end else None
    return start, end


def _plan(args: argparse.Namespace):
    from orderbook.replay.pacing import parse_speed
    from orderbook.replay.player import ReplayPlan

    start, end = _window(args)
    return ReplayPlan(_source(args), parse_speed(args.speed), args.loop, start, end)


def _replay(args: argparse.Namespace) -> int:
    from orderbook.replay.player import FeedSink, play
    from orderbook.replay.records import parse_renames, renamed

    try:
        plan = _plan(args)
    except (ValueError, InvalidInput) as exc:
        print(f"orderbook replay: {exc}", file=sys.stderr)
        return 2

    try:
        names = parse_renames(args.rename or ())
    except ValueError as exc:
        print(f"orderbook replay: {exc}", file=sys.stderr)
        return 2

    def records():
        return renamed(plan.source.records(), names)

    async def run() -> None:
        sink = await FeedSink.connect(args.url, args.feed_token)
        try:
            stats = await play(
                records,
                sink,
                speed=plan.speed,
                loop=plan.loop,
                laps=args.laps,
                start=plan.start,
                end=plan.end,
            )
        finally:
            await sink.close()
        print(
            f"orderbook replay: {stats.records} records, {stats.updates} updates in {stats.batches} batches, "
            f"{sink.changes} changes sequenced, {stats.laps} lap(s)",
            flush=True,
        )

    return _run_async("replay", run)


def _verify(args: argparse.Namespace) -> int:
    from orderbook.replay.files import FORMATS_WITHOUT_REFERENCES
    from orderbook.replay.formats.recording import TruncatedRecording
    from orderbook.replay.verify import Verifier, with_rebuilt_references

    try:
        source = _source(args)
        if args.server:
            from orderbook.replay.endtoend import verify_through_server

            records = source.records()
            if source.format in FORMATS_WITHOUT_REFERENCES:
                records = with_rebuilt_references(records)
            report = asyncio.run(
                verify_through_server(
                    records, args.server, feed_token=args.feed_token, token=args.token, timeout=args.timeout
                )
            )
        else:
            verifier = Verifier()
            verifier.report.references_expected = source.format not in FORMATS_WITHOUT_REFERENCES
            report = verifier.report
            try:
                for record in source.records():
                    verifier.feed(record)
            except TruncatedRecording as exc:
                # A killed recorder leaves a cut last entry: check all before it.
                print(
                    f"orderbook verify: warning: {exc}; the {exc.entries} complete entries are checked", file=sys.stderr
                )
    except (ValueError, InvalidInput) as exc:
        print(f"orderbook verify: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"orderbook verify: {exc}", file=sys.stderr)
        return 1
    where = f"through {args.server}" if args.server else "offline"
    print(f"{args.file} ({source.format}, {where}):")
    for line in report.lines():
        print("  " + line)
    return 0 if report.ok else 1


def _record(args: argparse.Namespace) -> int:
    from orderbook.replay.recorder import record

    async def run() -> None:
        summary = await record(
            args.url,
            args.symbols,
            args.out,
            token=args.token,
            gzip=args.gzip,
            duration=args.duration,
            max_messages=args.count,
        )
        print(f"orderbook record: {summary}", flush=True)

    return _run_async("record", run)


def _run_async(name: str, main) -> int:
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    except (InvalidInput, OSError) as exc:
        print(f"orderbook {name}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a refused handshake, a closed connection: one clear line
        print(f"orderbook {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_source_arguments(p: argparse.ArgumentParser) -> None:
    from orderbook.replay.files import FORMATS

    p.add_argument("file", help="the recording (a folder for LOBSTER or Binance captures)")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="default: guess from the file")
    g = p.add_argument_group("format options")
    g.add_argument("--depth", type=int, help="kraken: the subscribed book depth (default: from the channel name)")
    g.add_argument("--price-scale", type=int, help="tardis, coinbase: decimals of prices (default: from the data)")
    g.add_argument("--size-scale", type=int, help="tardis, coinbase: decimals of sizes (default: from the data)")
    g.add_argument("--snapshots", help="binance: the REST snapshot file (default: *.http.* beside the capture)")
    g.add_argument("--symbol", help="lobster: the symbol (default: from the file name)")
    g.add_argument("--levels", type=int, help="lobster: levels in the file (default: from the file name)")
    g.add_argument(
        "--gaps",
        choices=("error", "resync"),
        help="recording: a break in a symbol's sequence is an error (default) or skipped to its next snapshot",
    )


def _add_pacing_arguments(p: argparse.ArgumentParser, loop_help: str = "start again at the end") -> None:
    p.add_argument("--speed", default="1", help="1 = recorded pace, 10 = ten times faster, max = as fast as possible")
    p.add_argument("--loop", action="store_true", help=loop_help)
    p.add_argument("--start", help="window start: +SECONDS after the first record (+30s, +2m) or an ISO-8601 time")
    p.add_argument("--end", help="window end, same forms as --start")


def _watch(args: argparse.Namespace) -> int:
    from orderbook.client import ClientError
    from orderbook.client.watch import watch

    try:
        asyncio.run(
            watch(
                args.url,
                args.symbols,
                rows=args.rows,
                token=args.token,
                encoding="json" if args.json else "proto",
                once=args.once,
                depth=args.depth,
                interval_ms=args.interval,
            )
        )
    except KeyboardInterrupt:
        pass
    except ClientError as exc:
        print(f"orderbook watch: {exc}", file=sys.stderr)
        return 1
    return 0


def _trusted_network(text: str):
    from orderbook.server.client_address import parse_network

    try:
        return parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orderbook", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run a node (default: built-in market simulator, no Redis)")
    from orderbook.server.settings import Settings

    defaults = Settings()
    s.add_argument("--host", default=os.environ.get("ORDERBOOK_HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    s.add_argument(
        "--backlog",
        type=int,
        default=2048,
        metavar="N",
        help="listen backlog: connections the kernel queues before the node accepts them (capped by "
        "net.core.somaxconn)",
    )
    s.add_argument("--origin", action="append", help="allowed WebSocket Origin (repeatable; '*' = any)")
    s.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="pages on ORIGIN may read the HTTP endpoints (CORS; repeatable; '*' = any; default: none)",
    )
    ui = s.add_mutually_exclusive_group()
    ui.add_argument(
        "--ui-dir",
        metavar="DIR",
        help="the built trading page served at / (default: the package's orderbook/server/static)",
    )
    ui.add_argument("--no-ui", action="store_true", help="serve no page: GET / answers 404")
    s.add_argument("--token", default=os.environ.get("ORDERBOOK_TOKEN"), help="subscriber token")
    s.add_argument("--feed-token", default=os.environ.get("ORDERBOOK_FEED_TOKEN"), help="enables /feed")
    s.add_argument("--ping-interval", type=float, default=25.0)
    s.add_argument("--ping-timeout", type=float, default=20.0)
    s.add_argument("--heartbeat", type=float, default=2.0, help="seconds before a quiet symbol gets a Heartbeat")
    s.add_argument("--history-entries", type=int, default=HistoryLimits().max_entries)
    s.add_argument("--history-bytes", type=int, default=HistoryLimits().max_bytes)
    s.add_argument("--max-connections", type=int, default=10_000)
    # Limits (docs/operations.md "Limits"); 0 turns one off.
    s.add_argument(
        "--max-levels-per-side",
        type=int,
        default=100_000,
        metavar="N",
        help="levels one book side may hold; a batch beyond is refused whole (0 = no limit)",
    )
    s.add_argument(
        "--max-symbols",
        type=int,
        default=10_000,
        metavar="N",
        help="symbols this node may define; a batch beyond is refused whole (0 = no limit)",
    )
    s.add_argument(
        "--max-batch-levels",
        type=int,
        default=100_000,
        metavar="N",
        help="levels across all updates of one feed batch (0 = no limit)",
    )
    s.add_argument(
        "--http-max-depth",
        type=int,
        default=1_000,
        metavar="N",
        help="largest depth of GET /book; longer sides need the WebSocket (0 = no limit)",
    )
    s.add_argument(
        "--http-token",
        default=os.environ.get("ORDERBOOK_HTTP_TOKEN"),
        help="token that /symbols and /book need (Authorization: Bearer or ?token=); may equal --token",
    )
    s.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=defaults.max_connections_per_ip,
        metavar="N",
        help="WebSocket connections per source IP (429 beyond; 0 = no limit; behind a proxy: "
        "--trust-proxy, or raise it)",
    )
    s.add_argument(
        "--handshake-rate",
        type=float,
        default=defaults.handshake_rate,
        metavar="PER_S",
        help="WebSocket handshakes per second per source IP (429 beyond; 0 = no limit)",
    )
    s.add_argument(
        "--handshake-burst",
        type=float,
        default=defaults.handshake_burst,
        metavar="N",
        help="handshakes one source IP may make at once before --handshake-rate applies",
    )
    s.add_argument(
        "--trust-proxy",
        action="append",
        metavar="CIDR",
        type=_trusted_network,
        help="a proxy network whose X-Forwarded-For names the client: connections from it count, "
        "for the per-IP limits and in logs, as the right-most forwarded address outside "
        "every --trust-proxy network (repeatable; default: none, the TCP peer)",
    )
    s.add_argument(
        "--global-handshake-rate",
        type=float,
        default=defaults.global_handshake_rate,
        metavar="PER_S",
        help="WebSocket handshakes per second from everyone together (429 beyond; 0 = no limit)",
    )
    s.add_argument("--global-handshake-burst", type=float, default=defaults.global_handshake_burst, metavar="N")
    s.add_argument(
        "--accepts-per-turn",
        type=int,
        default=defaults.accepts_per_turn,
        metavar="N",
        help="new connections started per event-loop turn, round-robin by client address; the rest "
        "wait in a later turn, so a connection storm cannot stall streaming subscribers",
    )
    s.add_argument("--client-buffer", type=int, default=4 * 1024 * 1024, help="bytes per slow client")
    s.add_argument(
        "--slow-client-timeout",
        type=float,
        default=30.0,
        help="seconds a client may stay over --client-buffer before it is closed (1013)",
    )
    s.add_argument(
        "--client-rate",
        type=float,
        default=defaults.client_rate,
        metavar="PER_S",
        help="messages per second one subscriber may send; past it (and --client-burst) "
        "its connection is not read until it may go on (0 = no limit)",
    )
    s.add_argument("--client-burst", type=float, default=defaults.client_burst, metavar="N")
    s.add_argument(
        "--churn-rate",
        type=float,
        default=defaults.churn_rate,
        metavar="PER_S",
        help="subscribes + unsubscribes per second per connection; past it (and --churn-burst) "
        "ERROR_CODE_RATE_LIMITED (0 = no limit)",
    )
    s.add_argument("--churn-burst", type=float, default=defaults.churn_burst, metavar="N")
    s.add_argument(
        "--max-fragments",
        type=int,
        default=defaults.max_fragments,
        metavar="N",
        help="frames in one fragmented client message (close 1009 beyond; 0 = no limit)",
    )
    s.add_argument(
        "--degrade-interval",
        type=int,
        default=500,
        metavar="MS",
        help="a client past half its buffer gets updates conflated over MS ms until it drains",
    )
    s.add_argument("--no-simulator", action="store_true", help="serve only what /feed publishes")
    s.add_argument(
        "--allow-takeover",
        action="store_true",
        help="a /feed batch may take a symbol from the simulator or --replay (it must replace the whole book)",
    )
    s.add_argument(
        "--redis",
        default=os.environ.get("ORDERBOOK_REDIS"),
        help="join a cluster through this Redis (redis://host:port/db); the simulator is then off",
    )
    s.add_argument("--redis-prefix", default="orderbook", help="key prefix of the cluster in Redis")
    s.add_argument("--lease-ttl", type=float, default=3.0, help="sequencer lease in seconds (failover time)")
    s.add_argument("--snapshot-every", type=int, default=1000, help="log entries between cluster snapshots")
    s.add_argument("--log-retention", type=int, default=10_000, help="log entries kept before the newest snapshot")
    s.add_argument("--simulator-rate", type=float, default=200.0, help="updates per second")
    s.add_argument("--seed", type=int, default=None, help="simulator seed")
    s.add_argument("--access-log", action="store_true")
    s.add_argument("--replay", metavar="FILE", help="serve a recording instead of the simulator")
    s.add_argument("--format", default="auto", help="format of --replay's file (default: guess)")
    for name in ("--depth", "--price-scale", "--size-scale", "--levels"):
        s.add_argument(name, type=int, help=argparse.SUPPRESS)
    for name in ("--snapshots", "--symbol"):
        s.add_argument(name, help=argparse.SUPPRESS)
    _add_pacing_arguments(s, "play --replay's file again and again")
    s.set_defaults(func=_serve, file=None)

    w = sub.add_parser("watch", help="print a live top-of-book")
    w.add_argument("symbols", nargs="+")
    w.add_argument("--url", default="ws://127.0.0.1:8000/ws")
    w.add_argument("--rows", type=int, default=5)
    w.add_argument("--token", default=os.environ.get("ORDERBOOK_TOKEN"))
    w.add_argument("--json", action="store_true", help="use the JSON encoding")
    w.add_argument("--once", action="store_true", help="print one table and exit")
    w.add_argument("--depth", type=int, default=0, help="levels per side to subscribe to (0 = full book)")
    w.add_argument("--interval", type=int, default=0, metavar="MS", help="conflate: at most one update per MS ms")
    w.set_defaults(func=_watch)

    r = sub.add_parser("replay", help="play recorded market data into a running node through /feed")
    _add_source_arguments(r)
    r.add_argument("--url", default="http://127.0.0.1:8000", help="the node (its /feed endpoint)")
    r.add_argument("--feed-token", default=os.environ.get("ORDERBOOK_FEED_TOKEN"))
    _add_pacing_arguments(r)
    r.add_argument("--laps", type=int, default=None, help="with --loop: stop after this many laps")
    r.add_argument(
        "--rename",
        action="append",
        metavar="OLD=NEW",
        help="publish symbol OLD as NEW (repeatable), e.g. beside the node's own OLD",
    )
    r.set_defaults(func=_replay)

    v = sub.add_parser("verify", help="rebuild the books of a recording and check the venue's own references")
    _add_source_arguments(v)
    v.add_argument(
        "--server", help="check end to end: replay through this node's /feed and compare a subscriber's books"
    )
    v.add_argument("--feed-token", default=os.environ.get("ORDERBOOK_FEED_TOKEN"))
    v.add_argument("--token", default=os.environ.get("ORDERBOOK_TOKEN"), help="subscriber token")
    v.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server at each step")
    v.set_defaults(func=_verify)

    c = sub.add_parser("record", help="write what a subscriber receives to a file that replay plays back")
    c.add_argument("symbols", nargs="+")
    c.add_argument("--url", default="ws://127.0.0.1:8000/ws")
    c.add_argument("--out", required=True, help="the file to write (gzip-compressed if it ends in .gz)")
    c.add_argument("--gzip", action="store_true", help="compress even without a .gz name")
    c.add_argument("--duration", type=float, help="stop after this many seconds")
    c.add_argument("--count", type=int, help="stop after this many messages")
    c.add_argument("--token", default=os.environ.get("ORDERBOOK_TOKEN"))
    c.set_defaults(func=_record)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
