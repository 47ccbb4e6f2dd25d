"""The `orderbook` command: `serve` runs a node, `watch` shows live books,
`replay` plays recorded market data into a node, `verify` checks a recording
against the venue's own references, `record` writes what a subscriber receives."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import os
import resource
import socket
import ssl
import sys
import time
import traceback
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from orderbook import logs
from orderbook.core.errors import InvalidInput
from orderbook.core.history import HistoryLimits

if TYPE_CHECKING:
    from orderbook.replay.files import Source
    from orderbook.replay.player import ReplayPlan
    from orderbook.replay.records import Record
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
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Failure(Exception):
    """Why a command cannot go on, in one line that names the cause and the
    fix; `status` is the exit status (2: the setup is wrong, 1: the work
    failed). `main` prints it, with the traceback only under --debug."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- the node's URLs

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "ORDERBOOK_URL"
# How long `watch --once` waits for its books.
WATCH_TIMEOUT = 10.0
DEBUG_HELP = "on failure show the traceback, and log the package's debug lines"
_HTTP_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def node_url(text: str) -> str:
    """The node's base URL, http(s)://host:port[/prefix], from what a user
    may give: that, a bare host:port, or a ws(s):// URL of /ws or /feed."""
    parts = urlsplit(text.strip() if "://" in text else f"http://{text.strip()}")
    scheme = _HTTP_SCHEMES.get(parts.scheme.lower())
    try:
        parts.port  # noqa: B018  (raises on a bad port)
        port_ok = True
    except ValueError:
        port_ok = False
    if scheme is None or not parts.hostname or not port_ok:
        raise Failure(f"--url {text!r}: not a node's URL; give its base URL, e.g. {DEFAULT_URL}")
    path = parts.path.rstrip("/")
    for endpoint in ("/ws", "/feed"):
        if path.endswith(endpoint):
            path = path[: -len(endpoint)]
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def endpoint_url(base: str, path: str) -> str:
    """ws(s):// `path` (/ws, /feed) of the node at `base`; its query kept."""
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + path, parts.query, ""))


def _without_query(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(query=""))


def _url_of(args: argparse.Namespace) -> str:
    """The node of a client command: --url, else $ORDERBOOK_URL, else the default."""
    return node_url(args.url or os.environ.get(URL_ENV) or DEFAULT_URL)


def no_node(url: str) -> Failure:
    return Failure(f"no node at {_without_query(url)} — is it running? (--url, ${URL_ENV})")


def _node_answers(base: str, timeout: float = 3.0) -> bool:
    """Whether something answers GET /healthz at `base`."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(_without_query(base) + "/healthz", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answers, if not with 200
    except (OSError, ValueError):
        return False


def _refused(url: str, exc: Exception) -> Failure:
    """A refused WebSocket upgrade, with the server's own reason."""
    from websockets.exceptions import InvalidStatus

    from orderbook.client.errors import HandshakeRejected

    if isinstance(exc, InvalidStatus):
        r = exc.response
        exc = HandshakeRejected(r.status_code, r.reason_phrase, bytes(r.body or b""))
    assert isinstance(exc, HandshakeRejected)
    said = exc.text or exc.reason or "no reason given"
    hint = ""
    if exc.status == 401:
        feed = urlsplit(url).path.endswith("/feed")
        hint = " (--feed-token, $ORDERBOOK_FEED_TOKEN)" if feed else " (--token, $ORDERBOOK_TOKEN)"
    return Failure(f"{_without_query(url)} refused the connection: HTTP {exc.status}: {said}{hint}", status=1)


# ----------------------------------------------------------------------------- files


def _readable(path_text: str) -> None:
    """A clear Failure unless `path_text` names a file or folder this process can read."""
    path = Path(path_text)
    if not path.exists():
        raise Failure(f"no such file: {path_text} — check the path")
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise Failure(f"cannot read {path_text}: permission denied — check its permissions")


def _writable(path_text: str) -> None:
    """A clear Failure unless `path_text` can be created or overwritten."""
    path = Path(path_text)
    folder = path.parent
    if path.is_dir():
        raise Failure(f"cannot write {path_text}: it is a folder — give a file name (--out)")
    if not folder.is_dir():
        raise Failure(
            f"cannot write {path_text}: the folder {folder} does not exist — create it, or choose another --out"
        )
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK):
        raise Failure(f"cannot write {path_text}: permission denied — choose another --out")


def _file_failure(exc: OSError) -> Failure:
    """A file that could not be opened, as one line."""
    name = exc.filename if exc.filename is not None else "a file"
    why = exc.strerror or str(exc)
    return Failure(f"cannot open {name}: {why} — check the path and its permissions")


# ----------------------------------------------------------------------------- serve

# How long `serve --redis` waits for its Redis to answer before giving up.
REDIS_WAIT_S = 3.0


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    """The node's listening socket, bound here so that an address in use is
    one clear line before anything starts."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Failure(f"cannot listen on {host}: {exc.strerror} — check --host (or $ORDERBOOK_HOST)") from exc
    # A name (localhost) listens on its IPv4 address where it has one, as Sanic's own binding does.
    family, kind, proto, _, address = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise Failure(
                f"port {port} on {host} is in use — stop what listens there, or choose another with --port (or $PORT)"
            ) from exc
        if exc.errno == errno.EACCES:
            raise Failure(
                f"not allowed to listen on {where} (ports below 1024 need privileges) — choose another --port"
            ) from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise Failure(f"cannot listen on {where}: no such address on this machine — check --host") from exc
        raise Failure(f"cannot listen on {where}: {exc.strerror or exc} — check --host and --port") from exc
    sock.set_inheritable(True)
    return sock


def _check_redis(url: str) -> None:
    """Fail in one line, before the node starts, when the cluster's Redis
    does not answer."""
    import redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError

    shown = _redact(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    except ValueError as exc:
        raise Failure(f"--redis {shown}: {exc} — give redis://host:port/db") from exc
    # A Redis started a moment ago (`redis-server & orderbook serve ...`) gets a few seconds.
    deadline = time.monotonic() + REDIS_WAIT_S
    try:
        while True:
            try:
                client.ping()
                return
            except RedisConnectionError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.2)  # before the next try, in the CLI before anything runs
    except RedisError as exc:
        raise Failure(
            f"cannot reach Redis at {shown} ({exc}) — is redis-server running there? (--redis, $ORDERBOOK_REDIS)"
        ) from exc
    finally:
        client.close()


def _display_host(host: str) -> str:
    """The host part of a URL that reaches this node from here."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _banner(args: argparse.Namespace, settings: Settings, soft: int, secure: bool) -> str:
    """The URLs the node serves, printed once it is listening."""
    from orderbook.server import ui

    http, ws = ("https", "wss") if secure else ("http", "ws")
    base = f"{_display_host(args.host)}:{args.port}"
    if settings.ui_dir is None:
        page = "none (--no-ui)"
    elif (settings.ui_dir / ui.INDEX).is_file():
        page = f"{http}://{base}/"
    else:
        page = (
            f"not built — `make web` builds it (needs Node.js >= 20 and npm), then restart; "
            f"{http}://{base}/ says the same"
        )
    feed = f"{ws}://{base}/feed" + ("" if args.feed_token else "  (off: start with --feed-token to publish)")
    every = "  (listening on every interface)" if args.host in ("0.0.0.0", "::", "") else ""
    return "\n".join(
        [
            f"orderbook: serving on {http}://{base}{every}  ({_feed_description(args)}, fd limit {soft})",
            f"  page       {page}",
            f"  WebSocket  {ws}://{base}/ws",
            f"  feed       {feed}",
            f"  health     {http}://{base}/healthz  (readiness: /readyz)",
        ]
    )


class _StartFailureReported(logging.Filter):
    """Drops Sanic's own traceback of a failed start: the command reports it
    in one line (with the traceback under --debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Experienced exception while trying to serve")


def _serve(args: argparse.Namespace) -> int:
    from orderbook.server.app import PROTOCOL, create_app

    replay_plan = None
    if args.replay:
        if args.redis_url:
            raise Failure(
                "--replay serves one node; to replay into a cluster, run `orderbook replay FILE --url <any node>`"
            )
        args.file = args.replay
        for path in args.replay:
            _readable(path)
        try:
            replay_plan = _plan(args)
        except (ValueError, InvalidInput) as exc:
            raise Failure(str(exc)) from exc
    from orderbook.server import tls as server_tls
    from orderbook.server.app import drain_on_signals

    try:
        settings = serve_settings(args, replay_plan)
        # Read here, so a bad certificate or key is one line and exit 2.
        tls = server_tls.from_settings(settings.tls_cert, settings.tls_key)
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    if settings.redis_url:
        _check_redis(settings.redis_url)
    if settings.workers < 1:
        raise Failure(f"--workers {settings.workers}: at least 1")
    if settings.workers > 1:
        return _serve_workers(args, settings, secure=tls is not None)
    # A connection storm waits in the kernel's accept queue (and meets the
    # handshake limits) instead of having its SYNs dropped and retried 1 s later.
    sock = _listen(args.host, args.port, args.backlog)
    soft, _ = _raise_fd_limit()
    app = create_app(settings)
    drain_on_signals(app)
    banner = _banner(args, settings, soft, secure=tls is not None)

    @app.after_server_start
    async def announce(app: object) -> None:
        # Once listening (make run shows it): the URLs work from now on.
        print(banner, flush=True)

    # A failed start (Redis gone since the check, say) is said once, by main().
    logging.getLogger("sanic.error").addFilter(_StartFailureReported())
    try:
        app.run(
            host=args.host,
            port=args.port,
            sock=sock,
            backlog=args.backlog,
            protocol=PROTOCOL,
            ssl=tls,
            single_process=True,
            access_log=args.access_log,
            motd=False,
        )
    finally:
        sock.close()
    return 0


def _serve_workers(args: argparse.Namespace, settings: Settings, secure: bool) -> int:
    """`serve --workers N`: this process supervises N workers sharing the port."""
    from orderbook.server import workers

    # Checked here, so a port in use is one line; each worker binds its own
    # socket (SO_REUSEPORT) once this one is closed.
    _listen(args.host, args.port, args.backlog).close()
    soft, _ = _raise_fd_limit()  # inherited by the workers
    listen = workers.Listen(
        args.host, args.port, args.backlog, args.access_log, args.log_format or "text", bool(args.debug)
    )
    print(_banner(args, settings, soft, secure=secure) + f"\n  workers    {settings.workers}", flush=True)
    return workers.run(settings, listen)


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
        return "replaying " + " ".join(args.replay)
    return "simulator " + ("on" if args.simulator else "off")


# ----------------------------------------------------------------------------- replay / verify / record

# Reader options a format takes, as (cli dest, reader keyword).
_FORMAT_OPTIONS = {
    "kraken": ("depth", "gaps"),
    "coinbase": ("price_scale", "size_scale", "gaps"),
    "binance": ("snapshots", "gaps"),
    "okx": ("instruments", "gaps"),
    "deribit": ("instruments", "gaps"),
    "lobster": ("symbol", "levels"),
    "tardis": ("price_scale", "size_scale"),
    "recording": ("gaps",),
}


def _source(args: argparse.Namespace) -> Source:
    from pathlib import Path

    from orderbook.replay.files import Source, check_chainable, common_format

    paths = [Path(p) for p in args.file]
    fmt = common_format(paths, args.format)
    options: dict[str, Any] = {}
    for name in ("depth", "price_scale", "size_scale", "snapshots", "instruments", "symbol", "levels", "gaps"):
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in _FORMAT_OPTIONS[fmt]:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to the {fmt} format")
        options[name] = value
    check_chainable(paths, fmt, options)  # refused before a node is contacted
    return Source(paths[0], fmt, tuple(sorted(options.items())), tuple(paths[1:]))


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


def _unreachable(exc: BaseException) -> bool:
    """Whether opening a connection failed because nothing answers there (not
    a certificate problem, not a refusal)."""
    return isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, ssl.SSLError)


def _replay(args: argparse.Namespace) -> int:
    from orderbook.client.errors import HandshakeRejected
    from orderbook.replay.player import FeedSink, PlayStats, play
    from orderbook.replay.progress import Progress, counted_later, wanted
    from orderbook.replay.records import parse_renames, renamed
    from orderbook.replay.window import within

    args.url = _url_of(args)
    for path in args.file:
        _readable(path)
    try:
        plan = _plan(args)
        names = parse_renames(args.rename or ())
        tls = _client_tls(args, args.url)
    except (ValueError, InvalidInput) as exc:
        raise Failure(str(exc)) from exc
    connect_options: dict[str, Any] = {} if tls is None else {"ssl": tls}
    feed = endpoint_url(args.url, "/feed")

    def records():
        return renamed(plan.source.records(), names)

    show = wanted(args.no_progress)
    total: Callable[[], float | None] = lambda: None  # noqa: E731
    if show and plan.speed > 0 and (not plan.loop or args.laps):
        # Paced, the replay mostly waits: counting the records meanwhile is
        # free and gives the bar its end (and so an ETA).
        laps = args.laps if plan.loop else 1
        total = counted_later(lambda: laps * sum(1 for _ in within(records(), plan.start, plan.end)))
    stats = PlayStats()

    def at() -> str:
        return f"at {_recorded_time(stats.time_ns)}" if stats.time_ns else ""

    async def run() -> None:
        try:
            sink = await FeedSink.connect(feed, args.feed_token, **connect_options)
        except HandshakeRejected as exc:
            raise _refused(feed, exc) from exc
        except Exception as exc:
            if _unreachable(exc):
                raise no_node(args.url) from exc
            raise
        with Progress("replay", "records", lambda: stats.records, show=show, total=total, note=at) as progress:
            try:
                await play(
                    records,
                    sink,
                    speed=plan.speed,
                    loop=plan.loop,
                    laps=args.laps,
                    start=plan.start,
                    end=plan.end,
                    stats=stats,
                )
            finally:
                await sink.close()
        print(
            f"orderbook replay: {stats.records} records, {stats.updates} updates in {stats.batches} batches, "
            f"{sink.changes} changes sequenced, {stats.laps} lap(s), {progress.took(stats.records)}",
            flush=True,
        )

    asyncio.run(run())
    return 0


def _recorded_time(time_ns: int) -> str:
    """A record's time for the progress bar: UTC, to the second."""
    import datetime

    return datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _verify_server(args: argparse.Namespace) -> str | None:
    """The node to verify through: --server URL, --server alone (the --url
    node), --url; None offline."""
    if args.server:
        return node_url(args.server)
    if args.server is not None or args.url:
        return _url_of(args)
    return None


def _verify(args: argparse.Namespace) -> int:
    from orderbook.client.errors import HandshakeRejected
    from orderbook.replay.files import FORMATS_WITHOUT_REFERENCES
    from orderbook.replay.progress import Progress, wanted
    from orderbook.replay.verify import Report, Verifier, with_rebuilt_references
    from orderbook.wire.recording import RecordingTruncated

    server = _verify_server(args)
    for path in args.file:
        _readable(path)
    try:
        source = _source(args)
    except (ValueError, InvalidInput) as exc:
        raise Failure(str(exc)) from exc
    show = wanted(args.no_progress)
    report: Report
    if server:
        from websockets.exceptions import InvalidStatus

        from orderbook.replay.endtoend import verify_through_server

        read = [0]

        def counted(records: Iterator[Record]) -> Iterator[Record]:
            for record in records:
                read[0] += 1
                yield record

        records = counted(source.records())
        if source.format in FORMATS_WITHOUT_REFERENCES:
            records = with_rebuilt_references(records)
        with Progress("verify", "records", lambda: read[0], show=show) as progress:
            try:
                report = asyncio.run(
                    verify_through_server(
                        records, server, feed_token=args.feed_token, token=args.token, timeout=args.timeout
                    )
                )
            except (HandshakeRejected, InvalidStatus) as exc:
                raise _refused(server, exc) from exc
            except Exception as exc:
                if _unreachable(exc) and getattr(exc, "filename", None) is None:
                    raise no_node(server) from exc
                raise
    else:
        verifier = Verifier()
        verifier.report.references_expected = source.format not in FORMATS_WITHOUT_REFERENCES
        report = verifier.report
        with Progress("verify", "records", lambda: report.records, show=show) as progress:
            try:
                for record in source.records():
                    verifier.feed(record)
            except RecordingTruncated as exc:
                # A killed recorder leaves a cut last entry: check all before it.
                print(
                    f"orderbook verify: warning: {exc}; the {exc.entries} complete entries are checked", file=sys.stderr
                )
    where = f"through {server}" if server else "offline"
    files = f"{len(source.paths)} files, " if source.more else ""
    heading = f"{source.name} ({files}{source.format}, {where})"
    print(f"{heading}: {report.records} records {progress.took(report.records)}")
    for line in report.lines():
        print("  " + line)
    return 0 if report.ok else 1


def _record(args: argparse.Namespace) -> int:
    from orderbook.client.errors import HandshakeRejected
    from orderbook.replay.progress import Progress, wanted
    from orderbook.replay.recorder import Recorder

    args.url = _url_of(args)
    _writable(args.out)
    try:
        tls = _client_tls(args, args.url)
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    stream = endpoint_url(args.url, "/ws")
    show = wanted(args.no_progress)

    async def run() -> None:
        try:
            recorder = Recorder(
                stream,
                args.symbols,
                args.out,
                token=args.token,
                gzip=args.gzip,
                duration=args.duration,
                max_messages=args.count,
                ssl=tls,
            )
        except ValueError as exc:
            raise Failure(str(exc)) from exc
        summary = recorder.summary
        start = time.monotonic()
        if args.duration is not None:
            # The bar runs in seconds toward --duration; the messages beside it.
            duration = float(args.duration)
            progress = Progress(
                "record",
                "s",
                lambda: round(min(time.monotonic() - start, duration), 1),
                show=show,
                total=lambda: duration,
                note=lambda: f"{summary.messages} messages ({summary.messages / progress.elapsed:,.0f}/s)",
                rate=False,
            )
        else:
            count = args.count
            progress = Progress("record", "messages", lambda: summary.messages, show=show, total=lambda: count)
        with progress:
            try:
                await recorder.run()
            except HandshakeRejected as exc:
                raise _refused(stream, exc) from exc
        took = f"in {progress.elapsed:.1f} s ({summary.messages / progress.elapsed:,.0f} messages/s)"
        print(f"orderbook record: {summary}, {took}", flush=True)

    asyncio.run(run())
    return 0


def _add_source_arguments(p: argparse.ArgumentParser) -> None:
    from orderbook.replay.files import FORMATS

    p.add_argument(
        "file",
        nargs="+",
        help="the recording (a folder for LOBSTER or Binance captures); several files of one format, "
        "such as a rotated capture's KRAKEN.ws.50.0 KRAKEN.ws.50.1, are read in the order given as one stream",
    )
    p.add_argument(
        "--format", default="auto", choices=("auto", *FORMATS), help="the file's format; auto: guess from the file"
    )
    g = p.add_argument_group("format options")
    g.add_argument("--depth", type=int, help="kraken: the subscribed book depth (default: from the channel name)")
    g.add_argument("--price-scale", type=int, help="tardis, coinbase: decimals of prices (default: from the data)")
    g.add_argument("--size-scale", type=int, help="tardis, coinbase: decimals of sizes (default: from the data)")
    g.add_argument(
        "--snapshots",
        help="binance: the REST snapshot file (default: inline in the capture, else *.http.* beside it)",
    )
    g.add_argument(
        "--instruments",
        help="okx, deribit: cryptofeed's saved REST instruments file, for tick and lot sizes "
        "(default: OKX.0 beside OKX.ws.1.0, else scales from the data)",
    )
    g.add_argument("--symbol", help="lobster: the symbol (default: from the file name)")
    g.add_argument("--levels", type=int, help="lobster: levels in the file (default: from the file name)")
    g.add_argument(
        "--gaps",
        choices=("error", "resync"),
        help="recording, binance, okx, deribit, kraken, coinbase: a break in a symbol's sequence (binance, "
        "okx, deribit, kraken, coinbase: or a damaged line; okx: a checksum that does not match) is an error, "
        "or with resync skipped to the symbol's next snapshot (default: error; binance: a break in the update "
        "ids resyncs, a damaged line is an error)",
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
    from orderbook.client import ClientError, HandshakeRejected, SubscriptionRejected
    from orderbook.client.watch import watch

    args.url = _url_of(args)
    try:
        tls = _client_tls(args, args.url)
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    stream = endpoint_url(args.url, "/ws")
    if args.once and not args.debug:
        # The outcome is one table or one line: not the retries and refusals on the way.
        logging.getLogger("orderbook.client").setLevel(logging.CRITICAL)
    try:
        asyncio.run(
            watch(
                stream,
                args.symbols,
                rows=args.rows,
                token=args.token,
                encoding="json" if args.json else "proto",
                once=args.once,
                depth=args.depth,
                interval_ms=args.interval,
                timeout=args.timeout if args.once else None,
                ssl=tls,
            )
        )
    except KeyboardInterrupt:
        pass
    except HandshakeRejected as exc:
        raise _refused(stream, exc) from exc
    except TimeoutError as exc:
        if not _node_answers(args.url):
            raise no_node(args.url) from exc
        raise Failure(
            f"{_without_query(args.url)} answers, but sent no book for {' '.join(args.symbols)} within "
            f"{args.timeout:g} s — does it serve them? (GET {_without_query(args.url)}/symbols)",
            status=1,
        ) from exc
    except SubscriptionRejected as exc:
        raise Failure(f"{exc} — GET {_without_query(args.url)}/symbols lists what the node serves", status=1) from exc
    except (ClientError, OSError) as exc:  # OSError: an untrusted wss:// certificate
        raise Failure(str(exc), status=1) from exc
    return 0


def _add_ca_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ca",
        metavar="FILE",
        help="PEM CA certificate(s) a wss:// node's certificate must chain to "
        "(default: the system's CAs, or $SSL_CERT_FILE)",
    )


def _client_tls(args: argparse.Namespace, url: str) -> ssl.SSLContext | None:
    """The context that verifies the node for --ca; None without it (a
    wss:// URL then trusts the system's CAs, or $SSL_CERT_FILE). Raises
    ValueError for a --ca that cannot be read or a URL without TLS."""
    from urllib.parse import urlsplit

    if args.ca is None:
        return None
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("wss", "https"):
        raise ValueError(f"--ca verifies a wss:// (or https://) node, not a {scheme or 'plain'}:// one")
    try:
        return ssl.create_default_context(cafile=args.ca)
    except OSError as exc:  # missing, unreadable, or not PEM (ssl.SSLError)
        raise ValueError(f"--ca {args.ca}: cannot use it ({exc.strerror or exc})") from None


def _log_format(text: str) -> str:
    if text not in logs.FORMATS:
        raise argparse.ArgumentTypeError(f"{text!r}: one of {', '.join(logs.FORMATS)}")
    return text


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
    s.add_argument(
        "--replay",
        nargs="+",
        metavar="FILE",
        help="serve a recording instead of the simulator; several files are read in order as one stream "
        "(default: none)",
    )
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
    value_type = _log_format if f.name == "log_format" else kind
    if opt.scale != 1:
        default, value_type = default / opt.scale, float
    if opt.env:
        _add_env_argument(s, opt.flag, opt.env, opt.help, default, dest=f.name, type=value_type, metavar=opt.metavar)
    else:
        s.add_argument(opt.flag, dest=f.name, type=value_type, default=default, metavar=opt.metavar, help=opt.help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orderbook", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)
        # Also after the command (`orderbook serve --debug`); not given there, the global one stands.
        c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        return c

    s = command("serve", "run a node (default: built-in market simulator, no Redis)")
    _add_serve_arguments(s)
    s.set_defaults(func=_serve, file=None)

    w = command("watch", "print a live top-of-book")
    w.add_argument("symbols", nargs="+", help="the symbols to show")
    _add_url_argument(w)
    w.add_argument("--rows", type=int, default=5, help="levels shown per side")
    _add_env_argument(w, "--token", "ORDERBOOK_TOKEN", "subscriber token")
    w.add_argument("--json", action="store_true", help="use the JSON encoding")
    w.add_argument("--once", action="store_true", help="print one table and exit")
    w.add_argument(
        "--timeout",
        type=float,
        default=WATCH_TIMEOUT,
        metavar="SECONDS",
        help="with --once: give up (exit status 2 if no node answers) after this many seconds",
    )
    w.add_argument("--depth", type=int, default=0, help="levels per side to subscribe to (0 = full book)")
    w.add_argument(
        "--interval", type=int, default=0, metavar="MS", help="conflate: at most one update per MS ms (0 = every one)"
    )
    _add_ca_argument(w)
    w.set_defaults(func=_watch)

    r = command("replay", "play recorded market data into a running node through /feed")
    _add_source_arguments(r)
    _add_url_argument(r)
    _add_env_argument(r, "--feed-token", "ORDERBOOK_FEED_TOKEN", "the node's publisher token")
    _add_pacing_arguments(r)
    r.add_argument("--laps", type=int, default=None, help="with --loop: stop after this many laps (default: no limit)")
    r.add_argument(
        "--rename",
        action="append",
        metavar="OLD=NEW",
        help="publish symbol OLD as NEW (repeatable), e.g. beside the node's own OLD (default: none)",
    )
    _add_ca_argument(r)
    _add_progress_argument(r)
    r.set_defaults(func=_replay)

    v = command("verify", "rebuild the books of a recording and check the venue's own references")
    _add_source_arguments(v)
    v.add_argument(
        "--server",
        nargs="?",
        const="",
        metavar="URL",
        help="check end to end: replay through this node's /feed and compare a subscriber's books; alone, "
        "through the --url node (default: none, offline)",
    )
    _add_url_argument(v, " (given, the check is end to end, as with --server)")
    _add_env_argument(v, "--feed-token", "ORDERBOOK_FEED_TOKEN", "the --server node's publisher token")
    _add_env_argument(v, "--token", "ORDERBOOK_TOKEN", "the --server node's subscriber token")
    v.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server at each step")
    _add_progress_argument(v)
    v.set_defaults(func=_verify)

    c = command("record", "write what a subscriber receives to a file that replay plays back")
    c.add_argument("symbols", nargs="+", help="the symbols to record")
    _add_url_argument(c)
    c.add_argument("--out", required=True, help="the file to write (gzip-compressed if it ends in .gz)")
    c.add_argument("--gzip", action="store_true", help="compress even without a .gz name")
    c.add_argument("--duration", type=float, help="stop after this many seconds (default: until stopped)")
    c.add_argument("--count", type=int, help="stop after this many messages (default: no limit)")
    _add_env_argument(c, "--token", "ORDERBOOK_TOKEN", "subscriber token")
    _add_ca_argument(c)
    _add_progress_argument(c)
    c.set_defaults(func=_record)
    return p


def _add_url_argument(p: argparse.ArgumentParser, more: str = "") -> None:
    p.add_argument(
        "--url",
        metavar="URL",
        help=f"the node's base URL, e.g. {DEFAULT_URL}; its /ws and /feed URLs are derived from it (a ws:// URL "
        f"of /ws or /feed works too){more} (default: ${URL_ENV}, else {DEFAULT_URL})",
    )


def _add_progress_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is one on stderr when it is a terminal); the summary line stays",
    )


def _explain(exc: Exception) -> Failure:
    """What went wrong, as one line and an exit status."""
    from redis.exceptions import RedisError

    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, OSError) and exc.filename is not None:
        return _file_failure(exc)
    if isinstance(exc, RedisError):
        return Failure(f"Redis: {exc} — is redis-server running there? (--redis, $ORDERBOOK_REDIS)")
    if isinstance(exc, InvalidInput):
        return Failure(str(exc), status=1)  # e.g. the node refused a batch: the message says why
    return Failure(f"{type(exc).__name__}: {exc} (--debug shows where)", status=1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(args.debug)
    logs.setup(getattr(args, "log_format", None) or "text", debug=debug)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): nothing left to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        failure = _explain(exc)
        print(f"orderbook {args.command}: {failure}", file=sys.stderr, flush=True)
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        return failure.status


if __name__ == "__main__":
    sys.exit(main())
