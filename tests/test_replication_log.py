"""The sequenced log in a real (private) Redis: contiguous positions, one
epoch per cluster, and appends fenced against a holder that lost its lease —
including one frozen with SIGSTOP past its lease and then resumed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
import redis.asyncio as aioredis

from orderbook.replication.log import Fenced, RedisLog

from .redis_harness import redis_factory, redis_proc  # noqa: F401

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def log(redis_proc):  # noqa: F811
    client = aioredis.from_url(redis_proc.url)
    yield RedisLog(client)
    await client.aclose()


async def wait_for(pred, timeout: float = 10.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(step)  # polling a condition under a deadline


async def test_appends_are_contiguous_and_read_back_in_order(log):
    assert await log.epoch() is None
    assert await log.epoch(candidate=7) == 7
    assert await log.epoch(candidate=8) == 7  # created once
    assert await log.acquire("a", 5_000)
    assert await log.append("a", 7, 1, [b"one", b"two"], cursor="5-0") == 2
    assert await log.append("a", 7, 3, [b"three"]) == 3
    entries = await log.read(0)
    assert [(e.position, e.data) for e in entries] == [(1, b"one"), (2, b"two"), (3, b"three")]
    assert [e.position for e in await log.read(2)] == [3]
    assert await log.cursor() == "5-0" and await log.position() == 3
    assert await log.trim_before(3) == 2
    assert [e.position for e in await log.read(0)] == [3]


async def test_wrong_position_epoch_or_token_writes_nothing(log):
    await log.epoch(candidate=1)
    assert await log.acquire("a", 5_000)
    await log.append("a", 1, 1, [b"x"])
    for token, epoch, pos in (("a", 1, 1), ("a", 1, 3), ("a", 2, 2), ("b", 1, 2)):
        with pytest.raises(Fenced):
            await log.append(token, epoch, pos, [b"bad"])
    assert [e.data for e in await log.read(0)] == [b"x"] and await log.position() == 1


async def test_lease_is_exclusive_and_only_the_holder_renews_or_releases(log):
    assert await log.acquire("a", 5_000)
    assert not await log.acquire("b", 5_000)
    assert not await log.renew("b", 5_000) and not await log.release("b")
    assert await log.renew("a", 5_000) and await log.holder() == "a"
    assert await log.release("a") and await log.holder() is None
    assert await log.acquire("b", 5_000)


async def test_holder_whose_lease_lapsed_is_fenced(log):
    await log.epoch(candidate=1)
    assert await log.acquire("old", 200)
    await log.append("old", 1, 1, [b"old-1"])

    async def lapsed():
        return await log.holder() is None

    await wait_for(lapsed)
    assert await log.acquire("new", 5_000)
    await log.append("new", 1, 2, [b"new-2"])
    with pytest.raises(Fenced):
        await log.append("old", 1, 2, [b"old-2"])
    assert not await log.renew("old", 200)
    assert [e.data for e in await log.read(0)] == [b"old-1", b"new-2"]


async def test_redis_emptied_means_a_new_epoch_and_old_appends_fail(log, redis_proc):  # noqa: F811
    await log.epoch(candidate=1)
    assert await log.acquire("a", 5_000)
    await log.append("a", 1, 1, [b"x"])
    redis_proc.flush()
    with pytest.raises(Fenced):
        await log.append("a", 1, 2, [b"y"])
    assert await log.epoch(candidate=2) == 2


# A sequencer in its own process: holds the lease (renewing it), appends one
# entry per tick, and reports being fenced through its exit code.
SEQUENCER = r"""
import asyncio, sys
import redis.asyncio as aioredis
from orderbook.replication.log import Fenced, RedisLog

async def main(url):
    log = RedisLog(aioredis.from_url(url))
    assert await log.acquire("stale", 400)
    pos = await log.position()
    print("ready", flush=True)
    while True:
        try:
            if not await log.renew("stale", 400):
                # Renewal refused: a careful node stops here; a stale one
                # that woke up may still try to append, which must fail.
                pass
            pos = await log.append("stale", 1, pos + 1, [b"stale"])
        except Fenced:
            print("fenced", flush=True)
            sys.exit(3)
        await asyncio.sleep(0.02)

asyncio.run(main(sys.argv[1]))
"""


async def test_sequencer_frozen_past_its_lease_cannot_interleave(log, redis_proc, tmp_path):  # noqa: F811
    await log.epoch(candidate=1)
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-c", SEQUENCER, redis_proc.url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    try:
        assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "ready"

        async def appended():
            return await log.position() >= 3

        await wait_for(appended)
        os.kill(proc.pid, signal.SIGSTOP)

        async def lapsed():
            return await log.holder() is None

        await wait_for(lapsed)
        assert await log.acquire("successor", 10_000)
        takeover = await log.position()
        pos = takeover
        for _ in range(5):
            pos = await log.append("successor", 1, pos + 1, [b"successor"])
        os.kill(proc.pid, signal.SIGCONT)
        assert await asyncio.to_thread(proc.wait, 20) == 3
        assert (await asyncio.to_thread(proc.stdout.read)).strip() == "fenced"
        for _ in range(3):
            pos = await log.append("successor", 1, pos + 1, [b"successor"])
        entries = await log.read(0, count=10_000)
        # Contiguous, and nothing from the stale sequencer after the takeover.
        assert [e.position for e in entries] == list(range(1, pos + 1))
        assert all(e.data == b"stale" for e in entries[:takeover])
        assert all(e.data == b"successor" for e in entries[takeover:])
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
