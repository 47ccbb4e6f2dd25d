"""`orderbook serve --workers N`: N worker processes on one port.

Each worker binds its own listening socket with SO_REUSEPORT, so the kernel
spreads new connections over them, and serves its subscribers on its own
core. The supervisor (this process) serves no client: it starts the workers
(the spawn start method: a fresh interpreter each, nothing inherited but
the settings), replaces one that dies (with backoff when one keeps dying)
and, on SIGTERM or SIGINT, has each drain its own subscribers and stop.

Without Redis the supervisor also sequences: it owns the market (the
simulator, a replay, and every /feed batch the workers forward) and sends
each change, encoded once, to every worker over a Unix socket in a private
directory (orderbook/replication/local.py). With Redis each worker is a
cluster node like any other, sharing the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from orderbook.replication.local import LocalSequencer

from .settings import Settings

log = logging.getLogger("orderbook.workers")

# A worker that dies sooner than this after it started counts as failing to
# start: the next try waits longer (doubling up to RESTART_DELAY_MAX).
HEALTHY_AFTER = 10.0
RESTART_DELAY = 0.1
RESTART_DELAY_MAX = 10.0
WATCH_INTERVAL = 0.05
# Beyond the drain window, how long a worker told to stop is given before it is killed.
STOP_GRACE = 8.0


@dataclass(frozen=True, slots=True)
class Listen:
    """Where and how each worker listens, and how it logs."""

    host: str
    port: int
    backlog: int
    access_log: bool
    log_format: str
    debug: bool


def reuseport_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on host:port that other workers share (SO_REUSEPORT)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def worker_main(settings: Settings, listen: Listen) -> None:
    """A worker process: one node on the shared port."""
    from orderbook import logs
    from orderbook.server import tls as server_tls
    from orderbook.server.app import PROTOCOL, create_app, drain_on_signals

    logs.setup(listen.log_format, debug=listen.debug)
    # The hard backstop of exit_when_orphaned (orderbook/server/local_node.py):
    # a worker still there this long after its supervisor died goes at once.
    grace = settings.drain_seconds + STOP_GRACE
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(), grace), daemon=True).start()
    sock = reuseport_socket(listen.host, listen.port, listen.backlog)
    app = create_app(settings, name=f"orderbook_worker_{settings.worker}")
    drain_on_signals(app)
    try:
        app.run(
            host=listen.host,
            port=listen.port,
            sock=sock,
            backlog=listen.backlog,
            protocol=PROTOCOL,
            ssl=server_tls.from_settings(settings.tls_cert, settings.tls_key),
            single_process=True,
            access_log=listen.access_log,
            motd=False,
        )
    finally:
        sock.close()


def _exit_when_orphaned(parent: int, grace: float) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)  # a thread of its own: the event loop is not waiting on this
    time.sleep(grace)
    os._exit(1)


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


class Supervisor:
    def __init__(self, settings: Settings, listen: Listen) -> None:
        self.settings = settings
        self.listen = listen
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(settings.workers)]
        self._stopping = asyncio.Event()
        self.sequencer: LocalSequencer | None = None
        self._socket_path: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def worker_settings(self, index: int) -> Settings:
        s = self.settings
        assert self.sequencer is not None or s.redis_url is not None
        return dataclasses.replace(
            s,
            workers=1,
            worker=index,
            sequencer_socket=self._socket_path,
            epoch=self.sequencer.epoch if self.sequencer is not None else s.epoch,
            # The sequencer feeds the workers; a worker runs no feed of its own.
            simulator=False,
            replay=None,
            # Each worker's /metrics on a port of its own: base + its number.
            metrics_port=s.metrics_port + index if s.metrics_port else 0,
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        tmp = None
        try:
            s = self.settings
            if s.redis_url is None:
                # A private directory (mode 0700): only this user's processes reach the sequencer.
                tmp = tempfile.mkdtemp(prefix="orderbook-workers-")
                self._socket_path = os.path.join(tmp, "sequencer.sock")
                epoch = s.epoch if s.epoch is not None else time.time_ns()
                self.sequencer = LocalSequencer(epoch, s.feed_limits, s.log_retention, s.allow_takeover)
                await self.sequencer.serve(self._socket_path)
                self._start_feed(self.sequencer)
                log.info("epoch %d; sequencing for %d workers", epoch, len(self._slots))
            for slot in self._slots:
                self._spawn(slot)
            while not self._stopping.is_set():
                self._watch()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), WATCH_INTERVAL)
            await self._stop_workers()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for slot in self._slots:
                p = slot.process
                if p is not None and p.is_alive():
                    p.kill()
                    p.join(5)
            if self.sequencer is not None:
                await self.sequencer.close()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _start_feed(self, sequencer: LocalSequencer) -> None:
        from . import background

        s = self.settings
        coro: Coroutine[Any, Any, None] | None = None
        if s.replay is not None:
            coro = background.replay(sequencer, s.replay)
        elif s.simulator:
            coro = background.simulate(sequencer, s.simulator_rate, s.simulator_seed)
        if coro is not None:
            task = asyncio.get_running_loop().create_task(coro)
            task.add_done_callback(_report_crash)
            self._tasks.append(task)

    def _spawn(self, slot: _Slot) -> None:
        p = self._ctx.Process(
            target=worker_main,
            args=(self.worker_settings(slot.index), self.listen),
            name=f"orderbook-worker-{slot.index}",
        )
        p.start()
        slot.process, slot.started = p, time.monotonic()
        log.info("worker %d started (pid %s)", slot.index, p.pid)

    def _watch(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            p = slot.process
            if p is not None:
                if p.is_alive():
                    continue
                p.join(0)
                lived = now - slot.started
                slot.failures = slot.failures + 1 if lived < HEALTHY_AFTER else 0
                delay = min(RESTART_DELAY * 2**slot.failures, RESTART_DELAY_MAX) if slot.failures else 0.0
                log.warning(
                    "worker %d (pid %s) exited with %s after %.1f s; replacing it in %.1f s",
                    slot.index,
                    p.pid,
                    p.exitcode,
                    lived,
                    delay,
                )
                slot.process = None
                slot.restart_at = now + delay
            if now >= slot.restart_at:
                self._spawn(slot)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            log.info("%s while stopping: stopping the workers now", sig.name)
            for slot in self._slots:
                if slot.process is not None and slot.process.is_alive():
                    slot.process.kill()
            return
        log.info("%s: each worker drains its subscribers, then stops", sig.name)
        self._stopping.set()

    async def _stop_workers(self) -> None:
        alive = [s.process for s in self._slots if s.process is not None and s.process.is_alive()]
        for p in alive:
            if p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        # Sequencing goes on meanwhile: the subscribers not closed yet still get every change.
        exits = [asyncio.ensure_future(_exited(p)) for p in alive]
        if exits:
            await asyncio.wait(exits, timeout=self.settings.drain_seconds + STOP_GRACE)
        for f in exits:
            f.cancel()
        for p in alive:
            if p.is_alive():
                log.warning("worker pid %s did not stop in time; killing it", p.pid)
                p.kill()
            p.join(5)


async def _exited(p: BaseProcess) -> None:
    """Returns once the process has exited (its sentinel becomes readable)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(p.sentinel, readable)
    try:
        if p.is_alive():
            await done
    finally:
        loop.remove_reader(p.sentinel)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the sequencer's feed %s failed", task.get_coro(), exc_info=task.exception())


def run(settings: Settings, listen: Listen) -> int:
    """Run the supervisor until SIGTERM or SIGINT has stopped every worker."""
    asyncio.run(Supervisor(settings, listen).run())
    return 0
