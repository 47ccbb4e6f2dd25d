"""The `orderbook` command: `serve` runs a node, `watch` shows live books."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys

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
    from orderbook.server.app import create_app
    from orderbook.server.settings import Settings

    soft, _ = _raise_fd_limit()
    settings = Settings(
        host=args.host,
        port=args.port,
        allowed_origins=tuple(args.origin or ()),
        subscriber_token=args.token,
        feed_token=args.feed_token,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        symbol_heartbeat=args.heartbeat,
        history=HistoryLimits(args.history_entries, args.history_bytes),
        max_connections=args.max_connections,
        client_buffer_limit=args.client_buffer,
        slow_client_timeout=args.slow_client_timeout,
        simulator=not args.no_simulator and not args.redis,
        redis_url=args.redis,
        redis_prefix=args.redis_prefix,
        lease_ttl_ms=int(args.lease_ttl * 1000),
        snapshot_every=args.snapshot_every,
        log_retention=args.log_retention,
        simulator_rate=args.simulator_rate,
        simulator_seed=args.seed,
    )
    app = create_app(settings)
    print(
        f"orderbook: serving on http://{args.host}:{args.port}  "
        f"(WebSocket ws://{args.host}:{args.port}/ws, feed {'on' if args.feed_token else 'off'}, "
        f"{'cluster ' + _redact(args.redis) if args.redis else 'simulator ' + ('off' if args.no_simulator else 'on')}, "
        f"fd limit {soft})",
        flush=True,
    )
    app.run(
        host=args.host,
        port=args.port,
        single_process=True,
        access_log=args.access_log,
        motd=False,
    )
    return 0


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
            )
        )
    except KeyboardInterrupt:
        pass
    except ClientError as exc:
        print(f"orderbook watch: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orderbook", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run a node (default: built-in market simulator, no Redis)")
    s.add_argument("--host", default=os.environ.get("ORDERBOOK_HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    s.add_argument("--origin", action="append", help="allowed WebSocket Origin (repeatable; '*' = any)")
    s.add_argument("--token", default=os.environ.get("ORDERBOOK_TOKEN"), help="subscriber token")
    s.add_argument("--feed-token", default=os.environ.get("ORDERBOOK_FEED_TOKEN"), help="enables /feed")
    s.add_argument("--ping-interval", type=float, default=25.0)
    s.add_argument("--ping-timeout", type=float, default=20.0)
    s.add_argument("--heartbeat", type=float, default=2.0, help="seconds before a quiet symbol gets a Heartbeat")
    s.add_argument("--history-entries", type=int, default=HistoryLimits().max_entries)
    s.add_argument("--history-bytes", type=int, default=HistoryLimits().max_bytes)
    s.add_argument("--max-connections", type=int, default=10_000)
    s.add_argument("--client-buffer", type=int, default=4 * 1024 * 1024, help="bytes per slow client")
    s.add_argument("--slow-client-timeout", type=float, default=30.0)
    s.add_argument("--no-simulator", action="store_true", help="serve only what /feed publishes")
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
    s.set_defaults(func=_serve)

    w = sub.add_parser("watch", help="print a live top-of-book")
    w.add_argument("symbols", nargs="+")
    w.add_argument("--url", default="ws://127.0.0.1:8000/ws")
    w.add_argument("--rows", type=int, default=5)
    w.add_argument("--token", default=os.environ.get("ORDERBOOK_TOKEN"))
    w.add_argument("--json", action="store_true", help="use the JSON encoding")
    w.add_argument("--once", action="store_true", help="print one table and exit")
    w.set_defaults(func=_watch)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
