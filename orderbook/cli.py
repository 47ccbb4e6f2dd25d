"""The `orderbook` command: `serve` runs a node, `watch` shows live books,
`replay` plays recorded market data into a node, `verify` checks a recording
against the venue's own references, `record` writes what a subscriber receives."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import resource
import sys
import types
import typing
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from orderbook.core.errors import InvalidInput
from orderbook.core.history import HistoryLimits

if TYPE_CHECKING:
    from orderbook.replay.files import Source
    from orderbook.replay.player import ReplayPlan
    from orderbook.replay.window import TimePoint
    from orderbook.server.client_address import Network
    from orderbook.server.settings import Option, Settings


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
        if args.redis_url:
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


def _serve_options() -> dict[str, tuple[Option, type]]:
    """Field name -> (its option, the kind of its value) for every Settings
    field that `serve` sets; the kind is int, float, str, bool or tuple."""
    from orderbook.server.settings import OPTION, Settings

    hints = typing.get_type_hints(Settings)
    options = {}
    for f in dataclasses.fields(Settings):
        if OPTION not in f.metadata:
            continue
        hint = hints[f.name]
        if typing.get_origin(hint) in (types.UnionType, typing.Union):  # X | None
            (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
        options[f.name] = (f.metadata[OPTION], typing.get_origin(hint) or hint)
    return options


def serve_settings(args: argparse.Namespace, replay_plan: ReplayPlan | None = None) -> Settings:
    """The Settings of `orderbook serve` from its parsed options."""
    from pathlib import Path

    from orderbook.server.settings import DEFAULT_UI_DIR, Settings

    values: dict[str, Any] = {}
    for name, (opt, kind) in _serve_options().items():
        value = getattr(args, name)
        if kind is tuple:
            value = tuple(str(v) for v in value or ())
        elif opt.scale != 1:
            value = round(value * opt.scale)
        values[name] = value
    ui_dir: Path | None = DEFAULT_UI_DIR
    if args.no_ui:
        ui_dir = None
    elif args.ui_dir is not None:
        ui_dir = Path(args.ui_dir).expanduser().resolve()
        if not ui_dir.is_dir():
            raise ValueError(f"--ui-dir {args.ui_dir} is not a directory")
    for origin in values["cors_origins"]:
        if not _is_origin(origin):
            raise ValueError(f"--cors-origin {origin!r} is neither '*' nor an origin (scheme://host[:port])")
    # A cluster's feed is its log, and --replay replaces the simulator.
    values["simulator"] = values["simulator"] and not args.redis_url and replay_plan is None
    return Settings(
        **values,
        ui_dir=ui_dir,
        history=HistoryLimits(args.history_entries, args.history_bytes),
        replay=replay_plan,
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
    if args.redis_url:
        return "cluster " + _redact(args.redis_url)
    if args.replay:
        return f"replaying {args.replay}"
    return "simulator " + ("on" if args.simulator else "off")


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


def _source(args: argparse.Namespace) -> Source:
    from pathlib import Path

    from orderbook.replay.files import Source, detect_format

    path = Path(args.file)
    fmt = args.format
    if fmt == "auto":
        fmt = detect_format(path)
    options: dict[str, Any] = {}
    for name in ("depth", "price_scale", "size_scale", "snapshots", "symbol", "levels", "gaps"):
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in _FORMAT_OPTIONS[fmt]:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to the {fmt} format")
        options[name] = value
    return Source(path, fmt, tuple(sorted(options.items())))


def _window(args: argparse.Namespace) -> tuple[TimePoint | None, TimePoint | None]:
    from orderbook.replay.window import parse_time

    start = parse_time(args.start) if args.start else None
    end = parse_time(args.end) if args.end else None
    return start, end


def _plan(args: argparse.Namespace) -> ReplayPlan:
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
    from orderbook.replay.verify import Verifier, with_rebuilt_references
    from orderbook.wire.recording import RecordingTruncated

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
            except RecordingTruncated as exc:
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


def _run_async(name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> int:
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
    p.add_argument(
        "--format", default="auto", choices=("auto", *FORMATS), help="the file's format; auto: guess from the file"
    )
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
        help="recording: a break in a symbol's sequence is an error, or with resync skipped to the symbol's "
        "next snapshot (default: error)",
    )


def _add_pacing_arguments(p: argparse.ArgumentParser, loop_help: str = "start again at the end") -> None:
    p.add_argument("--speed", default="1", help="1 = recorded pace, 10 = ten times faster, max = as fast as possible")
    p.add_argument("--loop", action="store_true", help=loop_help)
    p.add_argument(
        "--start",
        help="window start: +SECONDS after the first record (+30s, +2m) or an ISO-8601 time "
        "(default: the first record)",
    )
    p.add_argument("--end", help="window end, same forms as --start (default: the last record)")


def _add_env_argument(
    p: argparse.ArgumentParser, flag: str, env: str, help: str, fallback: object = None, **kw: Any
) -> None:
    """An option whose default is the environment variable `env`, else
    `fallback`. The help names the variable, never its value: it may be a
    secret, and --help output ends up in logs and terminals."""
    shown = "none" if fallback is None else fallback
    p.add_argument(flag, default=os.environ.get(env, fallback), help=f"{help} (default: ${env}, else {shown})", **kw)


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


def _trusted_network(text: str) -> Network:
    from orderbook.server.client_address import parse_network

    try:
        return parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default: argparse's "(default: ...)" is added
    unless the help already says the default in words (for a default of
    None, or one that comes from the environment). A flag's default is
    being off."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def _add_serve_arguments(s: argparse.ArgumentParser) -> None:
    """`serve`'s options: one per Settings field that names one (its flag,
    help and default come from the field), the page and history options in
    their fields' places, then those of the process and of --replay."""
    from orderbook.server.settings import Settings

    s.add_argument(
        "--backlog",
        type=int,
        default=2048,
        metavar="N",
        help="listen backlog: connections the kernel queues before the node accepts them (capped by "
        "net.core.somaxconn)",
    )
    options = _serve_options()
    for f in dataclasses.fields(Settings):
        if f.name == "ui_dir":
            ui = s.add_mutually_exclusive_group()
            ui.add_argument(
                "--ui-dir",
                metavar="DIR",
                help="the built trading page served at / (default: the package's orderbook/server/static)",
            )
            ui.add_argument("--no-ui", action="store_true", help="serve no page: GET / answers 404")
        elif f.name == "history":
            history = Settings().history
            s.add_argument(
                "--history-entries",
                type=int,
                default=history.max_entries,
                metavar="N",
                help="resume history per symbol: entries",
            )
            s.add_argument(
                "--history-bytes",
                type=int,
                default=history.max_bytes,
                metavar="BYTES",
                help="resume history per symbol: bytes",
            )
        elif f.name in options:
            _add_settings_option(s, f, *options[f.name])
    s.add_argument("--access-log", action="store_true", help="log every HTTP request and WebSocket open and close")
    s.add_argument("--replay", metavar="FILE", help="serve a recording instead of the simulator (default: none)")
    s.add_argument("--format", default="auto", help="format of --replay's file; auto: guess from the file")
    # The format options of --replay, as `orderbook replay` documents them.
    for name in ("--depth", "--price-scale", "--size-scale", "--levels"):
        s.add_argument(name, type=int, help=argparse.SUPPRESS)
    for name in ("--snapshots", "--symbol"):
        s.add_argument(name, help=argparse.SUPPRESS)
    _add_pacing_arguments(s, "play --replay's file again and again")


def _add_settings_option(s: argparse.ArgumentParser, f: dataclasses.Field[Any], opt: Option, kind: type) -> None:
    if kind is bool:
        # The flag turns the field's default around.
        s.add_argument(opt.flag, dest=f.name, action="store_false" if f.default else "store_true", help=opt.help)
        return
    if kind is tuple:
        value_type: Callable[[str], Any] = _trusted_network if f.name == "trusted_proxies" else str
        s.add_argument(opt.flag, dest=f.name, action="append", type=value_type, metavar=opt.metavar, help=opt.help)
        return
    default: Any = f.default
    value_type = kind
    if opt.scale != 1:
        default, value_type = default / opt.scale, float
    if opt.env:
        _add_env_argument(s, opt.flag, opt.env, opt.help, default, dest=f.name, type=value_type, metavar=opt.metavar)
    else:
        s.add_argument(opt.flag, dest=f.name, type=value_type, default=default, metavar=opt.metavar, help=opt.help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orderbook", description=__doc__, formatter_class=_HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)

    s = command("serve", "run a node (default: built-in market simulator, no Redis)")
    _add_serve_arguments(s)
    s.set_defaults(func=_serve, file=None)

    w = command("watch", "print a live top-of-book")
    w.add_argument("symbols", nargs="+", help="the symbols to show")
    w.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="the node's WebSocket endpoint")
    w.add_argument("--rows", type=int, default=5, help="levels shown per side")
    _add_env_argument(w, "--token", "ORDERBOOK_TOKEN", "subscriber token")
    w.add_argument("--json", action="store_true", help="use the JSON encoding")
    w.add_argument("--once", action="store_true", help="print one table and exit")
    w.add_argument("--depth", type=int, default=0, help="levels per side to subscribe to (0 = full book)")
    w.add_argument(
        "--interval", type=int, default=0, metavar="MS", help="conflate: at most one update per MS ms (0 = every one)"
    )
    w.set_defaults(func=_watch)

    r = command("replay", "play recorded market data into a running node through /feed")
    _add_source_arguments(r)
    r.add_argument("--url", default="http://127.0.0.1:8000", help="the node (its /feed endpoint)")
    _add_env_argument(r, "--feed-token", "ORDERBOOK_FEED_TOKEN", "the node's publisher token")
    _add_pacing_arguments(r)
    r.add_argument("--laps", type=int, default=None, help="with --loop: stop after this many laps (default: no limit)")
    r.add_argument(
        "--rename",
        action="append",
        metavar="OLD=NEW",
        help="publish symbol OLD as NEW (repeatable), e.g. beside the node's own OLD (default: none)",
    )
    r.set_defaults(func=_replay)

    v = command("verify", "rebuild the books of a recording and check the venue's own references")
    _add_source_arguments(v)
    v.add_argument(
        "--server",
        help="check end to end: replay through this node's /feed and compare a subscriber's books "
        "(default: none, offline)",
    )
    _add_env_argument(v, "--feed-token", "ORDERBOOK_FEED_TOKEN", "the --server node's publisher token")
    _add_env_argument(v, "--token", "ORDERBOOK_TOKEN", "the --server node's subscriber token")
    v.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server at each step")
    v.set_defaults(func=_verify)

    c = command("record", "write what a subscriber receives to a file that replay plays back")
    c.add_argument("symbols", nargs="+", help="the symbols to record")
    c.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="the node's WebSocket endpoint")
    c.add_argument("--out", required=True, help="the file to write (gzip-compressed if it ends in .gz)")
    c.add_argument("--gzip", action="store_true", help="compress even without a .gz name")
    c.add_argument("--duration", type=float, help="stop after this many seconds (default: until stopped)")
    c.add_argument("--count", type=int, help="stop after this many messages (default: no limit)")
    _add_env_argument(c, "--token", "ORDERBOOK_TOKEN", "subscriber token")
    c.set_defaults(func=_record)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
