"""What the `orderbook` command tells its user, run as a user runs it (a
process, real sockets): one line naming the cause and the fix with exit
status 2 (or 1 when the node refused or a check failed), the node's own
reason for a refused connection, the traceback only with --debug; the
node's start-up URLs; its log lines written once, as text or as JSON lines
carrying the connection's fields; refused upgrades logged, throttled; and
progress: a bar on a terminal, a summary line always."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from orderbook.core.instrument import Instrument
from orderbook.wire import codec
from orderbook.wire import recording as wire

from .harness import ROOT, Publisher, free_port, http_request, instrument, update, wait_ready
from .test_recording import T0, Model

pytestmark = pytest.mark.timeout(120)

FEED_TOKEN = "right-token"
NO_NODE = "— is it running? (--url, $ORDERBOOK_URL)"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ORDERBOOK_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERBOOK_") and k != "PORT"}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def orderbook(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orderbook.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env or clean_env(),
    )


def one_line(stderr: str) -> str:
    """The only line of `stderr` (asserting there is exactly one)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@dataclass
class Node:
    proc: subprocess.Popen
    port: int
    out: Path
    err: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> tuple[str, str]:
        """Stop it (SIGTERM, then SIGKILL); its stdout and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.out.read_text(), self.err.read_text()


@contextlib.contextmanager
def node(tmp_path: Path, *args: str) -> Iterator[Node]:
    """`orderbook serve` on a free port, its stdout and stderr in files."""
    port = free_port()
    out, err = tmp_path / f"node-{port}.out", tmp_path / f"node-{port}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orderbook.cli", "serve", "--port", str(port), *args],
            stdout=o,
            stderr=e,
            cwd=ROOT,
            env=clean_env(),
        )
    n = Node(proc, port, out, err)
    try:
        wait_ready(n.http, 30, proc)
        yield n
    finally:
        n.stop()


class PacedModel(Model):
    """A model stream whose messages are `step_ns` apart (the replay paces by them)."""

    def __init__(self, writer: wire.RecordingWriter, step_ns: int) -> None:
        super().__init__(writer)
        self.step_ns = step_ns

    def send(self, msg) -> None:
        self.t += self.step_ns
        self.offsets.append(self.writer.entry_bytes)
        self.writer.write_message(self.t, msg)


def a_recording(path: Path, changes: int, step_ns: int = 1000) -> Path:
    """A recording of one symbol "A": a snapshot then `changes` deltas, with
    the server's own sequencing and checksums."""
    with open(path, "wb") as f:
        w = wire.RecordingWriter(f)
        w.write_header(wire.RecordingInfo("ws://127.0.0.1:1/ws", ("A",), T0))
        m = PacedModel(w, step_ns)
        m.change(bids=[(100, 5)], asks=[(101, 7)], send=False)
        m.subscribed()
        m.snapshot()
        for i in range(changes):
            m.change(bids=[(90 + i % 11, i + 10)], asks=[(101 + i % 7, i + 1)])
        w.close()
    return path


# ------------------------------------------------------------------ no node, refused


def test_watch_once_with_nothing_listening_gives_up_in_one_line():
    port = free_port()
    start = time.monotonic()
    out = orderbook("watch", "BTC-USD", "--once", "--url", f"http://127.0.0.1:{port}", "--timeout", "2")
    assert out.returncode == 2
    assert one_line(out.stderr) == f"orderbook watch: no node at http://127.0.0.1:{port} {NO_NODE}"
    assert time.monotonic() - start < 60  # it gave up (2 s asked; generous for a loaded machine)
    # $ORDERBOOK_URL stands for --url; the default --timeout (10 s) bounds it too.
    env = clean_env(ORDERBOOK_URL=f"http://127.0.0.1:{port}")
    out = orderbook("watch", "BTC-USD", "--once", env=env)
    assert out.returncode == 2
    assert one_line(out.stderr) == f"orderbook watch: no node at http://127.0.0.1:{port} {NO_NODE}"


def test_client_commands_find_the_node_by_its_base_url(tmp_path):
    rec = a_recording(tmp_path / "a.rec", changes=50)
    with node(tmp_path, "--feed-token", FEED_TOKEN) as n:
        # ORDERBOOK_URL, the base URL: watch derives /ws from it.
        out = orderbook("watch", "BTC-USD", "--once", "--rows", "2", env=clean_env(ORDERBOOK_URL=n.http))
        assert out.returncode == 0, out.stderr
        assert re.search(r"^BTC-USD  epoch \d+  seq \d+", out.stdout, re.M)
        # The old form, the WebSocket's own URL, still works.
        out = orderbook("watch", "BTC-USD", "--once", "--url", f"ws://127.0.0.1:{n.port}/ws")
        assert out.returncode == 0, out.stderr
        # verify --server alone goes through the $ORDERBOOK_URL node.
        env = clean_env(ORDERBOOK_URL=n.http, ORDERBOOK_FEED_TOKEN=FEED_TOKEN)
        out = orderbook("verify", str(rec), "--server", env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"(recording, through {n.http})" in out.stdout and "OK:" in out.stdout
        # A symbol the node does not serve: its refusal, and where to look.
        out = orderbook("watch", "NOPE", "--once", "--url", n.http)
        assert out.returncode == 1
        line = one_line(out.stderr)
        assert "unknown symbol 'NOPE'" in line and line.endswith(f"GET {n.http}/symbols lists what the node serves")
        # A URL that is not one says so.
        out = orderbook("watch", "BTC-USD", "--once", "--url", "ftp://x")
        assert out.returncode == 2
        assert "not a node's URL" in one_line(out.stderr)


def test_replay_with_a_wrong_feed_token_shows_the_nodes_reason(tmp_path):
    rec = a_recording(tmp_path / "a.rec", changes=10)
    with node(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator") as n:
        out = orderbook("replay", str(rec), "--url", n.http, "--feed-token", "wrong")
        _, log = n.stop()
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert line == (
        f"orderbook replay: ws://127.0.0.1:{n.port}/feed refused the connection: HTTP 401: "
        "missing or wrong feed token (Authorization: Bearer <token>) (--feed-token, $ORDERBOOK_FEED_TOKEN)"
    )
    # The node logged the refusal with its reason and the peer.
    assert "WARNING orderbook.limits: refused /feed upgrade from 127.0.0.1: 401 missing or wrong feed token" in log


def test_nothing_listening_for_replay_is_one_line(tmp_path):
    rec = a_recording(tmp_path / "a.rec", changes=10)
    port = free_port()
    out = orderbook("replay", str(rec), "--url", f"http://127.0.0.1:{port}", "--feed-token", FEED_TOKEN)
    assert out.returncode == 2
    assert one_line(out.stderr) == f"orderbook replay: no node at http://127.0.0.1:{port} {NO_NODE}"


# ------------------------------------------------------------------ serve: port, Redis


@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def test_serve_on_a_port_in_use_is_one_line():
    with port_in_use() as port:
        out = orderbook("serve", "--port", str(port))
    assert out.returncode == 2
    assert one_line(out.stderr) == (
        f"orderbook serve: port {port} on 127.0.0.1 is in use — stop what listens there, "
        "or choose another with --port (or $PORT)"
    )
    assert out.stdout == ""  # no URLs for a node that is not serving


def test_debug_shows_the_traceback_before_or_after_the_command():
    with port_in_use() as port:
        outs = [orderbook("--debug", "serve", "--port", str(port)), orderbook("serve", "--debug", "--port", str(port))]
    for out in outs:
        assert out.returncode == 2
        lines = out.stderr.splitlines()
        assert lines[0].startswith(f"orderbook serve: port {port} on 127.0.0.1 is in use"), out.stderr
        assert "Traceback (most recent call last)" in out.stderr
        assert "Address already in use" in out.stderr


def test_serve_with_an_unreachable_redis_is_one_line():
    redis_port = free_port()  # nothing listens there
    out = orderbook("serve", "--port", str(free_port()), "--redis", f"redis://127.0.0.1:{redis_port}/0")
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert line.startswith(f"orderbook serve: cannot reach Redis at redis://127.0.0.1:{redis_port}/0 ("), line
    assert line.endswith("— is redis-server running there? (--redis, $ORDERBOOK_REDIS)"), line
    assert out.stdout == ""


# ------------------------------------------------------------------ files


def test_missing_files_are_one_line(tmp_path):
    missing = str(tmp_path / "nope.rec")
    for args in (
        ("replay", missing, "--url", f"http://127.0.0.1:{free_port()}"),
        ("verify", missing),
        ("serve", "--port", str(free_port()), "--replay", missing),
    ):
        out = orderbook(*args)
        assert out.returncode == 2, args
        assert one_line(out.stderr) == f"orderbook {args[0]}: no such file: {missing} — check the path", args
    out = orderbook("record", "A", "--out", str(tmp_path / "no" / "such" / "x.rec"), "--duration", "1")
    assert out.returncode == 2
    assert one_line(out.stderr) == (
        f"orderbook record: cannot write {tmp_path}/no/such/x.rec: the folder {tmp_path}/no/such does not exist "
        "— create it, or choose another --out"
    )


def test_a_path_that_cannot_be_read_as_a_recording_is_one_line(tmp_path):
    # (A file without read permission cannot be shown where the tests run as
    # root, which reads any file; a folder is refused the same way, by name.)
    folder = tmp_path / "not-a-recording"
    folder.mkdir()
    out = orderbook("verify", str(folder))
    assert out.returncode == 2
    assert one_line(out.stderr) == f"orderbook verify: {folder}: cannot tell the format of this folder; pass --format"


# ------------------------------------------------------------------ the node's output


def test_the_node_prints_the_urls_it_serves(tmp_path):
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<!doctype html><title>t</title>")
    with node(tmp_path, "--ui-dir", str(page), "--feed-token", FEED_TOKEN) as n:
        stdout, _ = n.stop()
    base = f"127.0.0.1:{n.port}"
    lines = stdout.splitlines()
    assert lines[0].startswith(f"orderbook: serving on http://{base}  (simulator on, fd limit ")
    assert lines[1:5] == [
        f"  page       http://{base}/",
        f"  WebSocket  ws://{base}/ws",
        f"  feed       ws://{base}/feed",
        f"  health     http://{base}/healthz  (readiness: /readyz)",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with node(tmp_path, "--ui-dir", str(empty)) as n:
        stdout, _ = n.stop()
    assert "  page       not built — `make web` builds it" in stdout
    assert "(off: start with --feed-token to publish)" in stdout


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def test_each_log_line_is_written_once(tmp_path):
    with node(tmp_path, "--no-simulator") as n:
        stdout, stderr = n.stop()
    both = stdout + stderr
    for text in ("Starting worker", "Worker ready", "epoch ", "Server Stopped"):
        assert both.count(text) == 1, (text, both)
    # Every log line in one format, on stderr; stdout holds only the URLs.
    assert stderr.strip() and all(LOG_LINE.match(line) for line in stderr.splitlines()), stderr
    assert all(line.startswith(("orderbook: serving on", "  ")) for line in stdout.splitlines()), stdout


async def refused_feed(port: int, token: str) -> int:
    try:
        async with Publisher.connect(f"ws://127.0.0.1:{port}/feed", token=token):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def test_json_logs_parse_line_by_line_and_carry_the_connection(tmp_path):
    args = ("--log-format", "json", "--feed-token", FEED_TOKEN, "--no-simulator", "--max-levels-per-side", "2")
    with node(tmp_path, *args) as n:

        async def publish() -> None:
            assert await refused_feed(n.port, "wrong") == 401
            async with Publisher.connect(f"ws://127.0.0.1:{n.port}/feed", token=FEED_TOKEN) as pub:
                inst: Instrument = instrument("JSN")
                reply = await pub.send([inst], [update("JSN", bids=[(100, 1), (99, 1), (98, 1)])])
                assert reply.WhichOneof("kind") == "error"
                assert reply.error.code == codec.ErrorCode.ERROR_CODE_INVALID_UPDATE
                assert "max_levels_per_side" in reply.error.message

        asyncio.run(publish())
        _, stderr = n.stop()
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object
    assert lines
    for obj in lines:
        assert {"time", "level", "logger", "message"} <= obj.keys(), obj
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", obj["time"]), obj
    batch = [o for o in lines if o["message"].startswith("refused feed batch")]
    assert len(batch) == 1, stderr
    assert batch[0]["peer"] == "127.0.0.1" and batch[0]["conn"] and batch[0]["symbol"] == "JSN"
    assert batch[0]["level"] == "WARNING" and batch[0]["logger"] == "orderbook.limits"
    refused = [o for o in lines if o["message"].startswith("refused /feed upgrade")]
    assert len(refused) == 1, stderr
    assert (refused[0]["peer"], refused[0]["status"], refused[0]["endpoint"]) == ("127.0.0.1", 401, "/feed")
    assert refused[0]["reason"].startswith("missing or wrong feed token")
    assert sum(o["message"].startswith("Starting worker") for o in lines) == 1


def test_refused_upgrades_are_logged_throttled(tmp_path):
    attempts = 40
    with node(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator") as n:

        async def storm() -> None:
            for _ in range(attempts):
                assert await refused_feed(n.port, "wrong") == 401

        asyncio.run(storm())
        _, stderr = n.stop()
    lines = [ln for ln in stderr.splitlines() if "refused /feed upgrade from 127.0.0.1: 401" in ln]
    held = sum(int(m) for m in re.findall(r"\(and (\d+) more like it since the last line\)", stderr))
    # At most one line a second: a burst of 40 gives a few lines, whose counts
    # of held-back refusals never exceed what happened.
    assert 1 <= len(lines) <= attempts // 2, stderr
    assert len(lines) + held <= attempts


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def test_each_kind_of_refused_upgrade_is_logged_with_its_reason_and_peer(tmp_path):
    args = ("--no-simulator", "--max-connections", "1", "--origin", "https://app.example", "--drain-seconds", "5")
    with node(tmp_path, *args) as n:

        async def refusals() -> None:
            assert (await http_request(n.port, "/ws"))[0] == 426  # a plain GET
            assert (await http_request(n.port, "/ws", headers={**UPGRADE, "Sec-WebSocket-Key": "short"}))[0] == 400
            evil = {**UPGRADE, "Origin": "https://evil.example"}
            assert (await http_request(n.port, "/ws", headers=evil))[0] == 403
            ok = {**UPGRADE, "Origin": "https://app.example"}
            async with websockets.connect(f"ws://127.0.0.1:{n.port}/ws", origin=Origin("https://app.example")):
                assert (await http_request(n.port, "/ws", headers=ok))[0] == 503  # full
                # Draining: upgrades get 503 until the subscriber is closed (within --drain-seconds).
                n.proc.send_signal(signal.SIGTERM)
                for _ in range(100):
                    status, _, body = await http_request(n.port, "/ws", headers=ok)
                    if b"draining" in body:
                        break
                    await asyncio.sleep(0.02)  # polling the node's state, bounded by the loop
                assert status == 503 and b"draining" in body

        asyncio.run(refusals())
        _, log = n.stop()
    prefix = r"^\S+ \S+ (INFO|WARNING) orderbook\.limits: refused /ws upgrade from 127\.0\.0\.1: "
    for level, status, reason in (
        ("INFO", 426, "This endpoint speaks WebSocket"),
        ("INFO", 400, "invalid Sec-WebSocket-Key"),
        ("WARNING", 403, "origin 'https://evil.example' is not allowed"),
        ("WARNING", 503, "server full (1 connections); retry later"),
        ("INFO", 503, "this node is draining before it stops"),
    ):
        line = re.search(prefix + f"{status} {re.escape(reason)}.*$", log, re.M)
        assert line and f" {level} " in line.group(0), (status, reason, log)
    # Over a handshake rate: 429, logged where it is decided, naming the option.
    with node(tmp_path, "--no-simulator", "--handshake-rate", "0.01", "--handshake-burst", "1") as n:

        async def twice() -> list[int]:
            return [(await http_request(n.port, "/ws", headers=UPGRADE))[0] for _ in range(2)]

        statuses = asyncio.run(twice())
        _, log = n.stop()
    assert statuses[1] == 429, statuses
    assert (
        "WARNING orderbook.limits: refused /ws handshake from 127.0.0.1: over 0.01 handshakes/s (--handshake-rate)"
        in log
    )


# ------------------------------------------------------------------ progress


def test_progress_off_a_terminal_is_one_summary_line(tmp_path):
    rec = a_recording(tmp_path / "a.rec", changes=2000)
    out = orderbook("verify", str(rec))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == ""  # no bar when stderr is not a terminal
    assert re.match(
        rf"{re.escape(str(rec))} \(recording, offline\): 2002 records in \d+\.\d s \([\d,]+ records/s\)\n", out.stdout
    ), out.stdout
    with node(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator") as n:
        out = orderbook("replay", str(rec), "--url", n.http, "--feed-token", FEED_TOKEN, "--speed", "max")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert re.fullmatch(
        r"orderbook replay: 2002 records, \d+ updates in \d+ batches, 2001 changes sequenced, 1 lap\(s\), "
        r"in \d+\.\d s \([\d,]+ records/s\)\n",
        out.stdout,
    ), out.stdout


def on_a_terminal(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run `orderbook ARGS` with stderr on a pseudo-terminal (120 columns):
    (exit status, stdout, what the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "orderbook.cli", *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=ROOT,
        env=clean_env(),
    )
    os.close(slave)
    seen = bytearray()
    try:
        while True:  # read the terminal until the process closes it
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: no writer left
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = proc.communicate(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode, stdout.decode(), seen.decode(errors="replace")


def test_progress_on_a_terminal_is_a_bar_with_rate_and_eta(tmp_path):
    # 300 deltas 10 ms apart, played at twice the recorded pace: about 1.5 s.
    rec = a_recording(tmp_path / "paced.rec", changes=300, step_ns=10_000_000)
    with node(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator") as n:
        status, stdout, terminal = on_a_terminal(
            "replay", str(rec), "--url", n.http, "--feed-token", FEED_TOKEN, "--speed", "2"
        )
        assert status == 0, stdout + terminal
        assert "orderbook replay: 302 records" in stdout  # the summary goes to stdout, bar or not
        assert "replay:" in terminal and "records/s" in terminal, terminal
        assert re.search(r"\d+%\|", terminal), terminal  # a bar: the end is known (a paced replay)
        assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", terminal), terminal  # elapsed<ETA
        status, stdout, terminal = on_a_terminal(
            "replay", str(rec), "--url", n.http, "--feed-token", FEED_TOKEN, "--speed", "max", "--no-progress"
        )
        assert status == 0, stdout + terminal
        assert "records/s" not in terminal and "orderbook replay: 302 records" in stdout
