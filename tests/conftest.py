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
