"""The Locust load run (loadtests/): its stream checks on hand-made streams,
then real headless Locust runs against a real server process: a clean run
(subscribers and a /feed publisher) with no failure and real latencies, a run
with a deliberate checksum fault that Locust must report, and the web UI.

Locust runs in subprocesses: it monkey-patches the standard library with
gevent on import, which must not happen inside the test process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from loadtests.streamcheck import (
    Pacer,
    StreamChecker,
    endpoints,
    parse_mix,
    pick_symbols,
)
from orderbook.core.book import Book
from orderbook.core.events import Delta, Snapshot
from orderbook.core.instrument import Instrument
from orderbook.core.resume import SnapshotReason
from orderbook.wire import codec

from .harness import FEED_TOKEN, ROOT, free_port, start_server_process

pytestmark = pytest.mark.timeout(150)

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
EPOCH = 77
T0 = 1_800_000_000_000_000_000  # a wall-clock time in ns for the hand-made streams


# ----------------------------------------------------------------------------- configuration helpers


def test_parse_mix_reads_weights_and_all():
    assert parse_mix("BTC-USD:3, ETH-USD:1,AAPL") == [("BTC-USD", 3.0), ("ETH-USD", 1.0), ("AAPL", 1.0)]
    assert parse_mix("all") is None and parse_mix(" ALL ") is None
    # Only a number after the last ':' is a weight.
    assert parse_mix("NS:SYM:2,XBT/USD:0.5,A:B") == [("NS:SYM", 2.0), ("XBT/USD", 0.5), ("A:B", 1.0)]
    for bad in ("", ",", "A:0", "A:-1", "A,A", ":2", "A:nan"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_pick_symbols_draws_distinct_symbols_by_weight():
    import random

    rng = random.Random(5)
    mix = [("HEAVY", 9.0), ("LIGHT", 1.0), ("MID", 3.0)]
    assert sorted(pick_symbols(mix, 10, rng)) == ["HEAVY", "LIGHT", "MID"]
    draws = [pick_symbols(mix, 2, rng) for _ in range(2000)]
    assert all(len(set(d)) == 2 for d in draws)
    firsts = [d[0] for d in draws]
    # HEAVY is drawn first with probability 9/13, LIGHT with 1/13.
    assert 0.62 < firsts.count("HEAVY") / len(firsts) < 0.76
    assert 0.04 < firsts.count("LIGHT") / len(firsts) < 0.11


def test_endpoints_follow_the_host():
    e = endpoints("http://127.0.0.1:8000")
    assert (e.http, e.ws, e.feed) == ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws", "ws://127.0.0.1:8000/feed")
    e = endpoints("https://books.example/ob/")
    assert (e.http, e.ws, e.feed) == (
        "https://books.example/ob", "wss://books.example/ob/ws", "wss://books.example/ob/feed"
    )  # fmt: skip
    assert endpoints("ws://h:1/ws").ws == "ws://h:1/ws"
    for bad in ("127.0.0.1:8000", "ftp://h", "http://"):
        with pytest.raises(ValueError):
            endpoints(bad)


def test_pacer_keeps_the_rate_and_bounds_catch_up():
    p = Pacer(100.0, start=10.0, max_burst=1.0)
    assert p.due(10.0) == 0
    assert p.due(10.5) == 50
    p.done(50)
    assert p.due(10.5) == 0
    assert p.due(10.525) == 2
    # After a 60 s stall: one second's worth, not six thousand updates.
    assert p.due(70.5) == 100
    p.done(100)
    assert p.due(70.5) == 0
    assert p.due(71.0) == 50


# ----------------------------------------------------------------------------- the stream checks


class FakeSymbol:
    """A server-side book that produces the frames a subscriber receives."""

    def __init__(self, symbol: str = "BTC-USD", seq: int = 10) -> None:
        self.symbol = symbol
        self.instrument = Instrument(symbol, 2, 8)
        self.book = Book()
        self.book.replace([(10000, 5), (9990, 3)], [(10010, 4), (10020, 6)])
        self.seq = seq
        self._n = 0

    def subscribed(self, request_id: int, resumed: bool = False, reason=SnapshotReason.NEW, seq=None) -> bytes:
        msg = codec.subscribed_message(
            self.symbol, request_id, resumed, None if resumed else reason, EPOCH,
            self.seq if seq is None else seq, 0, self.instrument,
        )  # fmt: skip
        return msg.SerializeToString()

    def snapshot(self, time_ns: int = T0) -> bytes:
        s = Snapshot(
            self.symbol, EPOCH, self.seq, self.instrument, tuple(self.book.bids()), tuple(self.book.asks()),
            self.book.checksum(), 0, time_ns,
        )  # fmt: skip
        return codec.snapshot_message(s).SerializeToString()

    def delta(self, publish_ns: int = T0, bad_checksum: bool = False) -> bytes:
        """The next change: a bid size that differs every time."""
        self._n += 1
        level = (10000, 5 + self._n)
        self.book.set_bid(*level)
        self.seq += 1
        checksum = self.book.checksum() ^ (1 if bad_checksum else 0)
        d = Delta(self.symbol, EPOCH, self.seq, self.seq - 1, (level,), (), checksum, 0, publish_ns)
        return codec.delta_message(d).SerializeToString()

    def heartbeat(self, seq=None, stale: bool = False, time_ns: int = T0) -> bytes:
        seq = self.seq if seq is None else seq
        return codec.heartbeat_message(self.symbol, EPOCH, seq, time_ns, stale).SerializeToString()


def kinds(out) -> list[str]:
    return [m.WhichOneof("kind") for m in out]


def errors(reports) -> list[str]:
    return [str(r.error) for r in reports if r.error is not None]


def live_checker(sym: FakeSymbol, **kw) -> tuple[StreamChecker, int]:
    """A checker whose one subscription is live at `sym.seq`; returns it and
    the request id of its Subscribe."""
    checker = StreamChecker((sym.symbol,), **kw)
    out = checker.start_connection(0.0)
    assert kinds(out) == ["subscribe"] and not out[0].subscribe.HasField("resume")
    rid = out[0].subscribe.request_id
    reports, _ = checker.handle(sym.subscribed(rid), T0, 0.01)
    assert reports == []
    reports, _ = checker.handle(sym.snapshot(), T0, 0.05)
    assert [(r.name.split()[0], r.error) for r in reports] == [("snapshot", None)]
    assert reports[0].response_time == pytest.approx(50.0)  # Subscribe sent at 0.0, book at 0.05
    assert checker.live(sym.symbol)
    return checker, rid


def test_clean_stream_reports_every_message_with_its_latency():
    sym = FakeSymbol()
    checker, _ = live_checker(sym)
    for i in range(5):
        frame = sym.delta(publish_ns=T0 + i * 1_000_000)
        # Received 3.5 ms after the server sent it.
        reports, out = checker.handle(frame, T0 + i * 1_000_000 + 3_500_000, 1.0)
        assert out == []
        assert [(r.name, r.error, r.length) for r in reports] == [("delta", None, len(frame))]
        assert reports[0].response_time == pytest.approx(3.5)
    reports, _ = checker.handle(sym.heartbeat(time_ns=T0), T0 + 2_000_000, 2.0)
    assert [(r.name, r.error, r.response_time) for r in reports] == [("heartbeat", None, 2.0)]
    assert checker.followers[sym.symbol].book == sym.book
    assert (checker.counts.deltas, checker.counts.failures) == (5, 0)


def test_latency_is_clamped_when_the_clocks_disagree():
    sym = FakeSymbol()
    checker, _ = live_checker(sym)
    reports, _ = checker.handle(sym.delta(publish_ns=T0 + 10_000_000), T0, 1.0)
    assert reports[0].error is None and reports[0].response_time == 0.0
    assert checker.counts.clock_skew == 1


def test_a_gap_is_a_failure_and_the_symbol_is_resynchronised_in_band():
    sym = FakeSymbol()
    checker, _ = live_checker(sym)
    sym.delta()  # lost
    reports, out = checker.handle(sym.delta(), T0, 1.0)
    assert errors(reports) == ["SequenceGap on BTC-USD"]
    assert kinds(out) == ["unsubscribe"]
    # What was in flight before the Unsubscribe arrived is ignored, not counted.
    assert checker.handle(sym.delta(), T0, 1.0) == ([], [])
    unsub = codec.unsubscribed_message(sym.symbol, out[0].unsubscribe.request_id).SerializeToString()
    reports, out = checker.handle(unsub, T0, 1.1)
    assert reports == [] and kinds(out) == ["subscribe"]
    assert not out[0].subscribe.HasField("resume")  # a broken book is not resumed
    rid = out[0].subscribe.request_id
    checker.handle(sym.subscribed(rid), T0, 1.1)
    reports, _ = checker.handle(sym.snapshot(), T0, 1.2)
    # The snapshot the subscriber asked for is no second incident.
    assert [(r.name, r.error) for r in reports] == [("snapshot", None)]
    reports, _ = checker.handle(sym.delta(), T0, 1.3)
    assert errors(reports) == [] and len(reports) == 1
    assert checker.followers[sym.symbol].book == sym.book


def test_duplicates_and_wrong_checksums_are_failures():
    sym = FakeSymbol()
    checker, _ = live_checker(sym)
    frame = sym.delta()
    checker.handle(frame, T0, 1.0)
    reports, out = checker.handle(frame, T0, 1.0)
    assert errors(reports) == ["DuplicateDelta on BTC-USD"] and kinds(out) == ["unsubscribe"]

    sym = FakeSymbol()
    checker, _ = live_checker(sym)
    reports, out = checker.handle(sym.delta(bad_checksum=True), T0, 1.0)
    assert errors(reports) == ["ChecksumMismatch on BTC-USD"] and kinds(out) == ["unsubscribe"]


def test_the_fault_hook_corrupts_every_nth_delta():
    sym = FakeSymbol()
    checker, _ = live_checker(sym, corrupt_every=3)
    outcomes = [errors(checker.handle(sym.delta(), T0, 1.0)[0]) for _ in range(3)]
    assert outcomes == [[], [], ["ChecksumMismatch on BTC-USD"]]


def test_heartbeats_are_checked():
    sym = FakeSymbol()
    checker, _ = live_checker(sym)
    reports, out = checker.handle(sym.heartbeat(seq=sym.seq + 2), T0, 1.0)
    assert errors(reports) == ["SequenceGap on BTC-USD"] and kinds(out) == ["unsubscribe"]

    sym = FakeSymbol()
    checker, _ = live_checker(sym)
    reports, out = checker.handle(sym.heartbeat(stale=True), T0, 1.0)
    assert errors(reports) == ["stale heartbeat on BTC-USD"] and out == []


def test_a_snapshot_the_subscriber_did_not_ask_for_is_a_resync_failure():
    sym = FakeSymbol()
    checker, _ = live_checker(sym, per_symbol=True)
    sym.delta()
    sym.delta()
    reports, out = checker.handle(sym.snapshot(time_ns=T0), T0 + 4_000_000, 1.0)
    assert [(r.name, str(r.error)) for r in reports] == [("snapshot BTC-USD", "resync snapshot on BTC-USD")]
    assert reports[0].response_time == pytest.approx(4.0) and out == []
    # The book is taken and the stream goes on from it.
    reports, _ = checker.handle(sym.delta(), T0, 1.1)
    assert [(r.name, r.error) for r in reports] == [("delta BTC-USD", None)]


def test_reconnection_resumes_and_a_refused_resume_is_a_failure():
    sym = FakeSymbol()
    checker, _ = live_checker(sym)
    checker.handle(sym.delta(), T0, 1.0)
    held = sym.seq
    out = checker.start_connection(5.0)
    assert kinds(out) == ["subscribe"]
    assert (out[0].subscribe.resume.epoch, out[0].subscribe.resume.seq) == (EPOCH, held)
    reports, _ = checker.handle(sym.subscribed(out[0].subscribe.request_id, resumed=True, seq=held), T0, 5.02)
    assert [(r.name, r.error) for r in reports] == [("resumed", None)]
    assert reports[0].response_time == pytest.approx(20.0)
    reports, _ = checker.handle(sym.delta(), T0, 5.1)
    assert errors(reports) == [] and len(reports) == 1

    # The server restarted meanwhile: a new epoch, a snapshot instead.
    out = checker.start_connection(9.0)
    assert out[0].subscribe.HasField("resume")
    rid = out[0].subscribe.request_id
    assert checker.handle(sym.subscribed(rid, reason=SnapshotReason.STALE_EPOCH), T0, 9.0) == ([], [])
    reports, _ = checker.handle(sym.snapshot(), T0, 9.1)
    assert [(r.name, str(r.error)) for r in reports] == [("snapshot", "resume refused (STALE_EPOCH) on BTC-USD")]


def test_a_resume_answered_at_another_point_is_a_failure():
    sym = FakeSymbol()
    checker, _ = live_checker(sym)
    out = checker.start_connection(5.0)
    reports, out = checker.handle(sym.subscribed(out[0].subscribe.request_id, resumed=True, seq=sym.seq - 1), T0, 5.0)
    assert errors(reports) == ["resume mismatch on BTC-USD"] and kinds(out) == ["unsubscribe"]


def test_depth_limited_subscriptions_do_not_ask_to_resume():
    sym = FakeSymbol()
    checker = StreamChecker((sym.symbol,), depth=5)
    out = checker.start_connection(0.0)
    assert out[0].subscribe.depth == 5
    checker.handle(sym.subscribed(out[0].subscribe.request_id), T0, 0.0)
    checker.handle(sym.snapshot(), T0, 0.0)
    out = checker.start_connection(1.0)
    assert not out[0].subscribe.HasField("resume")


def test_unknown_symbols_are_retried_quietly_then_reported():
    checker = StreamChecker(("LATE",), symbol_wait=10.0, started=0.0)
    out = checker.start_connection(0.0)
    unknown = codec.error_message(
        codec.ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL, "unknown symbol 'LATE'", "LATE", out[0].subscribe.request_id
    ).SerializeToString()
    assert checker.handle(unknown, T0, 1.0) == ([], [])
    due = checker.next_due()
    assert due is not None and 1.0 < due <= 1.0 + 0.5
    assert checker.due(due - 0.001) == []
    out = checker.due(due)
    assert kinds(out) == ["subscribe"] and checker.next_due() is None
    # Past the wait, the same answer is a failure (and still retried).
    late = codec.error_message(
        codec.ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL, "unknown symbol 'LATE'", "LATE", out[0].subscribe.request_id
    ).SerializeToString()
    reports, _ = checker.handle(late, T0, 11.0)
    assert [(r.name, str(r.error)) for r in reports] == [("error", "ERROR_CODE_UNKNOWN_SYMBOL on LATE")]
    assert checker.next_due() is not None


def test_undecodable_frames_and_stray_errors_are_failures():
    checker = StreamChecker(("A",))
    checker.start_connection(0.0)
    reports, _ = checker.handle(b"\xff\xff\xff", T0, 0.0)
    assert errors(reports) == ["undecodable server message"]
    stray = codec.error_message(codec.ErrorCode.ERROR_CODE_INTERNAL, "oops").SerializeToString()
    reports, _ = checker.handle(stray, T0, 0.0)
    assert errors(reports) == ["ERROR_CODE_INTERNAL"]


def test_json_frames_are_checked_alike():
    sym = FakeSymbol()
    checker = StreamChecker((sym.symbol,))
    out = checker.start_connection(0.0)
    to_json = lambda frame: codec.to_json(codec.parse_server_message(frame))  # noqa: E731
    checker.handle(to_json(sym.subscribed(out[0].subscribe.request_id)), T0, 0.0)
    reports, _ = checker.handle(to_json(sym.snapshot()), T0, 0.0)
    assert errors(reports) == [] and len(reports) == 1
    reports, _ = checker.handle(to_json(sym.delta(publish_ns=T0)), T0 + 1_000_000, 0.1)
    assert [(r.name, r.error, r.response_time) for r in reports] == [("delta", None, 1.0)]
    sym.delta()
    reports, _ = checker.handle(to_json(sym.delta()), T0, 0.2)
    assert errors(reports) == ["SequenceGap on BTC-USD"]


# ----------------------------------------------------------------------------- real Locust runs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One node with the built-in simulator at 200 updates/s and /feed open."""
    tmp = tmp_path_factory.mktemp("locust-server")
    node = start_server_process(tmp, "--simulator-rate", "200", "--feed-token", FEED_TOKEN)
    try:
        yield node
    finally:
        node.stop()


def run_locust(tmp: Path, name: str, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run Locust headless to completion; returns its exit code and output.
    Leaves the CSV files `<name>_*.csv` and the final stats `<name>.json`."""
    log = tmp / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
             "--csv", str(tmp / name), "--json-file", str(tmp / name), *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp, timeout=timeout,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
    return proc.returncode, log.read_text(errors="replace")


def stats_rows(tmp: Path, name: str) -> dict[str, dict[str, str]]:
    """The CSV stats, as written last during the run (up to a second old)."""
    with open(tmp / f"{name}_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def final_counts(tmp: Path, name: str) -> dict[str, tuple[int, int]]:
    """Row name -> (requests, failures) once every user has stopped."""
    entries = json.loads((tmp / f"{name}.json").read_text())
    return {e["name"]: (e["num_requests"], e["num_failures"]) for e in entries}


def count(row: dict[str, str], column: str = "Request Count") -> int:
    return int(row[column])


def test_headless_run_is_clean_and_measures_latency(server, tmp_path):
    users, per_user = 30, 2
    rc, output = run_locust(
        tmp_path, "run",
        "-u", str(users), "-r", "15", "-t", "15s", "--host", server.http,
        "--symbols", "BTC-USD:3,ETH-USD:1,AAPL:1,LOAD-A:2", "--symbols-per-user", str(per_user), "--per-symbol",
        "--publish-rate", "100", "--publish-symbols", "LOAD-A", "--feed-token", FEED_TOKEN,
        timeout=90,
    )  # fmt: skip
    assert rc == 0, output[-4000:]
    rows = stats_rows(tmp_path, "run")
    assert count(rows["Aggregated"], "Failure Count") == 0, output[-4000:]
    final = final_counts(tmp_path, "run")
    assert sum(failed for _, failed in final.values()) == 0, final
    # One publisher among the users, every other one with exactly one
    # snapshot per symbol: any resync or reconnection would add more.
    subscribers = users - 1
    assert sum(n for name, (n, _) in final.items() if name.startswith("snapshot ")) == subscribers * per_user
    assert final["connect"][0] == subscribers
    deltas = {name.removeprefix("delta "): n for name, (n, _) in final.items() if name.startswith("delta ")}
    # The simulator's symbols and the publisher's own one all flowed.
    assert {"BTC-USD", "LOAD-A"} <= set(deltas), sorted(final)
    assert all(n > 100 for n in deltas.values()), deltas
    for name in deltas:
        row = rows[f"delta {name}"]
        # Real latencies in milliseconds: above zero, far below seconds-as-ms.
        assert 0 < float(row["Average Response Time"]) < 10_000
        assert float(row["Median Response Time"]) <= float(row["95%"])
    assert final["publish"][0] > 50 and final["feed connect"][0] == 1
    with open(tmp_path / "run_exceptions.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 1, "a user raised"


def test_a_checksum_fault_is_a_locust_failure(server, tmp_path):
    users = 3
    rc, output = run_locust(
        tmp_path, "fault",
        "-u", str(users), "-r", str(users), "-t", "4s", "--host", server.http,
        "--symbols", "BTC-USD", "--inject-checksum-fault", "25",
    )  # fmt: skip
    assert rc == 1, output[-4000:]  # Locust's exit code for failures (2 would be a crash)
    assert count(stats_rows(tmp_path, "fault")["Aggregated"], "Failure Count") > 0
    final = final_counts(tmp_path, "fault")
    deltas, failures = final["delta"]
    assert failures > 0
    assert sum(failed for _, failed in final.values()) == failures  # nothing else went wrong
    # Each fault was followed by a resynchronisation and the stream went on;
    # a user stopped at the end may be between a fault and its snapshot.
    snapshots, snapshot_failures = final["snapshot"]
    assert snapshot_failures == 0
    assert users + (failures - users) <= snapshots <= users + failures
    assert snapshots > users
    assert deltas > 2 * failures
    assert "ChecksumMismatch on BTC-USD" in (tmp_path / "fault_failures.csv").read_text()


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as r:
        assert r.status == 200
        return r.read()


def test_web_ui_starts_and_runs(server, tmp_path):
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    with open(tmp_path / "web.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", server.http,
             "--web-host", "127.0.0.1", "--web-port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
    try:
        page = wait_for(lambda: http_get(ui + "/"), 30)
        assert b"symbols_per_user" in page  # the subscriber options are offered in the form
        form = {"user_count": 2, "spawn_rate": 2, "host": server.http, "symbols": "AAPL", "per_symbol": "true"}
        request = urllib.request.Request(ui + "/swarm", data=urllib.parse.urlencode(form).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            assert json.load(r)["success"] is True

        def deltas_flowing():
            stats = json.loads(http_get(ui + "/stats/requests"))["stats"]
            row = next((s for s in stats if s["name"] == "delta AAPL"), None)
            return row if row is not None and row["num_requests"] > 0 else None

        row = wait_for(deltas_flowing, 20)
        assert row["num_failures"] == 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, (tmp_path / "web.log").read_text(errors="replace")[-4000:]


def wait_for(probe, timeout: float):
    """Poll `probe` until it returns something truthy without raising."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)  # polling a condition under a deadline
