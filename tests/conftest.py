"""Shared fixtures. Real recorded data is read in place from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    env = os.environ.get("ORDERBOOK_SHARED_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real recorded market data. In CI its absence is a failure."""
    path = shared_data_dir()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("../shared/data (or $ORDERBOOK_SHARED_DATA) is missing in CI")
        pytest.skip("recorded market data not found: set ORDERBOOK_SHARED_DATA")
    return path


def pytest_sessionfinish(session, exitstatus):
    """Name what could keep the interpreter from exiting after the tests:
    threads that are not daemons, and child processes still alive."""
    import threading

    lingering = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if lingering:
        print(f"\nthreads still running after the tests: {lingering}", flush=True)
    try:
        children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    except OSError:
        children = []
    if children:
        print(f"\nchild processes still running after the tests: {children}", flush=True)
