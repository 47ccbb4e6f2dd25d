"""The trading page at `GET /` (built, or the fallback that says how to build
it), its files, and CORS on the HTTP endpoints: against real servers, plus
the pure rules (path checks, the CORS decision) directly."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderbook.cli import build_parser, serve_settings
from orderbook.server import cors, ui
from orderbook.server.admission import normalize_origin, origin_listed
from orderbook.server.settings import DEFAULT_UI_DIR

from .harness import (
    Publisher,
    http_request,
    instrument,
    serve_in_process,
    start_server_process,
    test_settings,
    update,
)
from .test_http import connect, registered

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0
PAGE = "http://localhost:5173"


async def http(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    return await http_request(port, path, method, headers, WAIT)


def cors_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("access-control-")}


def built_page(root: Path) -> Path:
    """A stand-in for the web build's output."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "index.html": "<!doctype html><title>trade</title><script src=app.js></script>",
        "app.js": "console.log('app')",
        "app.js.map": '{"version":3}',
        "worker.js": "onmessage = () => {}",
        "style.css": "body{}",
        "logo.svg": "<svg xmlns='http://www.w3.org/2000/svg'/>",
        "sub/x.css": "p{}",
        "my file.js": "1",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "font.woff2").write_bytes(b"wOF2\x00\x01")
    (root / "favicon.ico").write_bytes(b"\x00\x00\x01\x00")
    return root


# ----------------------------------------------------------------------------- the page


async def test_built_page_and_its_files(tmp_path):
    root = built_page(tmp_path / "ui")
    async with serve_in_process(test_settings(ui_dir=root)) as srv:
        status, headers, body = await http(srv.port, "/")
        assert status == 200 and body == (root / "index.html").read_bytes()
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        for path, ctype in [
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/worker.js", "text/javascript; charset=utf-8"),
            ("/app.js.map", "application/json"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/sub/x.css", "text/css; charset=utf-8"),
            ("/logo.svg", "image/svg+xml"),
            ("/font.woff2", "font/woff2"),
            ("/favicon.ico", "image/x-icon"),
            ("/index.html", "text/html; charset=utf-8"),
            ("/my%20file.js", "text/javascript; charset=utf-8"),
        ]:
            status, headers, body = await http(srv.port, path)
            name = urllib.request.url2pathname(path.lstrip("/"))
            assert (status, headers["content-type"]) == (200, ctype), path
            assert body == (root / name).read_bytes(), path


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/escape.txt",  # a symlink out of the directory
        "/.hidden",
        "/sub/",
        "/sub",
        "/nope.js",
        "/%00",
    ],
)
async def test_nothing_outside_the_directory_and_unknown_files_are_404(tmp_path, path):
    root = built_page(tmp_path / "ui")
    (tmp_path / "secret.txt").write_text("secret")
    (root / ".hidden").write_text("hidden")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    async with serve_in_process(test_settings(ui_dir=root)) as srv:
        status, headers, body = await http(srv.port, path)
        assert status == 404, (path, body)
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"]
        assert b"secret" not in body


@pytest.mark.parametrize(
    "raw, parts",
    [
        ("app.js", ("app.js",)),
        ("/sub/x.css", ("sub", "x.css")),
        ("my%20file.js", ("my file.js",)),
        ("../x", None),
        ("%2e%2e/x", None),
        ("a/%2e%2e%2f%2e%2e%2fx", None),
        ("a\\..\\x", None),
        ("a//b", None),
        ("a/", None),
        (".env", None),
        ("a/./b", None),
        ("", None),
        ("a%00b", None),
    ],
)
def test_asset_parts(raw, parts):
    assert ui.asset_parts(raw) == parts


async def test_the_other_routes_are_not_shadowed(tmp_path):
    root = built_page(tmp_path / "ui")
    for name in ("symbols", "healthz", "readyz", "ws", "feed", "book/X"):  # files named like routes
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("a file")
    async with serve_in_process(test_settings(ui_dir=root)) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("X")], [update("X", bids=[(1, 1)])])
        status, _, body = await http(srv.port, "/symbols")
        assert status == 200 and [s["symbol"] for s in json.loads(body)["symbols"]] == ["X"]
        status, _, body = await http(srv.port, "/book/X?depth=1")
        assert status == 200 and json.loads(body)["bids"] == [["0.01", "0.0001"]]
        assert json.loads((await http(srv.port, "/healthz"))[2])["status"] == "up"
        assert json.loads((await http(srv.port, "/readyz"))[2])["status"] == "ready"
        assert (await http(srv.port, "/ws"))[0] == 426
        assert (await http(srv.port, "/feed"))[0] == 426
        assert (await http(srv.port, "/book/NOPE"))[0] == 404


async def test_fallback_page_without_a_build_then_the_build_once_written(tmp_path):
    root = tmp_path / "ui"  # not built (yet)
    async with serve_in_process(test_settings(ui_dir=root)) as srv:
        status, headers, body = await http(srv.port, "/")
        page = body.decode()
        assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        assert "<title>orderbook</title>" in page
        assert "Node.js" in page and "make run" in page and "make web" in page
        assert 'href="symbols"' in page and 'href="readyz"' in page and "orderbook watch" in page
        assert "/book/{symbol}?depth=10" in page  # no symbol yet
        # Self-contained: nothing loaded from elsewhere.
        assert "src=" not in page and "http://" not in page and "https://" not in page
        assert (await http(srv.port, "/app.js"))[0] == 404

        async with Publisher.connect(srv.feed_url) as pub:
            await pub.send([instrument("EUR/USD"), instrument("AAPL")], [])
        page = (await http(srv.port, "/"))[2].decode()
        assert 'href="book/AAPL?depth=10"' in page and "orderbook watch AAPL" in page

        # The directory is read at request time: a build made now is served now.
        built_page(root)
        status, headers, body = await http(srv.port, "/")
        assert status == 200 and body == (root / "index.html").read_bytes()


def test_fallback_page_escapes_the_symbol():
    page = ui.fallback_page('<A&B>/"x', "ws://h:1/ws")
    assert "<A&B>" not in page and 'href="book/%3CA%26B%3E%2F%22x?depth=10"' in page


async def test_no_ui_serves_no_page(tmp_path):
    root = built_page(tmp_path / "ui")
    async with serve_in_process(test_settings(ui_dir=None)) as srv:
        for path in ("/", "/app.js"):
            status, headers, body = await http(srv.port, path)
            assert status == 404 and headers["content-type"].startswith("application/json"), path
            assert json.loads(body)["error"]
        assert (await http(srv.port, "/symbols"))[0] == 200
    assert root.is_dir()


# ----------------------------------------------------------------------------- CORS against a server

HTTP_PATHS = ["/healthz", "/readyz", "/symbols", "/book/BTC-USD", "/book/NOPE"]


async def _publish_btc(srv) -> None:
    async with Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("BTC-USD", 2, 8)], [update("BTC-USD", bids=[(1, 1)])])


async def test_cors_is_off_by_default(tmp_path):
    async with serve_in_process(test_settings(ui_dir=built_page(tmp_path / "ui"))) as srv:
        await _publish_btc(srv)
        for path in [*HTTP_PATHS, "/", "/app.js"]:
            status, headers, _ = await http(srv.port, path, headers={"Origin": PAGE})
            assert status in (200, 404) and cors_headers(headers) == {}, path
            assert "vary" not in headers, path
        for path in HTTP_PATHS:
            status, headers, _ = await http(
                srv.port, path, "OPTIONS", {"Origin": PAGE, "Access-Control-Request-Method": "GET"}
            )
            assert status == 204 and cors_headers(headers) == {}, path
            assert headers["allow"] == "GET, OPTIONS"


async def test_cors_allow_list(tmp_path):
    settings = test_settings(ui_dir=built_page(tmp_path / "ui"), cors_origins=(PAGE, "https://app.example/"))
    async with serve_in_process(settings) as srv:
        await _publish_btc(srv)
        for path in HTTP_PATHS:
            for origin in (PAGE, "https://app.example", "HTTPS://App.Example/"):
                status, headers, _ = await http(srv.port, path, headers={"Origin": origin})
                assert status == (404 if path.endswith("NOPE") else 200), path
                assert cors_headers(headers) == {
                    "access-control-allow-origin": origin,  # the exact echo
                    "access-control-expose-headers": "Retry-After",
                }, (path, origin)
                assert headers["vary"] == "Origin"
            for others in ({"Origin": "http://localhost:5174"}, {"Origin": "null"}, {}):
                status, headers, _ = await http(srv.port, path, headers=others)
                assert status == (404 if path.endswith("NOPE") else 200), path
                assert cors_headers(headers) == {}, (path, others)
                assert headers["vary"] == "Origin"  # a cache must not reuse it for another origin
        # Not the page's files, nor the WebSocket endpoints.
        for path in ("/", "/app.js", "/nope.js", "/ws"):
            _, headers, _ = await http(srv.port, path, headers={"Origin": PAGE})
            assert cors_headers(headers) == {} and "vary" not in headers, path


async def test_cors_preflight():
    async with serve_in_process(test_settings(cors_origins=(PAGE,))) as srv:
        for path in HTTP_PATHS:
            status, headers, body = await http(
                srv.port,
                path,
                "OPTIONS",
                {
                    "Origin": PAGE,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "X-Request-Id, content-type",
                },
            )
            assert (status, body) == (204, b""), path
            assert cors_headers(headers) == {
                "access-control-allow-origin": PAGE,
                "access-control-allow-methods": "GET, OPTIONS",
                "access-control-allow-headers": "x-request-id, content-type",
                "access-control-max-age": "600",
            }, path
            assert headers["vary"] == "Origin"

            status, headers, body = await http(
                srv.port, path, "OPTIONS", {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
            )
            assert status == 403 and cors_headers(headers) == {} and b"not allowed" in body, path
            assert headers["content-type"].startswith("text/plain")

            # Not a preflight (no Origin, or no Access-Control-Request-Method): plain OPTIONS.
            status, headers, _ = await http(srv.port, path, "OPTIONS")
            assert status == 204 and headers["allow"] == "GET, OPTIONS" and cors_headers(headers) == {}


async def test_cors_any_origin():
    async with serve_in_process(test_settings(cors_origins=("*",))) as srv:
        for origin in (PAGE, "https://anything.example:8443", "null"):
            status, headers, _ = await http(srv.port, "/symbols", headers={"Origin": origin})
            assert status == 200 and headers["access-control-allow-origin"] == "*"
            assert headers["access-control-expose-headers"] == "Retry-After"
            status, headers, _ = await http(
                srv.port, "/symbols", "OPTIONS", {"Origin": origin, "Access-Control-Request-Method": "GET"}
            )
            assert status == 204 and headers["access-control-allow-origin"] == "*"
        _, headers, _ = await http(srv.port, "/symbols")  # no Origin: not a CORS request
        assert cors_headers(headers) == {}


async def test_cors_on_readyz_full_exposes_retry_after():
    async with (
        serve_in_process(test_settings(max_connections=1, cors_origins=(PAGE,))) as srv,
        connect(srv.url) as ws,
    ):
        await registered(ws)
        status, headers, body = await http(srv.port, "/readyz", headers={"Origin": PAGE})
        assert (status, json.loads(body)["status"]) == (503, "full")
        assert int(headers["retry-after"]) > 0
        assert headers["access-control-allow-origin"] == PAGE
        assert "Retry-After" in headers["access-control-expose-headers"]


# ----------------------------------------------------------------------------- the pure CORS rules

ORIGINS = st.builds(
    lambda scheme, host, port, slash: f"{scheme}://{host}{port}{slash}",
    st.sampled_from(["http", "https", "HTTP"]),
    st.sampled_from(["localhost", "app.example", "App.Example", "127.0.0.1", "[::1]", "evil.example"]),
    st.sampled_from(["", ":5173", ":8443"]),
    st.sampled_from(["", "/"]),
)
ANY_ORIGIN = st.one_of(st.none(), ORIGINS, st.just("null"), st.text(max_size=30))


@given(
    allowed=st.lists(st.one_of(ORIGINS, st.just("*")), max_size=4).map(tuple),
    origin=ANY_ORIGIN,
    method=st.sampled_from(["GET", "OPTIONS", "options"]),
    request_method=st.one_of(st.none(), st.sampled_from(["GET", "POST"])),
    request_headers=st.one_of(st.none(), st.text(max_size=40)),
)
def test_decide_never_allows_an_origin_not_listed(allowed, origin, method, request_method, request_headers):
    d = cors.decide(allowed, origin, method, request_method, request_headers)
    acao = d.header("Access-Control-Allow-Origin")
    listed = {normalize_origin(a) for a in allowed}
    if acao is not None:
        assert origin is not None
        if "*" in allowed:
            assert acao == "*"
        else:
            assert acao == origin.strip() and normalize_origin(origin) in listed
    elif origin is not None and allowed:
        assert "*" not in allowed and normalize_origin(origin) not in listed
    if not allowed:
        assert not any(k.lower().startswith("access-control-") or k == "Vary" for k, _ in d.headers)
    else:
        assert d.header("Vary") == "Origin"
    preflight = method.upper() == "OPTIONS" and origin is not None and request_method is not None
    assert d.status == (None if method == "GET" else 403 if preflight and allowed and acao is None else 204)
    for _, value in d.headers:
        assert "\r" not in value and "\n" not in value  # nothing the client sent can split a header


def test_decide_examples():
    # Whitespace around a listed Origin is not echoed (no header splitting).
    assert cors.decide((PAGE,), f" {PAGE}\r\n", "GET").header("Access-Control-Allow-Origin") == PAGE
    d = cors.decide((PAGE,), PAGE, "OPTIONS", "GET", "Content-Type, X-Bad Name, x-ok")
    assert d.status == 204 and d.header("Access-Control-Allow-Headers") == "content-type, x-ok"
    assert cors.decide((PAGE,), PAGE, "GET").header("Access-Control-Expose-Headers") == "Retry-After"
    assert cors.decide((), PAGE, "GET") == cors.Decision(None)
    assert cors.decide((), PAGE, "OPTIONS", "GET").status == 204


def test_origin_listed_ignores_case_and_a_trailing_slash():
    assert origin_listed("https://App.Example/", ("https://app.example",))
    assert origin_listed("https://app.example", ("HTTPS://APP.EXAMPLE/",))
    assert not origin_listed("https://app.example:8443", ("https://app.example",))
    assert not origin_listed("http://app.example", ("https://app.example",))
    assert origin_listed("anything", ("*",))


# ----------------------------------------------------------------------------- the CLI


def test_serve_flags_reach_the_settings(tmp_path):
    parse = build_parser().parse_args
    s = serve_settings(parse(["serve", "--cors-origin", PAGE, "--cors-origin", "*", "--ui-dir", str(tmp_path)]))
    assert s.cors_origins == (PAGE, "*") and s.ui_dir == tmp_path.resolve()
    s = serve_settings(parse(["serve"]))
    assert s.cors_origins == () and s.ui_dir == DEFAULT_UI_DIR
    assert serve_settings(parse(["serve", "--no-ui"])).ui_dir is None
    with pytest.raises(SystemExit):
        parse(["serve", "--no-ui", "--ui-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="not a directory"):
        serve_settings(parse(["serve", "--ui-dir", str(tmp_path / "missing")]))
    for bad in ("localhost:5173", "https://app.example/path", "https://app.example?x=1", "http://h:99999"):
        with pytest.raises(ValueError, match="--cors-origin"):
            serve_settings(parse(["serve", "--cors-origin", bad]))


@pytest.mark.timeout(90)
def test_serve_process_with_cors_origin_and_ui_dir(tmp_path):
    root = built_page(tmp_path / "ui")
    node = start_server_process(tmp_path, "--no-simulator", "--cors-origin", PAGE, "--ui-dir", str(root))
    try:
        with urllib.request.urlopen(node.http + "/", timeout=5) as r:
            assert r.read() == (root / "index.html").read_bytes()
        req = urllib.request.Request(node.http + "/symbols", headers={"Origin": PAGE})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.headers["Access-Control-Allow-Origin"] == PAGE
    finally:
        node.stop()
    node = start_server_process(tmp_path, "--no-simulator", "--no-ui")
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(node.http + "/", timeout=5)
        assert e.value.code == 404
    finally:
        node.stop()
