"""Every shared recording replayed through a real server's /feed: a real
subscriber's book equals the venue's reference after every record, and the
server's own checksum equals Kraken's on every update."""

from __future__ import annotations

import pytest

from orderbook.core.events import BookUpdate
from orderbook.replay.endtoend import SERVER_CHECKSUM, verify_through_server
from orderbook.replay.files import open_records
from orderbook.replay.formats import tardis
from orderbook.replay.records import Record
from orderbook.replay.verify import with_rebuilt_references

from .harness import FEED_TOKEN, serve_in_process, test_settings

pytestmark = pytest.mark.timeout(300)

# (path under the data folder, format, {reference kind: count}) from the READMEs.
DATASETS = [
    ("kraken-book-2021-04-17/KRAKEN.ws.50.0", "kraken", {"checksum": 4269, SERVER_CHECKSUM: 4269}),
    ("coinbase-level2-2021-04-17/COINBASE.ws.28.0", "coinbase", {"best bid/ask": 97}),
    ("binance-depth-2021/2021-04-17", "binance", {"best bid/ask": 199}),
    ("binance-depth-2021/2021-08-14", "binance", {"best bid/ask": 96}),
    ("binance-depth-2021/2021-10-12", "binance", {"best bid/ask": 26}),
    ("lobster-2012-06-21/aapl-l10-first999", "lobster", {"book": 999}),
]


async def replay_checked(path, fmt, **settings):
    async with serve_in_process(test_settings(**settings)) as srv:
        return await verify_through_server(open_records(path, fmt), srv.http, feed_token=FEED_TOKEN, timeout=20)


@pytest.mark.parametrize(
    "rel, fmt, expected", DATASETS, ids=[d[0].split("/")[0] + ":" + d[0].split("/")[-1] for d in DATASETS]
)
async def test_replay_through_server_matches_the_venue(shared_data, rel, fmt, expected):
    report = await replay_checked(shared_data / rel, fmt)
    assert report.rejected == [], report.rejected[:5]
    assert report.mismatches == [], "\n".join(report.lines())
    assert report.by_kind() == {k: (n, n) for k, n in expected.items()}
    assert report.ok


async def test_lobster_full_day_through_server(shared_data):
    # 57,515 events of one symbol: the long, endurance-style stream.
    report = await replay_checked(shared_data / "lobster-2012-06-21/amzn-l1-fullday", "lobster")
    assert report.by_kind() == {"book": (57_515, 57_515)}, "\n".join(report.lines())
    assert report.ok


async def test_a_wrong_server_book_is_caught(shared_data):
    """The end-to-end check can fail: one lot too many at a best bid is reported."""
    records = list(open_records(shared_data / "kraken-book-2021-04-17/KRAKEN.ws.50.0", "kraken"))
    at = next(i for i, r in enumerate(records) if r.updates and r.updates[0].replace)
    snap = records[at].updates[0]
    price, size = max(snap.bids)
    bogus = Record(records[at].time_ns, (), (BookUpdate(snap.symbol, ((price, size + 1),)),))
    async with serve_in_process(test_settings()) as srv:
        report = await verify_through_server(
            iter([*records[: at + 1], bogus, *records[at + 1 :]]), srv.http, feed_token=FEED_TOKEN, timeout=20
        )
    assert not report.ok
    assert {m.symbol for m in report.mismatches} == {snap.symbol}
    assert {m.kind for m in report.mismatches} >= {"checksum", SERVER_CHECKSUM}


async def test_tardis_through_server(shared_data, tmp_path):
    """Tardis files carry no references: the served books must equal the
    books rebuilt from the file after every message, on the real sample and
    on a day-long file written in the same format from LOBSTER's AMZN data."""
    sample = shared_data / "tardis-deribit-2020-04-01/deribit_incremental_book_L2_BTC-PERPETUAL.csv"
    converted = tmp_path / "amzn_incremental_book_L2.csv"
    lobster = open_records(shared_data / "lobster-2012-06-21/amzn-l1-fullday", "lobster")
    converted.write_text("".join(tardis.write_rows(lobster)))
    # One message per book-changing LOBSTER event (hidden executions change nothing), plus the opening snapshot.
    for path, messages in ((sample, 1), (converted, 55_071)):
        async with serve_in_process(test_settings()) as srv:
            report = await verify_through_server(
                with_rebuilt_references(open_records(path, "tardis")), srv.http, feed_token=FEED_TOKEN, timeout=20
            )
        assert report.mismatches == [] and report.rejected == [], "\n".join(report.lines())
        assert report.by_kind() == {"book": (messages, messages)}, path.name
        assert report.ok
