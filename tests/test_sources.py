"""One source per book: a symbol belongs to the simulator, the node's replay
or the /feed publishers, and nobody else writes it (docs/protocol.md §12.5).

Pure-core rules first, then end to end: a node with the simulator refuses a
publisher's update to a simulated symbol, takes new symbols, honours
--allow-takeover; and the README tour's record -> replay round trip leaves
every served book verified and never crossed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from orderbook.core.errors import SourceConflict
from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.instrument import Instrument
from orderbook.core.market import FEED, REPLAY, SIMULATOR, Market
from orderbook.replay.files import open_records
from orderbook.replay.records import Record, parse_renames, renamed
from orderbook.wire import codec

from .harness import (
    FEED_TOKEN,
    ROOT,
    Publisher,
    Subscriber,
    eventually,
    instrument,
    serve_in_process,
    start_server_process,
    test_settings,
    update,
)

pytestmark = pytest.mark.timeout(120)

SOURCE_CONFLICT = codec.ErrorCode.ERROR_CODE_SOURCE_CONFLICT


def _inst(symbol: str) -> Instrument:
    return Instrument(symbol, 2, 4)


def _upd(symbol: str, price: int = 100, size: int = 1, replace: bool = False) -> BookUpdate:
    return BookUpdate(symbol, ((price, size),), ((price + 10, size),), replace)


def _books(market: Market) -> dict:
    return {sb.instrument.symbol: (sb.seq, sb.book.checksum()) for sb in market}


# ------------------------------------------------------------------ the pure core


def test_the_defining_source_owns_a_symbol_and_others_are_refused_whole():
    m = Market(1)
    m.apply(FeedBatch(1, (_inst("SIM"),), (_upd("SIM"),)), source=SIMULATOR)
    m.apply(FeedBatch(2, (_inst("PUB"),), (_upd("PUB"),)), source=FEED)
    assert (m.owner("SIM"), m.owner("PUB"), m.owner("NONE")) == (SIMULATOR, FEED, None)
    before = _books(m)
    # Atomic: the feed's valid update to its own symbol is not applied either.
    with pytest.raises(SourceConflict) as err:
        m.apply(FeedBatch(3, (), (_upd("PUB", 101), _upd("SIM", 99))), source=FEED)
    assert (err.value.symbol, err.value.owner, err.value.source) == ("SIM", SIMULATOR, FEED)
    assert "simulator" in str(err.value) and "--allow-takeover" in str(err.value)
    assert _books(m) == before
    with pytest.raises(SourceConflict):
        m.apply(FeedBatch(4, (), (_upd("PUB", 99),)), source=SIMULATOR)
    assert _books(m) == before
    # Re-confirming a definition with the same terms is no write: accepted.
    m.apply(FeedBatch(5, (_inst("SIM"),), ()), source=FEED)
    assert m.owner("SIM") == SIMULATOR
    # Publishers share the one source FEED, as before.
    m.apply(FeedBatch(6, (), (_upd("PUB", 102),)), source=FEED)


def test_takeover_needs_the_option_and_a_full_replacement_first():
    m = Market(1)
    m.apply(FeedBatch(1, (_inst("SIM"),), (_upd("SIM"),)), source=SIMULATOR)
    before = _books(m)
    with pytest.raises(SourceConflict, match="replace"):
        m.apply(FeedBatch(2, (), (_upd("SIM", 200), _upd("SIM", 300, replace=True))), source=FEED, takeover=True)
    assert _books(m) == before and m.owner("SIM") == SIMULATOR
    m.apply(FeedBatch(3, (), (_upd("SIM", 300, replace=True), _upd("SIM", 310))), source=FEED, takeover=True)
    assert m.owner("SIM") == FEED
    book = m.get("SIM").book
    assert book.bids() == [(310, 1), (300, 1)] and book.asks() == [(310, 1), (320, 1)]
    # The simulator yields it: keep_own drops its updates, and it may not write.
    sim_batch = FeedBatch(4, (_inst("SIM"),), (_upd("SIM", 50),))
    assert m.keep_own(sim_batch, SIMULATOR).updates == ()
    with pytest.raises(SourceConflict):
        m.apply(sim_batch, source=SIMULATOR)
    # Takeover is for publishers: the owner keeps its symbol in a takeover batch too.
    m.apply(FeedBatch(5, (), (_upd("SIM", 320),)), source=FEED, takeover=True)


def test_a_restored_symbol_belongs_to_its_first_writer():
    donor = Market(1)
    donor.apply(FeedBatch(1, (_inst("R"),), (_upd("R"),)), source=SIMULATOR)
    m = Market(1)
    m.restore(donor.snapshot())
    assert m.owner("R") is None
    m.apply(FeedBatch(1, (), (_upd("R", 101),)), source=FEED)
    assert m.owner("R") == FEED
    with pytest.raises(SourceConflict):
        m.apply(FeedBatch(2, (), (_upd("R", 102),)), source=REPLAY)


SOURCES = st.sampled_from([SIMULATOR, REPLAY, FEED])
OPS = st.lists(
    st.tuples(SOURCES, st.sampled_from(["A", "B", "C"]), st.booleans(), st.booleans(), st.integers(1, 50)),
    max_size=30,
)


@hsettings(max_examples=200, deadline=None)
@given(OPS)
def test_ownership_follows_the_model(ops):
    """Each op: a source defines-and-updates one symbol (replace, takeover as
    drawn). Accepted iff the symbol is new, the source's own, or taken over
    with a replacing update; a refusal changes nothing."""
    m = Market(1)
    owners: dict[str, str] = {}
    for source, symbol, replace, takeover, price in ops:
        batch = FeedBatch(0, (_inst(symbol),), (_upd(symbol, price * 10, replace=replace),))
        owner = owners.get(symbol)
        allowed = owner is None or owner == source or (takeover and replace)
        before = _books(m)
        if allowed:
            m.apply(batch, source=source, takeover=takeover)
            owners[symbol] = source
        else:
            with pytest.raises(SourceConflict):
                m.apply(batch, source=source, takeover=takeover)
            assert _books(m) == before
            assert m.keep_own(batch, source).updates == ()
        assert {s: m.owner(s) for s in owners} == owners


def test_renamed_records_and_rename_options():
    recs = list(renamed([Record(1, (_inst("X"), _inst("Y")), (_upd("X"), _upd("Y")))], {"X": "X.rec"}))
    assert [i.symbol for i in recs[0].instruments] == ["X.rec", "Y"]
    assert [u.symbol for u in recs[0].updates] == ["X.rec", "Y"]
    assert parse_renames(["BTC-USD=BTC-USD.rec"]) == {"BTC-USD": "BTC-USD.rec"}
    for bad in (["BTC-USD"], ["=X"], ["X="], ["X=A", "X=B"]):
        with pytest.raises(ValueError):
            parse_renames(bad)


# ------------------------------------------------------------------ end to end, in process


async def _drain(sub: Subscriber, seconds: float) -> None:
    """Read (and verify) whatever arrives for `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            await sub.recv(left)
        except TimeoutError:
            return


async def test_a_publisher_cannot_write_a_simulated_symbol_but_can_add_its_own():
    async with serve_in_process(test_settings(simulator=True, simulator_seed=7)) as srv:
        hub = srv.hub
        await eventually(lambda: hub.market.owner("BTC-USD") == SIMULATOR)
        async with Subscriber.connect(srv.url) as sub, Publisher.connect(srv.feed_url) as pub:
            await sub.subscribe("BTC-USD")
            await sub.until(lambda: sub.follower("BTC-USD").synced)
            ask = sub.follower("BTC-USD").book.best_ask()[0]
            marker = (ask + 100_000, 123_456_789)  # a bid far above the ask: would cross the book
            reply = await pub.send(updates=[update("BTC-USD", bids=[marker])])
            assert reply.WhichOneof("kind") == "error"
            assert reply.error.code == SOURCE_CONFLICT
            assert reply.error.symbol == "BTC-USD"
            assert "simulator" in reply.error.message
            # The simulator goes on; the verifying subscriber never sees the marker.
            seq = sub.follower("BTC-USD").seq
            await _drain(sub, 0.5)
            f = sub.follower("BTC-USD")
            assert f.seq > seq and f.book.bid_size(marker[0]) == 0 and not f.book.crossed()
            assert hub.market.get("BTC-USD").book.bid_size(marker[0]) == 0
            # A symbol of its own is the publisher's.
            reply = await pub.send([instrument("PUB-1")], [update("PUB-1", bids=[(100, 1)], asks=[(101, 1)])])
            assert reply.WhichOneof("kind") == "ack" and reply.ack.changes == 1
            assert hub.market.owner("PUB-1") == FEED
            # The error is no takeover by other means: a whole batch is refused.
            reply = await pub.send(updates=[update("PUB-1", bids=[(99, 1)]), update("ETH-USD", bids=[(1, 1000)])])
            assert reply.error.code == SOURCE_CONFLICT and reply.error.symbol == "ETH-USD"
            assert hub.market.get("PUB-1").book.bid_size(99) == 0


async def test_allow_takeover_hands_a_symbol_to_the_publisher_for_good():
    async with serve_in_process(test_settings(simulator=True, simulator_seed=7, allow_takeover=True)) as srv:
        hub = srv.hub
        await eventually(lambda: hub.market.owner("BTC-USD") == SIMULATOR)
        async with Subscriber.connect(srv.url) as sub, Publisher.connect(srv.feed_url) as pub:
            await sub.subscribe("BTC-USD")
            await sub.until(lambda: sub.follower("BTC-USD").synced)
            # A takeover must start from a whole book: no mix of two sources.
            reply = await pub.send(updates=[update("BTC-USD", bids=[(100, 1)])])
            assert reply.error.code == SOURCE_CONFLICT and "replace" in reply.error.message
            assert hub.market.owner("BTC-USD") == SIMULATOR
            reply = await pub.send(
                updates=[update("BTC-USD", bids=[(5_000_000, 7)], asks=[(5_000_100, 9)], replace=True)]
            )
            assert reply.WhichOneof("kind") == "ack", reply
            assert hub.market.owner("BTC-USD") == FEED
            taken = reply.ack.positions[0].seq
            await sub.until_seq("BTC-USD", taken)
            eth = hub.market.get("ETH-USD").seq
            await _drain(sub, 0.6)
            # The simulator left it alone (it still runs the others).
            assert hub.market.get("ETH-USD").seq > eth
            sb = hub.market.get("BTC-USD")
            assert sb.seq == taken and sb.book.bids() == [(5_000_000, 7)] and sb.book.asks() == [(5_000_100, 9)]
            reply = await pub.send(updates=[update("BTC-USD", bids=[(5_000_001, 1)])])
            assert reply.WhichOneof("kind") == "ack" and reply.ack.changes == 1
            await sub.until_seq("BTC-USD", taken + 1)
            assert sub.follower("BTC-USD").book.best_bid() == (5_000_001, 1)


# ------------------------------------------------------------------ the README tour, end to end


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orderbook.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _book(http: str, symbol: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{http}/book/{urllib.parse.quote(symbol, safe='')}?depth=1", timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


class CrossWatch:
    """Polls /book of some symbols in a thread; records any crossed book."""

    def __init__(self, http: str, symbols: list[str]) -> None:
        self.http, self.symbols = http, symbols
        self.crossed: list[dict] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for symbol in self.symbols:
                b = _book(self.http, symbol)
                if b and b["bids"] and b["asks"]:
                    self.polls += 1
                    if Decimal(b["bids"][0][0]) >= Decimal(b["asks"][0][0]):
                        self.crossed.append(b)
            self._stop.wait(0.02)

    def __enter__(self) -> CrossWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def _final_checksum(path, symbol: str) -> int:
    m = Market(0)
    for rec in open_records(path, "recording"):
        m.apply(FeedBatch(0, rec.instruments, rec.updates))
    return m.get(symbol).book.checksum()


async def _follow(sub: Subscriber, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await sub.recv(0.2)


async def test_the_tour_record_then_replay_never_corrupts_a_served_book(tmp_path):
    rec = tmp_path / "btc.rec.gz"
    node = start_server_process(tmp_path, "--feed-token", FEED_TOKEN, "--no-ui", "--seed", "3")
    try:
        http = node.http
        # The tour: record what a subscriber of the simulating node receives...
        done = await asyncio.to_thread(
            _cli, "record", "BTC-USD", "--url", node.url, "--out", str(rec), "--duration", "2"
        )
        assert done.returncode == 0, done.stderr
        expected = _final_checksum(rec, "BTC-USD")
        async with Subscriber.connect(node.url) as sub:
            await sub.subscribe("BTC-USD")
            stop = asyncio.Event()
            reader = asyncio.create_task(_follow(sub, stop))
            with CrossWatch(http, ["BTC-USD", "BTC-USD.rec"]) as watch:
                # ...replaying it as BTC-USD into the same node is refused, clearly...
                refused = await asyncio.to_thread(_cli, "replay", str(rec), "--url", http, "--feed-token", FEED_TOKEN)
                assert refused.returncode != 0
                assert "BTC-USD" in refused.stderr and "simulator" in refused.stderr
                assert "--rename" in refused.stderr and "--no-simulator" in refused.stderr
                # ...and the README's line plays it beside the live book.
                played = await asyncio.to_thread(
                    _cli,
                    "replay",
                    str(rec),
                    "--url",
                    http,
                    "--feed-token",
                    FEED_TOKEN,
                    "--rename",
                    "BTC-USD=BTC-USD.rec",
                )
                assert played.returncode == 0, played.stderr
                await asyncio.sleep(0.3)
            stop.set()
            await reader  # a checksum mismatch or a gap would have raised here
            assert sub.followers["BTC-USD"].synced and len(sub.seen.get("BTC-USD", [])) > 0
        assert watch.polls > 10 and watch.crossed == []
        replayed = _book(http, "BTC-USD.rec")
        assert replayed is not None and replayed["checksum"] == expected
        async with Subscriber.connect(node.url) as sub:
            await sub.subscribe("BTC-USD.rec")
            await sub.until(lambda: sub.follower("BTC-USD.rec").synced)
            assert sub.follower("BTC-USD.rec").book.checksum() == expected
    finally:
        node.stop()
    # The other path of the tour: a node that serves only what is published.
    bare = start_server_process(tmp_path, "--feed-token", FEED_TOKEN, "--no-ui", "--no-simulator")
    try:
        played = await asyncio.to_thread(_cli, "replay", str(rec), "--url", bare.http, "--feed-token", FEED_TOKEN)
        assert played.returncode == 0, played.stderr
        book = _book(bare.http, "BTC-USD")
        assert book is not None and book["checksum"] == expected
    finally:
        bare.stop()
