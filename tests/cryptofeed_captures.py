"""What the tests of the cryptofeed capture readers share: the sample files,
copies of them with lines edited, and the `orderbook` command with what it
must say about a bad capture."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orderbook.replay.files import open_records
from orderbook.replay.records import FormatError, Record

from .harness import FEED_TOKEN, ROOT, start_server_process

DATA = Path(__file__).parent / "data" / "cryptofeed-sample-data"

Edit = Callable[[list[str]], list[str]]


def orderbook(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orderbook.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def verify_stops_with(path: Path, error: FormatError) -> None:
    """`orderbook verify PATH` exits 1 with one line: the error."""
    out = orderbook("verify", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [f"orderbook verify: {error}"]


def verify_resyncs(path: Path, *said: str) -> None:
    """`orderbook verify PATH --gaps resync` succeeds and says each of `said`."""
    out = orderbook("verify", str(path), "--gaps", "resync")
    assert out.returncode == 0, out.stderr
    for text in said:
        assert text in out.stdout, out.stdout


def capture_lines(capture: Path) -> list[str]:
    return capture.read_bytes().decode().split("\n")


def copy_with(tmp_path: Path, capture: Path, instruments: Path, edit: Edit) -> Path:
    """The capture and its instruments in tmp_path, the capture's lines passed through `edit`."""
    (tmp_path / instruments.name).write_bytes(instruments.read_bytes())
    out = tmp_path / capture.name
    out.write_bytes("\n".join(edit(capture_lines(capture))).encode())
    return out


def read_to_error(path: Path, fmt: str) -> tuple[list[Record], FormatError]:
    """The records `path` yields before it fails, and the error it fails with."""
    got: list[Record] = []
    with pytest.raises(FormatError) as err:
        for record in open_records(path, fmt):
            got.append(record)
    return got, err.value


def verify_through_a_node(tmp_path: Path, capture: Path) -> subprocess.CompletedProcess:
    """`orderbook verify CAPTURE --server` against a node started for it."""
    node = start_server_process(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator")
    try:
        return orderbook("verify", str(capture), "--server", node.http, "--feed-token", FEED_TOKEN)
    finally:
        node.stop()
