"""A terminal view of live books: `render` draws, `watch` keeps drawing."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from ssl import SSLContext
from typing import TextIO

from orderbook.core.follower import BookFollower

from .client import OrderbookClient

# Home the cursor and clear the screen.
_CLEAR = "\x1b[H\x1b[2J"


def render(books: Mapping[str, BookFollower], rows: int = 5) -> str:
    """A compact table per symbol: the best `rows` bids and asks side by side
    (exact decimals, formatted with the instrument's scales), with the book's
    epoch and seq. Pure: reads the followers, returns the text."""
    blocks: list[str] = []
    for symbol, follower in books.items():
        blocks.append(_render_one(symbol, follower, rows))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _render_one(symbol: str, f: BookFollower, rows: int) -> str:
    inst = f.instrument
    if f.seq is None or inst is None:
        return f"{symbol}  (waiting for snapshot)"
    status = "" if f.synced else "  [resyncing]"
    depth = f"  depth {f.depth}" if f.depth else ""
    header = f"{symbol}  epoch {f.epoch}  seq {f.seq}{depth}{status}"
    bids = f.book.bids(rows) if rows > 0 else []
    asks = f.book.asks(rows) if rows > 0 else []
    cells = [
        (
            inst.format_size(bids[i][1]) if i < len(bids) else "",
            inst.format_price(bids[i][0]) if i < len(bids) else "",
            inst.format_price(asks[i][0]) if i < len(asks) else "",
            inst.format_size(asks[i][1]) if i < len(asks) else "",
        )
        for i in range(max(len(bids), len(asks)))
    ]
    titles = ("bid size", "bid", "ask", "ask size")
    widths = [max([len(t)] + [len(row[c]) for row in cells]) for c, t in enumerate(titles)]

    def line(row: tuple[str, str, str, str]) -> str:
        left = f"{row[0]:>{widths[0]}}  {row[1]:>{widths[1]}}"
        right = f"{row[2]:<{widths[2]}}  {row[3]:<{widths[3]}}"
        return f"{left} | {right}".rstrip()

    lines = [header, line(titles)]
    lines.extend(line(row) for row in cells)
    if not cells:
        lines.append("(empty book)")
    return "\n".join(lines)


async def watch(
    url: str,
    symbols: list[str],
    *,
    rows: int = 5,
    token: str | None = None,
    encoding: str = "proto",
    out: TextIO | None = None,
    refresh: float = 0.25,
    once: bool = False,
    depth: int = 0,
    origin: str | None = None,
    timeout: float | None = None,
    interval_ms: int = 0,
    ssl: SSLContext | None = None,
) -> str:
    """Subscribe to `symbols` and redraw their books every `refresh` seconds
    while they change (clearing the screen when `out` is a terminal, plain
    successive tables otherwise) until cancelled.

    With `once`, print a single table as soon as every symbol is synced and
    return; `timeout` bounds that wait (TimeoutError). Returns the last table
    drawn. `out` defaults to sys.stdout at call time; `ssl` verifies a
    wss:// server (OrderbookClient's). Raises what ends the client (e.g.
    `HandshakeRejected` for a bad token)."""
    stream = out if out is not None else sys.stdout
    tty = _isatty(stream)
    dirty = True

    def changed(symbol: str, follower: BookFollower, kind: str) -> None:
        nonlocal dirty
        dirty = True

    client = OrderbookClient(
        url,
        symbols,
        depth=depth,
        interval_ms=interval_ms,
        encoding=encoding,
        token=token,
        origin=origin,
        on_update=changed,
        ssl=ssl,
    )
    runner = asyncio.create_task(client.run(), name="orderbook-watch")
    text = ""
    try:
        if once:
            waiting = asyncio.create_task(client.wait_synced(symbols, timeout=timeout))
            await asyncio.wait((runner, waiting), return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
                runner.result()  # run() ended first: raise why
            waiting.result()
            text = render(client.books, rows)
            stream.write(text if text.endswith("\n") else text + "\n")
            stream.flush()
            return text
        while True:
            done, _ = await asyncio.wait((runner,), timeout=refresh)
            if done:
                runner.result()
                return text
            if dirty:
                dirty = False
                text = render(client.books, rows)
                _draw(stream, text, tty=tty)
    finally:
        await client.close()
        if not runner.done():
            runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _draw(stream: TextIO, text: str, *, tty: bool) -> None:
    if tty:
        stream.write(_CLEAR + text)
    else:
        stream.write(text + "\n")
    stream.flush()
