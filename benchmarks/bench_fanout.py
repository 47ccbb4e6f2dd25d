"""Fan-out: messages delivered per second to 100-5,000 subscribers, latency
under a steady stream, and server memory per idle subscriber, for our server
beside baselines measured in the same run: a naive Sanic broadcast
(`for ws in clients: await ws.send(...)`), Node.js `ws`, picows
(`transport.send` to each client) and the websockets library's
`broadcast()`; and, as the ceiling of a Python process, pre-framed bytes
written straight to each transport (benchmarks/baselines/raw_transport.py).
Node.js with uWebSockets.js is not among them: it is distributed from GitHub,
not from the npm registry.

Columns measured on the server side, over the same window as the rate:
server CPU µs per delivered message (utime + stime of the server and its
worker processes, /proc/PID/stat, divided by the messages the subscribers
counted); messages per write (the messages delivered divided by the
write/writev system calls the server made, `syscw` of /proc/PID/io; "–" where
the server sends with send(2), which that count leaves out, as picows does);
load (1 min) at the end of the window. `--workers 2,4` adds rows of ours
started with `serve --workers N`.

Every server runs in its own process; the subscribers run in another
(benchmarks/loadgen.py: raw asyncio protocols that count frames by their
headers), so the server has one core and the subscribers the other.

    python benchmarks/bench_fanout.py                      # everything, ~8-9 minutes
    python benchmarks/bench_fanout.py --quick              # ~2 minutes
    python benchmarks/bench_fanout.py --subscribers 1000 --sections throughput --profile

Node.js `ws` is installed on first use with `npm ci` into
benchmarks/baselines/node_ws/node_modules (git-ignored; not a project
dependency); without node/npm its rows are left out. picows is installed on
first use with `pip install --target` into ~/.cache/orderbook-bench/picows
(also not a project dependency, and not into its environment); if that
fails, its rows are left out and the reason printed. websockets comes with
Sanic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import _common as c  # noqa: E402
import loadgen  # noqa: E402
from _profiled_server import short_path  # noqa: E402

from tests.harness import free_port, wait_ready  # noqa: E402

FEED_TOKEN = "bench-feed"
NODE_DIR = HERE / "baselines" / "node_ws"
LABELS = {
    "ours": "ours (orderbook)",
    "ours-own": "ours, --no-shared-write (a queue and a write per subscriber)",
    "naive": "naive Sanic loop",
    "node": "Node.js `ws`",
    "picows": "picows, `transport.send` to each",
    "wsbcast": "websockets `broadcast()`",
    "raw1": "reference: pre-framed, straight to each transport, 1 msg per write",
    "raw10": "reference: the same, 10 msgs per write",
    "raw50": "reference: the same, 50 msgs per write",
}
# The references only flood; they are not run for latency.
FLOOD_ONLY = {"raw10", "raw50"}
NOT_LATENCY = {"raw1", "raw10", "raw50"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
# picows is installed here on first use (`pip install --target`), outside the
# project's environment; only the picows baseline runs with it on its path.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orderbook-bench"
PICOWS_DIR = CACHE / "picows"


def is_ours(kind: str) -> bool:
    """`ours`, or `ours-wN`: our server with `serve --workers N`."""
    return kind in ("ours", "ours-own") or kind.startswith("ours-w")


def workers_of(kind: str) -> int:
    return int(kind[6:]) if kind.startswith("ours-w") else 0


def label(kind: str) -> str:
    n = workers_of(kind)
    return f"{LABELS['ours']}, --workers {n}" if n else LABELS[kind]


# ----------------------------------------------------------------------------- processes


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a server with --workers is several processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):  # a process that ended meanwhile
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants, from /proc (works for node too)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def write_calls(pid: int) -> int:
    """write/writev system calls made so far by a process and its descendants
    (`syscw` of /proc/PID/io). uvloop and Node's libuv write to sockets with
    write/writev, which it counts; send/sendmsg are not counted (stdlib
    asyncio without uvloop sends with send: its count stays near 0)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{p}/io") as f:
            for line in f:
                if line.startswith("syscw:"):
                    total += int(line.split()[1])
    return total


def run_delay(pid: int) -> float:
    """Seconds the process's threads (and its descendants') spent runnable
    but waiting for a CPU (/proc/.../schedstat): how much other processes
    held the cores."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that ended meanwhile
                    total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def http_json(url: str, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            http_json(url, timeout=1)
            return
        except OSError:
            time.sleep(0.05)  # polling a condition, bounded by the deadline
    raise TimeoutError(f"{url} not answering after {timeout}s")


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen
    log: Path
    control_port: int = 0  # the control API's port when not the WebSocket port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.control_port or self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_server(kind: str, tmp: Path, payload_bytes: int, profile: Path | None = None) -> Server:
    port = free_port()
    log = tmp / f"{kind}-{port}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    control_port = 0
    if is_ours(kind):
        # Every simulated subscriber comes from 127.0.0.1: no per-source limits.
        serve = [
            "serve",
            "--no-simulator",
            "--feed-token",
            FEED_TOKEN,
            "--port",
            str(port),
            "--max-connections-per-ip",
            "0",
            "--handshake-rate",
            "0",
            "--global-handshake-rate",
            "0",
        ]
        if workers_of(kind):
            serve += ["--workers", str(workers_of(kind))]
        if kind == "ours-own":
            serve.append("--no-shared-write")  # each subscriber its own queue: the path before shared writes
        if profile is not None:
            cmd = [sys.executable, str(HERE / "_profiled_server.py"), str(profile), *serve]
        else:
            cmd = [sys.executable, "-m", "orderbook.cli", *serve]
        ready = f"http://127.0.0.1:{port}/readyz"
    elif kind in ("raw1", "raw10", "raw50"):
        cmd = [
            sys.executable,
            str(HERE / "baselines" / "raw_transport.py"),
            "--port",
            str(port),
            "--payload-bytes",
            str(payload_bytes),
            "--coalesce",
            kind[3:],
        ]
        ready = f"http://127.0.0.1:{port}/stats"
    elif kind == "naive":
        cmd = [
            sys.executable,
            str(HERE / "baselines" / "naive_sanic.py"),
            "--port",
            str(port),
            "--payload-bytes",
            str(payload_bytes),
        ]
        ready = f"http://127.0.0.1:{port}/stats"
    elif kind in ("picows", "wsbcast"):
        control_port = free_port()
        script = "picows_broadcast.py" if kind == "picows" else "websockets_broadcast.py"
        cmd = [
            sys.executable,
            str(HERE / "baselines" / script),
            "--port",
            str(port),
            "--control-port",
            str(control_port),
            "--payload-bytes",
            str(payload_bytes),
        ]
        if kind == "picows":
            env["PYTHONPATH"] = str(PICOWS_DIR)
        ready = f"http://127.0.0.1:{control_port}/stats"
    else:
        cmd = [
            shutil.which("node") or "node",
            str(NODE_DIR / "server.js"),
            "--port",
            str(port),
            "--payload-bytes",
            str(payload_bytes),
        ]
        ready = f"http://127.0.0.1:{port}/stats"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    server = Server(kind, port, proc, log, control_port)
    try:
        if is_ours(kind):
            wait_ready(f"http://127.0.0.1:{port}", 30, proc)
        else:
            wait_http(ready, proc)
    except BaseException as exc:
        server.stop()
        raise RuntimeError(f"{kind} server did not start:\n{server.tail()}") from exc
    return server


class LoadGenProc:
    """The subscriber process, driven one JSON line at a time."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, kind: str, port: int, tmp: Path) -> LoadGenProc:
        args = [
            sys.executable,
            str(HERE / "loadgen.py"),
            "--url",
            f"ws://127.0.0.1:{port}/ws",
            "--kind",
            "ours" if is_ours(kind) else "baseline",
        ]
        if is_ours(kind):
            args += ["--feed-url", f"ws://127.0.0.1:{port}/feed", "--feed-token", FEED_TOKEN]
        log = tmp / f"loadgen-{port}.log"
        with await asyncio.to_thread(log.open, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                limit=1 << 20,
            )
        lg = cls(proc, log)
        await lg._read(30)
        return lg

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read(self, timeout: float) -> dict:
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"load generator exited:\n{self.log.read_text(errors='replace')[-2000:]}")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"load generator: {out['error']}")
        return out

    async def cmd(self, timeout: float = 120.0, **kw) -> dict:
        self.proc.stdin.write((json.dumps(kw) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._read(timeout)

    async def quit(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 15)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()


async def define_symbol(port: int) -> loadgen.FeedClient:
    feed = await loadgen.FeedClient.connect(f"ws://127.0.0.1:{port}/feed", FEED_TOKEN)
    await feed.request(loadgen.setup_batch())
    return feed


# ----------------------------------------------------------------------------- one measured run


@dataclass
class Window:
    seconds: float
    frames: int
    recvs: int
    bytes: int
    server_cpu: float  # cores
    gen_cpu: float  # cores
    server_wait: float = 0.0  # runnable but not running, share of the window
    gen_wait: float = 0.0
    server_writes: int = 0  # write/writev system calls of the server (`write_calls`)
    load: float = 0.0  # 1-minute load average at the end of the window

    @property
    def cpu_us_per_msg(self) -> float:
        """Server CPU time per delivered message, in µs."""
        return self.server_cpu * self.seconds * 1e6 / self.frames if self.frames else 0.0

    @property
    def per_write(self) -> float:
        """Delivered messages per server write system call (0: none counted)."""
        return self.frames / self.server_writes if self.server_writes else 0.0

    @property
    def rate(self) -> float:
        return self.frames / self.seconds


async def measure(lg: LoadGenProc, server: Server, seconds: float) -> Window:
    spid = server.proc.pid
    s0, cpu0, wr0 = await lg.cmd(cmd="stats"), cpu_seconds(spid), write_calls(spid)
    sw0, gw0 = run_delay(spid), run_delay(lg.pid)
    await asyncio.sleep(seconds)  # the measurement window itself
    s1, cpu1, wr1 = await lg.cmd(cmd="stats"), cpu_seconds(spid), write_calls(spid)
    sw1, gw1 = run_delay(spid), run_delay(lg.pid)
    dt = s1["t"] - s0["t"]
    return Window(
        dt,
        s1["frames"] - s0["frames"],
        s1["recvs"] - s0["recvs"],
        s1["bytes"] - s0["bytes"],
        (cpu1 - cpu0) / dt,
        (s1["cpu"] - s0["cpu"]) / dt,
        (sw1 - sw0) / dt,
        (gw1 - gw0) / dt,
        wr1 - wr0,
        os.getloadavg()[0],
    )


@dataclass
class Run:
    kind: str
    n: int
    window: Window
    complete: bool
    note: str = ""
    extra: dict = field(default_factory=dict)
    failed: str = ""


async def guarded(what: str, kind: str, n: int, coro) -> Run:
    """One run; a failure becomes a row saying so instead of ending the script."""
    t0 = time.monotonic()
    try:
        r = await coro
    except Exception as exc:  # reported in the table and on stderr
        print(f"> {what} {kind} N={n}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return Run(kind, n, Window(1, 0, 0, 0, 0, 0), False, extra={}, failed=f"{type(exc).__name__}: {exc}"[:120])
    rate = f"{c.fmt_rate(r.window.rate)} msgs/s" if r.window.frames else ""
    print(f"> {what} {kind} N={n}: {rate} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return r


async def throughput_run(kind: str, n: int, args, tmp: Path, batch: int, profile: Path | None = None) -> Run:
    server = start_server(kind, tmp, args.payload_bytes, profile)
    feed = None
    lg = None
    try:
        if is_ours(kind):
            feed = await define_symbol(server.port)
        lg = await LoadGenProc.start(kind, server.port, tmp)
        await lg.cmd(cmd="connect", n=n, sample=0)
        if not is_ours(kind):
            clients = (await asyncio.to_thread(http_json, server.http + "/stats"))["clients"]
            assert clients == n, f"{kind}: {clients} clients registered, expected {n}"
        if args.rcvlowat > 1:
            await lg.cmd(cmd="lowat", bytes=args.rcvlowat)
        base = (await lg.cmd(cmd="stats"))["frames"]
        if is_ours(kind):
            await lg.cmd(cmd="flood", batch=batch, window=args.window)
        else:
            await asyncio.to_thread(http_json, server.http + "/start?mode=flood")
        await asyncio.sleep(args.warmup)  # warm-up, not measured
        if profile is not None:
            server.proc.send_signal(signal.SIGUSR1)  # profile the measured window only
        w = await measure(lg, server, args.seconds)
        if profile is not None:
            server.proc.send_signal(signal.SIGUSR2)
        if is_ours(kind):
            done = await lg.cmd(cmd="stop")
        else:
            await asyncio.to_thread(http_json, server.http + "/stop")
            sent = (await asyncio.to_thread(http_json, server.http + "/stats"))["sent"]
            done = await lg.cmd(cmd="wait_frames", frames=base + n * sent)
        closed = (await lg.cmd(cmd="stats"))["closed"]
        complete = done["complete"] and not closed
        note = (
            ""
            if complete
            else (f"received {done['received'] - base:,} of {done['expected'] - base:,}, {closed} closed")
        )
        return Run(kind, n, w, complete, note)
    finally:
        if lg is not None:
            await lg.quit()
        if feed is not None:
            feed.close()
        server.stop()


async def paced_publish(feed: loadgen.FeedClient, rate: float, seconds: float, interval_ms: float = 0) -> dict:
    """Publish `rate` updates per second, each stamped (event_time_ns) with
    the moment it was due. interval_ms 0: each update goes out when due (in
    one FeedBatch with any others due by then); otherwise every interval_ms,
    whatever is due in one FeedBatch, as a feed handler that batches would."""
    loop = asyncio.get_running_loop()
    t0, t0_ns = loop.time(), time.time_ns()
    sent = batches = 0
    while (now := loop.time()) < t0 + seconds:
        due = int((now - t0) * rate) + 1
        if due > sent:
            updates = tuple(loadgen.update(g, t0_ns + int(g / rate * 1e9)) for g in range(sent, due))
            feed.send(loadgen.codec.feed_message(loadgen.FeedBatch(batches + 10, (), updates)).SerializeToString())
            sent, batches = due, batches + 1
        if interval_ms:
            step = interval_ms / 1000
            wake = t0 + (int((loop.time() - t0) / step) + 1) * step
        else:
            wake = t0 + sent / rate
        await asyncio.sleep(max(0.0, wake - loop.time()))
    return {"sent": sent, "batches": batches, "errors": feed.errors}


async def latency_run(kind: str, n: int, rate: float, args, tmp: Path, interval_ms: float = 0) -> Run:
    server = start_server(kind, tmp, args.payload_bytes)
    feed = None
    lg = None
    try:
        if is_ours(kind):
            feed = await define_symbol(server.port)
        lg = await LoadGenProc.start(kind, server.port, tmp)
        conn = await lg.cmd(cmd="connect", n=n, sample=args.sample)
        if args.rcvlowat > 1:
            # Only the subscribers that are not timed read in large chunks.
            await lg.cmd(cmd="lowat", bytes=args.rcvlowat, bulk_only=True)
        total = args.warmup + args.latency_seconds
        if is_ours(kind):
            pub = asyncio.ensure_future(paced_publish(feed, rate, total + 0.5, interval_ms))
        else:
            await asyncio.to_thread(http_json, server.http + f"/start?mode=rate&rate={rate}")
        await asyncio.sleep(args.warmup)  # warm-up, not measured
        await lg.cmd(cmd="lat_start")
        w = await measure(lg, server, args.latency_seconds)
        lat = await lg.cmd(cmd="lat_stop")
        if is_ours(kind):
            published = await pub
            if feed.errors:
                raise RuntimeError(f"/feed refused a batch: {feed.errors[0]}")
        else:
            await asyncio.to_thread(http_json, server.http + "/stop")
        closed = (await lg.cmd(cmd="stats"))["closed"]
        extra = {"lat": lat, "rate": rate, "sampled": conn["sampled"], "interval_ms": interval_ms}
        if is_ours(kind):
            extra["per_batch"] = published["sent"] / max(1, published["batches"])
        return Run(kind, n, w, not closed, f"{closed} closed" if closed else "", extra)
    finally:
        if lg is not None:
            await lg.quit()
        if feed is not None:
            feed.close()
        server.stop()


async def settled_rss(pid: int, timeout: float = 10.0) -> int:
    """VmRSS once it stops moving (two readings 0.5 s apart within 0.5%)."""
    last = rss_kib(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # spacing between readings
        now = rss_kib(pid)
        if abs(now - last) <= last * 0.005:
            return now
        last = now
    return last


async def rss_run(kind: str, n: int, args, tmp: Path, trace: Path | None = None) -> Run:
    server = start_server(kind, tmp, args.payload_bytes, trace)
    feed = None
    lg = None
    try:
        if is_ours(kind):
            feed = await define_symbol(server.port)
        lg = await LoadGenProc.start(kind, server.port, tmp)
        pid = server.proc.pid
        r0 = await settled_rss(pid)
        if trace is not None:
            server.proc.send_signal(signal.SIGUSR1)
            await asyncio.to_thread(wait_file, trace.with_suffix(".started"))  # its first snapshot is taken
        await lg.cmd(cmd="connect", n=n // 2, sample=0)
        r_half = await settled_rss(pid)
        await lg.cmd(cmd="connect", n=n - n // 2, sample=0)
        r1 = await settled_rss(pid)
        if trace is not None:
            server.proc.send_signal(signal.SIGUSR2)
            await asyncio.to_thread(wait_file, trace)
        closed = (await lg.cmd(cmd="stats"))["closed"]
        w = Window(0, 0, 0, 0, 0, 0)
        return Run(
            kind, n, w, not closed, f"{closed} closed" if closed else "", {"rss0": r0, "rss_half": r_half, "rss1": r1}
        )
    finally:
        if lg is not None:
            await lg.quit()
        if feed is not None:
            feed.close()
        server.stop()


def wait_file(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for a file the server writes, under a deadline


# ----------------------------------------------------------------------------- setup


def node_setup(skip: bool) -> str | None:
    """Install `ws` for the Node baseline if needed; None if it cannot run."""
    if skip:
        return None
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        print("> node/npm not found: Node.js `ws` rows left out\n", file=sys.stderr)
        return None
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        # Pinned by package-lock.json; node_modules is git-ignored.
        subprocess.run(
            [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"], check=True, stdout=subprocess.DEVNULL
        )
    node_v = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    ws_v = json.loads((NODE_DIR / "node_modules" / "ws" / "package.json").read_text())["version"]
    return f"Node.js {node_v}, ws {ws_v}"


def picows_setup(skip: bool) -> str | None:
    """Install picows for its baseline if needed, into a cache directory of
    its own (not the project's environment); None if it cannot run."""
    if skip:
        return None
    if not (PICOWS_DIR / "picows").is_dir():
        print(f"> installing picows for its baseline into {PICOWS_DIR} (pip install --target)", file=sys.stderr)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(PICOWS_DIR), "picows"],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            shutil.rmtree(PICOWS_DIR, ignore_errors=True)
            why = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"> picows could not be installed ({why}): picows rows left out\n", file=sys.stderr)
            return None
    found = subprocess.run(
        [sys.executable, "-c", "from importlib.metadata import version; print(version('picows'))"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(PICOWS_DIR)),
    )
    if found.returncode:
        print(f"> picows in {PICOWS_DIR} does not import: picows rows left out\n", file=sys.stderr)
        return None
    return f"picows {found.stdout.strip()}"


def check_workers(servers: list[str]) -> None:
    """Exit with a clear message if a server runs ours with --workers and
    `orderbook serve` has no such option."""
    if not any(workers_of(s) for s in servers):
        return
    out = subprocess.run(
        [sys.executable, "-m", "orderbook.cli", "serve", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    if "--workers" not in out:
        sys.exit("bench_fanout.py: ours-wN and --workers need `orderbook serve --workers`, which this tree lacks")


def tree_state() -> str:
    """The commit measured, and whether the server's code differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "orderbook"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes in orderbook/" if dirty else "")


def versions() -> str:
    from importlib import metadata

    out = []
    for dist in ("sanic", "websockets", "uvloop"):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} not installed")
    return ", ".join(out)


# ----------------------------------------------------------------------------- reporting


def med(runs: list[Run]) -> Run:
    """The run with the median rate (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r.window.rate)
    return ordered[(len(ordered) - 1) // 2]


def pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def cpu_wait(cpu: float, wait: float) -> str:
    """Share of one core used, and share of the window spent waiting for a core."""
    return f"{cpu * 100:.0f}% / {wait * 100:.0f}%"


def ms(x: float | None) -> str:
    return "–" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.2f}" if x < 10 else f"{x:.1f}")


def throughput_table(results: dict[tuple[str, int], list[Run]], servers: list[str], ns: list[int]) -> str:
    def eff(runs: list[Run]) -> float:
        # Messages per second of server CPU: what a core delivers when it
        # gets to run, whatever else the machine was doing.
        return statistics.median(x.window.rate / x.window.server_cpu if x.window.server_cpu else 0 for x in runs)

    rows = []
    for n in ns:
        base = {k: med(results[(k, n)]).window.rate for k in ("naive", "node") if (k, n) in results}
        base = {k: v for k, v in base.items() if v}
        base_eff = {k: eff(results[(k, n)]) for k in base}
        for kind in servers:
            runs = results[(kind, n)]
            r = med(runs)
            if r.failed:
                rows.append([f"{n:,}", label(kind), "failed: " + r.failed, *[""] * 13])
                continue
            e = eff(runs)
            rates = [x.window.rate for x in runs]
            spread = f"{c.fmt_rate(min(rates))} – {c.fmt_rate(max(rates))}" if len(runs) > 1 else ""
            rows.append(
                [
                    f"{n:,}",
                    label(kind),
                    c.fmt_rate(r.window.rate),
                    spread,
                    c.fmt_ratio(r.window.rate / base["naive"]) if "naive" in base else "–",
                    c.fmt_ratio(r.window.rate / base["node"]) if "node" in base else "–",
                    c.fmt_rate(e),
                    c.fmt_ratio(e / base_eff["naive"]) if base_eff.get("naive") else "–",
                    c.fmt_ratio(e / base_eff["node"]) if base_eff.get("node") else "–",
                    f"{statistics.median(x.window.cpu_us_per_msg for x in runs):.2f}",
                    cpu_wait(r.window.server_cpu, r.window.server_wait),
                    cpu_wait(r.window.gen_cpu, r.window.gen_wait),
                    f"{r.window.per_write:.1f}" if r.window.server_writes else "–",
                    f"{r.window.frames / max(1, r.window.recvs):.1f}",
                    f"{r.window.load:.2f}",
                    "yes" if all(x.complete for x in runs) else "NO: " + "; ".join(x.note or x.failed for x in runs),
                ]
            )
    return c.markdown_table(
        [
            "subscribers",
            "server",
            "delivered msgs/s (median)",
            "min – max",
            "vs naive Sanic",
            "vs Node `ws`",
            "msgs per server CPU-second",
            "vs naive",
            "vs Node",
            "server CPU µs per msg",
            "server CPU / wait",
            "generator CPU / wait",
            "msgs per write",
            "msgs per read",
            "load (1 min)",
            "every msg to every sub",
        ],
        rows,
        [True, False, True, True, True, True, True, True, True, True, True, True, True, True, True, False],
    )


def latency_table(results: list[Run]) -> str:
    rows = []
    for r in results:
        if r.failed:
            rows.append([f"{r.n:,}", label(r.kind), "failed: " + r.failed, *[""] * 9])
            continue
        lat = r.extra["lat"]
        due = lat["due"]
        delivered = r.window.rate / r.n
        name = label(r.kind)
        if is_ours(r.kind):
            how = (
                f"FeedBatch every {r.extra['interval_ms']:g} ms"
                if r.extra["interval_ms"]
                else "each change sent when due"
            )
            name += f", {how} ({r.extra['per_batch']:.1f} changes per FeedBatch)"
        rows.append(
            [
                f"{r.n:,} × {r.extra['rate']:,.0f}/s",
                name,
                c.fmt_rate(delivered),
                ms(due.get("p50")),
                ms(due.get("p99")),
                ms(due.get("p999")),
                ms(due.get("max")),
                f"{due.get('count', 0):,}",
                cpu_wait(r.window.server_cpu, r.window.server_wait),
                cpu_wait(r.window.gen_cpu, r.window.gen_wait),
                f"{r.window.cpu_us_per_msg:.2f}",
                f"{r.window.load:.2f}",
            ]
        )
        if is_ours(r.kind):
            srv = lat["server"]
            rows.append(
                [
                    "",
                    "the same, from the server's stamp (`publish_time_ns`)",
                    "",
                    ms(srv.get("p50")),
                    ms(srv.get("p99")),
                    ms(srv.get("p999")),
                    ms(srv.get("max")),
                    f"{srv.get('count', 0):,}",
                    "",
                    "",
                    "",
                    "",
                ]
            )
    return c.markdown_table(
        [
            "subscribers × changes/s",
            "server",
            "changes/s delivered to each",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "samples",
            "server CPU / wait",
            "generator CPU / wait",
            "server CPU µs per msg",
            "load (1 min)",
        ],
        rows,
        [False, False, True, True, True, True, True, True, True, True, True, True],
    )


def rss_table(results: list[Run]) -> str:
    rows = []
    for r in results:
        if r.failed:
            rows.append([label(r.kind), f"{r.n:,}", "failed: " + r.failed, "", "", ""])
            continue
        e = r.extra
        n = r.n
        rows.append(
            [
                label(r.kind),
                f"{n:,}",
                f"{e['rss0'] / 1024:,.1f}",
                f"{e['rss1'] / 1024:,.1f}",
                f"{(e['rss1'] - e['rss0']) / n:.1f}",
                f"{(e['rss1'] - e['rss_half']) / (n - n // 2):.1f}",
            ]
        )
    return c.markdown_table(
        [
            "server",
            "idle subscribers N",
            "RSS with 0 (MiB)",
            "RSS with N (MiB)",
            "per subscriber, 0 → N (KiB)",
            "per subscriber, N/2 → N (KiB)",
        ],
        rows,
        [False, True, True, True, True, True],
    )


def profile_tables(path: Path, top: int = 15) -> str:
    st = pstats.Stats(str(path))
    entries = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values())

    def name(key) -> str:
        file, line, func = key
        if file == "~":
            return func
        return f"{short_path(file)}:{line}({func})"

    own = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    rows = [[f"`{name(k)}`", f"{v[1]:,}", f"{v[2]:.3f}", pct(v[2] / total), f"{v[3]:.3f}"] for k, v in own]
    out = [
        c.markdown_table(["function", "calls", "own s", "own %", "cumulative s"], rows, [False, True, True, True, True])
    ]

    def cum(pred) -> float:
        return max((v[3] for k, v in entries.items() if pred(k)), default=0.0)

    groups = [
        (
            "`Hub.ingest` (validate, apply, checksum, encode once, queue for every subscriber)",
            lambda k: k[0].endswith("server/hub.py") and k[2] == "ingest",
        ),
        ("  of which `Market.apply` without the per-delta publish", None),
        (
            "  of which `Connection.push` (queue one frame for one subscriber)",
            lambda k: k[0].endswith("server/connection.py") and k[2] == "push",
        ),
        (
            "`Hub._flush` (one `transport.write` per subscriber per loop turn; uvloop's write is not seen by "
            "cProfile, so the syscalls count as `Connection.flush`'s own time)",
            lambda k: k[0].endswith("server/hub.py") and k[2] == "_flush",
        ),
        ("the /feed connection without `Hub.ingest`: frames in, decode, replies out", "feed"),
    ]
    rows = []
    ingest = cum(groups[0][1])
    publish = cum(lambda k: k[0].endswith("server/hub.py") and k[2] == "_publish")
    feed = cum(lambda k: k[0].endswith("server/feed_ws.py") and k[2] == "_publisher")
    for label, pred in groups:
        if pred is None:
            value = ingest - publish
        elif pred == "feed":
            value = max(0.0, feed - ingest)
        else:
            value = cum(pred)
        rows.append([label, f"{value:.3f}", pct(value / total)])
    rows.append(
        ["everything profiled (own times summed; idle waits in the loop are not in it)", f"{total:.3f}", "100%"]
    )
    out.append(c.markdown_table(["including callees", "s", "share"], rows, [False, True, True]))
    return "\n\n".join(out)


def memory_tables(path: Path, top: int = 12) -> str:
    data = json.loads(path.read_text())
    rows = [
        [f"`{r['where']}`", f"{r['kib']:,.1f}", f"{r['per_sub_bytes']:,.0f}", f"{r['count']:,}"]
        for r in data["top"][:top]
    ]
    return c.markdown_table(
        ["allocated at (grown between the two snapshots)", "KiB", "bytes per subscriber", "blocks"],
        rows,
        [False, True, True, True],
    ) + (
        f"\n\nPython allocations grown: {data['total_kib']:,.1f} KiB for {data['subs']:,} subscribers "
        f"({data['total_kib'] * 1024 / max(1, data['subs']):,.0f} bytes each)."
    )


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--subscribers", default="100,1000,5000", help="throughput: subscriber counts (default 100,1000,5000)"
    )
    p.add_argument("--seconds", type=float, default=4.0, help="throughput: measured seconds per run (default 4)")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds before each measurement (default 1.5)")
    p.add_argument("--repeats", type=int, default=3, help="throughput: interleaved rounds (default 3)")
    p.add_argument("--batch", type=int, default=10, help="ours: updates per FeedBatch in the flood (default 10)")
    p.add_argument(
        "--batch-sweep",
        default="1,100",
        help="ours: other batch sizes run at --sweep-subscribers ('' for none; default 1,100)",
    )
    p.add_argument("--sweep-subscribers", type=int, default=1000)
    p.add_argument(
        "--window",
        type=int,
        default=512,
        help="ours: updates in flight in the flood, at least 4 batches (default 512: more than the node joins in "
        "one write, so the load generator never sets its messages per write)",
    )
    p.add_argument(
        "--rcvlowat",
        type=int,
        default=2048,
        help="SO_RCVLOWAT of the subscriber sockets (in latency runs only of those not timed), so the "
        "generator reads many messages at a time (1 = off; default 2048)",
    )
    p.add_argument("--rates", default="1000,100", help="latency: changes per second (default 1000,100)")
    p.add_argument(
        "--publish-intervals",
        default="0,20",
        help="latency, ours: 0 = each change sent when due; N = one FeedBatch every N ms (default 0,20)",
    )
    p.add_argument("--latency-subscribers", type=int, default=1000)
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--sample", type=int, default=50, help="latency: subscribers that time every message (default 50)")
    p.add_argument("--rss-subscribers", type=int, default=2000)
    p.add_argument(
        "--servers",
        default="ours,naive,node,picows,wsbcast,raw1,raw10",
        help="of ours, ours-own (--no-shared-write), ours-wN (serve --workers N), naive, node, picows, "
        "wsbcast (websockets' broadcast()), raw1, raw10, raw50 (default ours,naive,node,picows,wsbcast,raw1,raw10)",
    )
    p.add_argument(
        "--workers",
        default="",
        help="the workers axis: ours-wN after ours for each N of this list, e.g. 2,4 (needs `serve --workers`)",
    )
    p.add_argument("--sections", default="throughput,latency,rss")
    p.add_argument("--no-node", action="store_true", help="leave out the Node.js baseline")
    p.add_argument("--no-picows", action="store_true", help="leave out the picows baseline (and its install)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile our server: cProfile over a flood window, tracemalloc over idle subscribers",
    )
    p.add_argument(
        "--quick", action="store_true", help="100 and 1,000 subscribers, shorter windows, one round, no batch sweep"
    )
    args = p.parse_args()
    if args.quick:
        args.subscribers = "100,1000"
        args.seconds, args.warmup, args.repeats = 3.0, 1.5, 1
        args.latency_seconds, args.rss_subscribers, args.batch_sweep = 4.0, 1000, ""
    return args


async def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    info = c.machine_info()
    asked = [s for s in args.servers.split(",") if s]
    if "ours" in asked:
        # The workers axis: rows of ours with --workers N right after ours.
        i = asked.index("ours") + 1
        asked[i:i] = [f"ours-w{w}" for w in args.workers.split(",") if w and f"ours-w{w}" not in asked]
    check_workers(asked)
    node = node_setup(args.no_node or "node" not in asked)
    picows = picows_setup(args.no_picows or "picows" not in asked)
    servers = [s for s in asked if (s != "node" or node) and (s != "picows" or picows)]
    ns = [int(x) for x in args.subscribers.split(",") if x]
    rates = [float(x) for x in args.rates.split(",") if x]
    sections = set(args.sections.split(","))
    args.payload_bytes = round(loadgen.mean_delta_payload())
    info["Servers"] = f"{versions()}; {node or 'Node.js not run'}; {picows or 'picows not run'}"
    info["orderbook commit"] = tree_state()
    argv = sys.argv[1:]

    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmpdir:
        tmp = Path(tmpdir)
        if "throughput" in sections:
            results: dict[tuple[str, int], list[Run]] = {}
            for _ in range(args.repeats):
                for n in ns:
                    for kind in servers:
                        r = await guarded("throughput", kind, n, throughput_run(kind, n, args, tmp, args.batch))
                        results.setdefault((kind, n), []).append(r)
            out.append(
                f"### Delivered messages per second (flood, {args.seconds:g} s windows, "
                f"{args.repeats} interleaved round{'s' if args.repeats > 1 else ''})\n"
            )
            out.append(throughput_table(results, servers, ns))
            sweep = [int(x) for x in args.batch_sweep.split(",") if x]
            if sweep and "ours" in servers:
                n = args.sweep_subscribers
                rows = []
                ref = {k: med(results[(k, n)]).window.rate for k in ("naive", "node") if (k, n) in results}
                ref = {k: v for k, v in ref.items() if v}
                for b in sorted({*sweep, args.batch}):
                    r = (
                        med(results[("ours", n)])
                        if b == args.batch and ("ours", n) in results
                        else (await guarded(f"batch {b}", "ours", n, throughput_run("ours", n, args, tmp, b)))
                    )
                    if r.failed:
                        rows.append([str(b), "failed: " + r.failed, *[""] * 9])
                        continue
                    rows.append(
                        [
                            str(b),
                            c.fmt_rate(r.window.rate),
                            c.fmt_ratio(r.window.rate / ref["naive"]) if "naive" in ref else "–",
                            c.fmt_ratio(r.window.rate / ref["node"]) if "node" in ref else "–",
                            f"{r.window.cpu_us_per_msg:.2f}",
                            f"{r.window.per_write:.1f}" if r.window.server_writes else "–",
                            f"{r.window.frames / max(1, r.window.recvs):.1f}",
                            cpu_wait(r.window.server_cpu, r.window.server_wait),
                            cpu_wait(r.window.gen_cpu, r.window.gen_wait),
                            f"{r.window.load:.2f}",
                            "yes" if r.complete else "NO: " + r.note,
                        ]
                    )
                out.append(f"\n### Ours by updates per FeedBatch, {n:,} subscribers\n")
                out.append(
                    c.markdown_table(
                        [
                            "updates per FeedBatch",
                            "delivered msgs/s",
                            "vs naive Sanic",
                            "vs Node `ws`",
                            "server CPU µs per msg",
                            "msgs per write",
                            "msgs per read",
                            "server CPU / wait",
                            "generator CPU / wait",
                            "load (1 min)",
                            "every msg to every sub",
                        ],
                        rows,
                        [True, True, True, True, True, True, True, True, True, True, False],
                    )
                )
        if "latency" in sections:
            lat_runs = []
            intervals = [float(x) for x in args.publish_intervals.split(",") if x]
            for rate in rates:
                for kind in [k for k in servers if k not in NOT_LATENCY]:
                    for interval in intervals if is_ours(kind) else [0.0]:
                        lat_runs.append(
                            await guarded(
                                f"latency {rate:g}/s",
                                kind,
                                args.latency_subscribers,
                                latency_run(kind, args.latency_subscribers, rate, args, tmp, interval),
                            )
                        )
            out.append(
                f"\n### Publish-to-receive latency ({args.sample} sampled subscribers, "
                f"{args.latency_seconds:g} s after {args.warmup:g} s warm-up)\n"
            )
            out.append(latency_table(lat_runs))
        if "rss" in sections:
            rss_runs = [
                await guarded("rss", kind, args.rss_subscribers, rss_run(kind, args.rss_subscribers, args, tmp))
                for kind in servers
                if kind not in FLOOD_ONLY
            ]
            out.append(f"\n### Server memory per idle subscriber ({args.rss_subscribers:,} subscribers)\n")
            out.append(rss_table(rss_runs))
        if args.profile and "ours" in servers:
            prof = tmp / "flood.prof"
            n = args.sweep_subscribers
            r = await guarded("profile", "ours", n, throughput_run("ours", n, args, tmp, args.batch, profile=prof))
            await asyncio.to_thread(wait_file, prof)
            if prof.exists():
                out.append(
                    f"\n### Where our server's time goes: cProfile over a {args.seconds:g} s flood window, "
                    f"{n:,} subscribers, {args.batch} updates per batch "
                    f"({c.fmt_rate(r.window.rate)} msgs/s while profiled)\n"
                )
                out.append(profile_tables(prof))
            mem = tmp / "idle.memory.json"
            await guarded(
                "memory profile",
                "ours",
                args.rss_subscribers,
                rss_run("ours", args.rss_subscribers, args, tmp, trace=mem),
            )
            if mem.exists():
                out.append(
                    f"\n### Where our server's memory per subscriber goes: tracemalloc, 0 → "
                    f"{args.rss_subscribers:,} idle subscribers\n"
                )
                out.append(memory_tables(mem))

    info["Delta payload (ours, mean) = baseline payload"] = f"{args.payload_bytes} bytes"
    info["Run time"] = f"{time.monotonic() - started:.0f} s"
    c.print_header("Fan-out", info, argv)
    print("\n".join(out))


def main() -> None:
    args = parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
