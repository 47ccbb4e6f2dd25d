"""The trading page: `GET /` and the files of the built page, from
`Settings.ui_dir` (by default `orderbook/server/static/`, written by the web
build). Without a built `index.html`, `GET /` answers a short page that says
how to build it and what works without it. With `ui_dir` None, no page (404).

The directory is looked at on every request: a build made while the node runs
is served at once. Files are read through Sanic's `response.file` (off the
event loop), never from outside the directory, never hidden ones."""

from __future__ import annotations

import asyncio
import html
import mimetypes
import shlex
from pathlib import Path
from urllib.parse import quote, unquote

from sanic import Request, Sanic, response
from sanic.response import HTTPResponse

INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".wasm": "application/wasm",
}


def content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def asset_parts(raw: str) -> tuple[str, ...] | None:
    """The path segments of a requested file, percent-decoded once; None when
    the path could leave the directory (`..`, `\\`, NUL), names a hidden file
    or `.`, or has an empty segment (`//`, a trailing `/`: no directory listing)."""
    path = unquote(raw.removeprefix("/"))
    if not path or "\x00" in path or "\\" in path:
        return None
    parts = tuple(path.split("/"))
    if any(not p or p.startswith(".") for p in parts):
        return None
    return parts


def locate(root: Path, parts: tuple[str, ...]) -> Path | None:
    """The regular file `root/parts…` when it is one and lies inside `root`
    once symlinks are resolved; None otherwise. Touches the disk: call it off
    the event loop."""
    try:
        base = root.resolve()
        path = base.joinpath(*parts).resolve()
        if path.is_relative_to(base) and path.is_file():
            return path
    except (OSError, ValueError):
        pass
    return None


def fallback_page(symbol: str | None, ws_url: str) -> str:
    """The page `GET /` answers when the trading page is not built: plain
    HTML, no external resource, links relative to `/` (so it works behind a
    proxy that serves the node under a prefix)."""
    e = html.escape
    if symbol:
        book = f"book/{quote(symbol, safe='')}?depth=10"
        book_item = f'<a href="{e(book)}">/{e(book)}</a>'
        watch = f"orderbook watch {shlex.quote(symbol)} --url {shlex.quote(ws_url)}"
    else:  # no symbol yet (a node fed only through /feed)
        book_item = "<code>/book/{symbol}?depth=10</code>"
        watch = f"orderbook watch SYMBOL --url {shlex.quote(ws_url)}"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>orderbook</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 42rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
code {{ background: #f2f2f2; padding: 0 .25em; border-radius: 3px; }}
</style>
</head>
<body>
<h1>orderbook</h1>
<p>The trading page is not built on this node.</p>
<p>To build it, install Node.js &gt;= 20 and npm, then run <code>make run</code> again
(or <code>make web</code>) and reload this page.</p>
<h2>What works without it</h2>
<ul>
<li><a href="symbols">/symbols</a> &mdash; every symbol, with its scales, epoch and seq</li>
<li>{book_item} &mdash; one book, in exact decimals</li>
<li><a href="readyz">/readyz</a> &mdash; readiness</li>
<li><code>{e(watch)}</code> &mdash; the live top of book in a terminal</li>
<li>the WebSocket stream at <code>/ws</code>, for any client (see docs/protocol.md)</li>
</ul>
</body>
</html>
"""


def _not_found(message: str = "not found") -> HTTPResponse:
    return response.json({"error": message}, status=404)


def install(app: Sanic, ui_dir: Path | None) -> None:
    """`GET /` and `GET /<file>`; the router prefers any more specific route."""

    async def index(request: Request) -> HTTPResponse:
        if ui_dir is None:
            return _not_found("this node serves no page (--no-ui)")
        path = await asyncio.to_thread(locate, ui_dir, (INDEX,))
        if path is not None:
            return await response.file(path, mime_type=CONTENT_TYPES[".html"], request_headers=request.headers)
        channels = request.app.ctx.state.hub.channels
        first = min(channels) if channels else None
        ws = ("wss" if request.scheme == "https" else "ws") + f"://{request.host}/ws"
        return response.html(fallback_page(first, ws), headers={"Cache-Control": "no-cache"})

    async def asset(request: Request, path: str) -> HTTPResponse:
        if ui_dir is None:
            return _not_found()
        parts = asset_parts(path)
        found = None if parts is None else await asyncio.to_thread(locate, ui_dir, parts)
        if found is None:
            return _not_found()
        return await response.file(
            found,
            mime_type=content_type(found.name),
            request_headers=request.headers,
            headers={"X-Content-Type-Options": "nosniff"},
        )

    app.add_route(index, "/", methods=["GET"], name="ui_index")
    app.add_route(asset, "/<path:path>", methods=["GET"], name="ui_asset")
