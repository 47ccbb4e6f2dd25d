"""The metrics as Prometheus itself takes them: a real `prometheus` scrapes a
node under traffic and answers PromQL about it, `promtool check metrics`
accepts the exposition, and the Grafana dashboard asks only for series that
nodes expose (a cluster's included) in queries Prometheus parses.

Debian's `prometheus` package provides both binaries. Outside CI these tests
skip, saying so, when one is missing; under CI that is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from orderbook.wire import codec

from .harness import (
    FEED_TOKEN,
    ROOT,
    Publisher,
    Subscriber,
    free_port,
    has_symbol,
    http_get,
    instrument,
    sequencer_of,
    serve_in_process,
    start_server_process,
    until,
    update,
)
from .redis_harness import redis_factory, redis_proc  # noqa: F401
from .test_metrics import Scrape, upgrade_headers

pytestmark = pytest.mark.timeout(180)

DASHBOARD = ROOT / "docker" / "grafana" / "orderbook-dashboard.json"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        what = f"`{name}` not found: install Debian's prometheus package (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{what} (required in CI)")
        pytest.skip(what)
    return path


def promtool_complaints(exposition: bytes) -> str:
    """What `promtool check metrics` says about an exposition ("" if nothing)."""
    done = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=exposition, capture_output=True, timeout=60, check=False
    )
    said = (done.stdout + done.stderr).decode().strip()
    return said or ("" if done.returncode == 0 else f"exit status {done.returncode}")


@contextlib.contextmanager
def prometheus(tmp_path: Path, targets: list[str], timeout: float = 60.0) -> Iterator[str]:
    """A Prometheus scraping `targets` every second, with its data in tmp_path;
    its base URL. Stopped (killed if need be) on exit."""
    binary = tool("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    listed = ", ".join(f'"{t}"' for t in targets)
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: orderbook\n    static_configs:\n      - targets: [{listed}]\n"
    )
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"prometheus exited: {log_path.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready: {log_path.read_text()[-2000:]}"
            time.sleep(0.1)  # polling a condition, bounded by the deadline
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def query(base: str, promql: str) -> dict:
    """The JSON answer of an instant query (/api/v1/query), errors included."""
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def value(base: str, promql: str) -> float:
    """The single value a query returns; 0 when it returns none."""
    result = query(base, promql)["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


# ------------------------------------------------------------------ the dashboard


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


# PromQL words that read like metric names: keywords and aggregation modifiers.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
KEYWORDS |= {"inf", "nan"}
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not
    functions, keywords, label names or values, or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"\$\w+", " ", expr)  # Grafana variables
    names = set()
    for m in IDENT.finditer(expr):
        rest = expr[m.end() :].lstrip()
        if rest.startswith("(") or m.group() in KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(m.group())
    return names


def concrete(expr: str, window: str = "10s") -> str:
    """The query as Grafana would send it for every node."""
    return expr.replace("$__rate_interval", window).replace('instance=~"$instance"', 'instance=~".*"')


def test_metric_names_are_found_in_promql():
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~"$instance", x="b c"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("sum(rate(x_total[5m])) / sum(rate(y_total[5m])) > bool 0") == {"x_total", "y_total"}
    assert metric_names('topk(10, sum by (symbol) (deriv(s{i=~"$i"}[1m])))') == {"s"}


def test_the_dashboard_is_well_formed():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"]
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "instance"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
    assert len(dashboard_queries()) >= 30


# ------------------------------------------------------------------ promtool


async def test_promtool_accepts_the_exposition():
    async with (
        serve_in_process() as srv,
        Publisher.connect(srv.feed_url) as pub,
        Subscriber.connect(srv.url) as full,
        Subscriber.connect(srv.url) as depth,
    ):
        await pub.send([instrument("A"), instrument("B")], [update("A", bids=[(100, 1)], asks=[(101, 1)])])
        await full.subscribe("A")
        await depth.subscribe("A", depth=2)
        await full.subscribe("NOPE")  # an error reply
        await pub.send(updates=[update("NOPE", bids=[(1, 1)])])  # a refused batch
        await http_get(srv.port, "/ws", upgrade_headers(Origin="https://evil.example"))
        for i in range(10):
            await pub.send(updates=[update("A", bids=[(100, 2 + i)])])
        await full.until_seq("A", 11)
        await depth.until_seq("A", 11)
        status, _, body = await http_get(srv.port, "/metrics")
        assert status == 200
        assert b'orderbook_symbol_seq{symbol="A"} 11.0' in body
        assert promtool_complaints(body) == ""


# ------------------------------------------------------------------ a real Prometheus


async def test_prometheus_scrapes_a_node_under_traffic_and_answers_promql(tmp_path):
    tool("prometheus")
    metrics_port = free_port()
    node = start_server_process(
        tmp_path, "--no-simulator", "--feed-token", FEED_TOKEN, "--metrics-port", str(metrics_port)
    )
    stop = asyncio.Event()

    async def publish(pub: Publisher) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await pub.send(updates=[update("BTC-USD", bids=[(100 - i % 5, 1 + i)], asks=[(105 + i % 3, 1 + i)])])
            await asyncio.sleep(0.02)  # a steady 50 changes per second

    async def read(sub: Subscriber) -> None:
        while not stop.is_set():
            await sub.recv()

    try:
        async with (
            Publisher.connect(node.feed_url) as pub,
            Subscriber.connect(node.url) as s1,
            Subscriber.connect(node.url) as s2,
            Subscriber.connect(node.url, codec.Encoding.JSON) as s3,
        ):
            await pub.send([instrument("BTC-USD")], [update("BTC-USD", bids=[(100, 1)], asks=[(105, 1)])])
            for s in (s1, s2):
                await s.subscribe("BTC-USD")
            await s3.subscribe("BTC-USD", depth=1)
            tasks = [asyncio.ensure_future(c) for c in (publish(pub), read(s1), read(s2), read(s3))]
            try:
                with prometheus(tmp_path, [f"127.0.0.1:{metrics_port}"]) as prom:
                    delivered = 'sum(rate(orderbook_messages_sent_total{job="orderbook", kind="delta"}[5s]))'
                    await until(lambda: value(prom, delivered) > 0, timeout=60)
                    assert value(prom, 'up{job="orderbook"}') == 1
                    assert value(prom, 'orderbook_connections{endpoint="/ws"}') == 3
                    assert value(prom, 'orderbook_subscriptions{kind="full"}') == 2
                    assert value(prom, "sum(rate(orderbook_sent_payload_bytes_total[5s]))") > 0
                    # Every dashboard query parses; those of a single node return series for it.
                    queries = [(t, concrete(e)) for t, e in dashboard_queries()]
                    for title, q in queries:
                        answer = query(prom, q)
                        assert answer["status"] == "success", (title, q, answer)

                    def single_node_series() -> list[str]:
                        return [q for _, q in queries if "cluster" not in q and not query(prom, q)["data"]["result"]]

                    await until(lambda: not single_node_series(), timeout=60)
            finally:
                stop.set()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        node.stop()


# ------------------------------------------------------------------ the dashboard against a cluster


async def test_dashboard_names_only_series_that_nodes_expose_cluster_included(tmp_path, redis_proc):  # noqa: F811
    nodes = [
        start_server_process(tmp_path, "--redis", redis_proc.url, "--feed-token", FEED_TOKEN, "--lease-ttl", "1")
        for _ in range(2)
    ]
    try:
        sequencer = await sequencer_of(nodes)
        replica = next(n for n in nodes if n is not sequencer)
        async with Publisher.connect(replica.feed_url) as pub, Subscriber.connect(replica.url) as sub:
            reply = await pub.send([instrument("C")], [update("C", bids=[(100, 1)], asks=[(101, 1)])])
            assert reply.WhichOneof("kind") == "ack"
            await until(lambda: has_symbol(replica.http, "C"))
            await sub.subscribe("C")
            await pub.send(updates=[update("C", bids=[(100, 2)])])
            await sub.until_seq("C", 2)
            exposed: set[str] = set()
            for node in nodes:
                status, _, body = await http_get(node.port, "/metrics")
                assert status == 200
                assert promtool_complaints(body) == ""
                m = Scrape(body.decode())
                exposed |= m.names()
                role = m.labelled("orderbook_cluster_role", "role")
                assert role == ({"sequencer": 1, "replica": 0} if node is sequencer else {"sequencer": 0, "replica": 1})
                assert m("orderbook_cluster_log_position") >= 1
                assert m("orderbook_cluster_caught_up") == 1
            assert (
                Scrape((await http_get(sequencer.port, "/metrics"))[2].decode())(
                    "orderbook_cluster_lease_changes_total", change="acquired"
                )
                == 1
            )
        wanted: dict[str, set[str]] = {}
        for title, expr in dashboard_queries():
            for name in metric_names(expr):
                wanted.setdefault(name, set()).add(title)
        assert len(wanted) >= 30
        assert {n for n in wanted if n.startswith("orderbook_cluster_")}, "no cluster panel"
        missing = {n: sorted(titles) for n, titles in wanted.items() if n not in exposed}
        assert not missing, f"dashboard panels name series no node exposes: {missing}"
    finally:
        for n in nodes:
            n.stop()
