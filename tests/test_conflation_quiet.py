"""Conflation after a quiet spell (protocol §10.1), end to end over real
sockets: while heartbeats flow and no change comes, the first change goes out
at once (a heartbeat does not count as a sent delta); the change after it
still waits out the interval."""

from __future__ import annotations

import asyncio

import pytest

from orderbook.wire import codec

from .harness import Publisher, Subscriber, instrument, serve_in_process, test_settings, update

pytestmark = pytest.mark.timeout(60)


def change(i: int):
    return update("S", bids=[(1000 + i % 7, 1 + i)], asks=[(1100 + i % 5, 2 + i)])


async def read_for(sub: Subscriber, seconds: float) -> None:
    """Read (and check) whatever arrives for `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        try:
            await sub.recv(remaining)
        except TimeoutError:
            return


async def publish(pub: Publisher, i: int) -> int:
    return (await pub.send(updates=[change(i)])).ack.positions[0].seq


async def delay_until(sub: Subscriber, seq: int, timeout: float) -> float:
    """Seconds from now until the subscriber holds `seq` (through a delta)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await sub.until(lambda: sub.seen.get("S") and sub.seen["S"][-1][1] >= seq, timeout=timeout)
    assert sub.followers["S"].seq == seq
    return loop.time() - t0


@pytest.mark.parametrize(("interval_ms", "depth"), [(1000, 0), (1000, 5), (5000, 0)])
async def test_the_first_change_after_a_quiet_spell_goes_out_at_once(interval_ms, depth):
    interval = interval_ms / 1000
    async with serve_in_process(test_settings(symbol_heartbeat=0.2)) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [change(0)])
        async with Subscriber.connect(srv.url) as sub:
            await sub.send(codec.subscribe_message("S", depth, None, 1, interval_ms=interval_ms))
            await sub.until(lambda: sub.snapshots.get("S"))
            assert sub.acks[0].interval_ms == interval_ms
            # One delta, then a quiet spell longer than the interval, heartbeats flowing.
            seq = await publish(pub, 1)
            await delay_until(sub, seq, timeout=interval + 5)
            beats = len(sub.heartbeats)
            await read_for(sub, interval + 0.3)
            assert len(sub.heartbeats) - beats >= 3, "heartbeats flowed during the quiet spell"
            assert sub.heartbeats[-1].seq == seq

            # The first change after the quiet spell: out at once, not an interval later.
            seq = await publish(pub, 2)
            first = await delay_until(sub, seq, timeout=interval + 5)
            assert first < 0.3, f"the first change after a quiet spell took {first:.3f} s"

            # The next change, right after: still at most one delta per interval.
            loop = asyncio.get_running_loop()
            t_first = loop.time()
            seq = await publish(pub, 3)
            await delay_until(sub, seq, timeout=interval + 5)
            spacing = loop.time() - t_first
            assert spacing >= interval - 0.05, f"two deltas {spacing:.3f} s apart at interval {interval} s"
            assert spacing < interval + 0.5
            # Every delta continued the chain with a matching checksum (the follower checks).
            assert len(sub.seen["S"]) == 3


async def test_a_burst_after_a_quiet_spell_is_one_delta_then_one_per_interval():
    async with serve_in_process(test_settings(symbol_heartbeat=0.2)) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [change(0)])
        async with Subscriber.connect(srv.url) as sub:
            await sub.send(codec.subscribe_message("S", 0, None, 1, interval_ms=1000))
            await sub.until(lambda: sub.snapshots.get("S"))
            await read_for(sub, 1.2)  # quiet since subscribing, heartbeats flowing
            assert sub.heartbeats
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            seq = await publish(pub, 1)
            await delay_until(sub, seq, timeout=5)
            t_first = loop.time()
            assert t_first - t0 < 0.3
            last = seq
            for i in range(2, 12):  # a burst right after: merged into the next interval's delta
                last = await publish(pub, i)
            await delay_until(sub, last, timeout=5)
            assert loop.time() - t_first >= 0.95
            assert [s for _, s in sub.seen["S"]] == [seq, last]
            assert sub.followers["S"].book == srv.hub.channels["S"].seqbook.book
