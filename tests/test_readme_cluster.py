"""The README's "Running a cluster" commands, run as written: its marked
shell block, with free ports in place of its own, in bash, from the
repository's root. Then a client through the HAProxy it started gets the
recorded market, verified against every checksum, with the same book on
both nodes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from orderbook.client import OrderbookClient

from .harness import ROOT, free_port

pytestmark = pytest.mark.timeout(180)

README = ROOT / "README.md"
MARK = "# cluster:"
# The README's own ports (Redis, HAProxy, two nodes, the simulator node).
PORTS = ("6390", "8000", "8001", "8002", "8100")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def cluster_block() -> str:
    """The fenced sh block of the cluster section that starts with MARK."""
    section = README.read_text().split("## Running a cluster", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    marked = [b for b in blocks if b.startswith(MARK)]
    assert len(marked) == 1, "the cluster section needs exactly one ```sh block starting with " + MARK
    return marked[0]


def with_ports(script: str, ports: dict[str, int]) -> str:
    return re.sub(r"(?<!\d)(" + "|".join(PORTS) + r")(?!\d)", lambda m: str(ports[m.group(1)]), script)


def need(tool: str, path: str) -> None:
    if shutil.which(tool, path=path) is None:
        if os.environ.get("CI"):
            pytest.fail(f"`{tool}` is required in CI")
        pytest.skip(f"`{tool}` not installed")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def test_the_block_is_what_the_readme_promises():
    script = cluster_block()
    for port in PORTS:
        assert re.search(r"(?<!\d)" + port + r"(?!\d)", script), port
    assert "6379" not in script, "the README's Redis must not be the default one"
    assert '--dir "$RUN"' in script and "RUN=$(mktemp -d)" in script
    commands = [ln for ln in script.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for line in commands:
        if "orderbook " in line:
            assert ".venv/bin/orderbook " in line, line
    assert any("haproxy" in ln and "docker/haproxy.cfg" in ln for ln in commands)
    assert any(".venv/bin/orderbook replay" in ln for ln in commands), "the cluster must be fed"
    assert any("--url http://127.0.0.1:8000" in ln and "watch" in ln for ln in commands), "a client through HAProxy"


def test_the_readme_cluster_runs_as_written(tmp_path):
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    need("redis-server", path)
    need("haproxy", path)
    need("bash", path)
    ports = {p: free_port() for p in PORTS}
    script = with_ports(cluster_block(), ports)
    # mktemp -d makes $RUN under the test's folder, which pytest removes.
    # The block finds the tools itself (it puts /usr/sbin on PATH for haproxy).
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERBOOK_")}
    env.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # Its own session: every process the block starts in the background
        # is in this group, and teardown stops the group.
        proc = subprocess.Popen(
            ["bash", "-e", "-c", script], cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True
        )
    try:
        try:
            status = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the README's block did not finish\n{tail(out_path)}\n{tail(err_path)}")
        stdout = out_path.read_text(errors="replace")
        assert status == 0, f"{stdout[-3000:]}\n{tail(err_path)}"

        # The watch through HAProxy printed both books, each with its epoch and seq.
        for symbol in ("BTC-USD", "ETH-USD"):
            assert re.search(rf"^{re.escape(symbol)}  epoch \d+  seq \d+", stdout, re.M), stdout[-3000:]
        # The record and the replay said what they did, in one line each.
        assert re.search(r"orderbook record: \d+ messages", stdout), stdout[-3000:]
        assert re.search(r"orderbook replay: \d+ records", stdout), stdout[-3000:]

        # Both nodes serve the same book, at the same epoch and seq (one log).
        node1, node2 = (f"http://127.0.0.1:{ports[p]}" for p in ("8001", "8002"))
        books = [get_json(f"{n}/book/BTC-USD?depth=0") for n in (node1, node2)]
        assert books[0]["epoch"] == books[1]["epoch"]
        assert (books[0]["seq"], books[0]["bids"], books[0]["asks"]) == (
            books[1]["seq"],
            books[1]["bids"],
            books[1]["asks"],
        )
        assert books[0]["bids"] and books[0]["asks"]

        # A Python client through HAProxy: a verified book, the nodes' own.
        async def through_haproxy() -> tuple[int, list, list]:
            url = f"ws://127.0.0.1:{ports['8000']}/ws"
            async with OrderbookClient(url, ["BTC-USD"]) as client:
                await client.wait_synced(timeout=20)
                f = client.books["BTC-USD"]
                inst = f.instrument
                assert f.synced and f.seq is not None and inst is not None
                exact = [
                    [[inst.format_price(p), inst.format_size(q)] for p, q in side]
                    for side in (f.book.bids(), f.book.asks())
                ]
                return f.seq, exact[0], exact[1]

        assert asyncio.run(through_haproxy()) == (books[0]["seq"], books[0]["bids"], books[0]["asks"])
    finally:
        stop_group(proc)


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to every process the block started, then SIGKILL to what is
    left after a grace period."""
    pgid = proc.pid  # start_new_session: the group's id is the shell's pid
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the shell, whose zombie would keep the group alive
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)  # polling the group's end, bounded by the grace period
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)
