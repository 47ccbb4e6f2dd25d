"""Real Chromium for the trading page's tests: Debian's `chromium`, driven by
Playwright with `executable_path` (no browser is ever downloaded). Outside CI
the tests skip, saying why, when Chromium, Playwright or the built page is
missing; under CI each of those is a failure."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orderbook.server.settings import DEFAULT_UI_DIR

from .harness import ROOT

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Screenshots and other files a person may want to look at after a run.
ARTIFACTS = Path(os.environ.get("ORDERBOOK_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (required in CI)")
    pytest.skip(what)


def chromium_path() -> str:
    """Debian's Chromium binary (the real one behind the /usr/bin wrapper)."""
    for path in (os.environ.get("ORDERBOOK_CHROMIUM"), "/usr/lib/chromium/chromium"):
        if path and os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        _missing("Chromium not found: apt-get install chromium")
    return found


def require_page() -> None:
    if not (DEFAULT_UI_DIR / "index.html").is_file():
        _missing(f"the trading page is not built in {DEFAULT_UI_DIR}: run `make web` (needs Node.js >= 20)")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[object]:
    """One headless Chromium for a test; closed (and its processes gone) after."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("Playwright for Python is not installed (pip install -e '.[test]')")
    require_page()
    path = chromium_path()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield browser
        finally:
            await browser.close()


class PageErrors:
    """Uncaught exceptions and console errors of a page: a test ends by
    asserting there were none."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        # The resource's URL is kept: Chromium's "Failed to load resource" text
        # does not say which one failed.
        page.on(
            "console",
            lambda m: (
                m.type == "error" and self.errors.append(f"console: {m.text} ({(m.location or {}).get('url', '')})")
            ),
        )

    def unexpected(self, *allowed: str) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in allowed)]


async def wait_js(page, expression: str, timeout: float = 20.0, arg=None):
    """Wait until a JS expression over `window.orderbook` is truthy; its value."""
    handle = await page.wait_for_function(expression, arg=arg, timeout=timeout * 1000, polling=50)
    return await handle.json_value()


async def wait_text(page, text: str, timeout: float = 20.0) -> None:
    """Wait until the page shows `text` (case-insensitive). The page draws at
    most once per animation frame, so what it shows trails its state."""
    await page.wait_for_function(
        "t => document.body.innerText.toLowerCase().includes(t)", arg=text.lower(), timeout=timeout * 1000, polling=50
    )


# Run inside the page: fetch /book at the node while recording the page's own
# book at every seq it reaches, then return the page's book as it stood at the
# node's seq (a depth-limited subscription's book stands from its last delta's
# seq until its next delta). Both sides come back in /book's shape.
BOOK_AT_NODE_SEQ = """
async ([symbol, depth]) => {
  const ob = window.orderbook;
  const seen = new Map();
  const keep = () => { const b = ob.book(symbol); if (b) seen.set(BigInt(b.seq), b); };
  keep();
  const off = ob.onBook((s) => { if (s === symbol) keep(); });
  try {
    const r = await fetch(`/book/${encodeURIComponent(symbol)}?depth=${depth}`, {cache: "no-store"});
    const node = await r.json();
    const target = BigInt(node.seq);
    const deadline = Date.now() + 10000;
    // Wait until the page has moved past the node's seq, so the book it held at that seq is known.
    while (![...seen.keys()].some((q) => q > target) && !seen.has(target) && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 10));
    }
    const at = [...seen.keys()].filter((q) => q <= target).sort((a, b) => (a < b ? 1 : -1))[0];
    return {node, page: at === undefined ? null : seen.get(at), pageSeqs: seen.size};
  } finally {
    off();
  }
}
"""


def trim(levels: list, depth: int) -> list:
    return levels if depth == 0 else levels[:depth]
