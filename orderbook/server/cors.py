"""CORS for the plain HTTP endpoints (`/healthz`, `/readyz`, `/symbols`,
`/book/…`), so that a page served from another origin can read them.

Opt-in: with an empty allow-list no answer carries a CORS header. Origins are
compared as the WebSocket Origin check compares them (`admission.origin_listed`).
No credentials: the endpoints use no cookies, so `Access-Control-Allow-Credentials`
is never sent. `/ws` and `/feed` are not concerned: they have their own checks.

`decide` is pure and holds every rule; `install` wires it into Sanic."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sanic import Request, Sanic, response
from sanic.response import HTTPResponse

from .admission import origin_listed

ALLOW = "GET, OPTIONS"
EXPOSE = "Retry-After"  # readyz's 503 "full" says when to come back
MAX_AGE = "600"
FORBIDDEN = "CORS: this origin is not allowed\n"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 token)

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """`status` None: answer the request as usual and add `headers`.
    Otherwise (OPTIONS) answer `status` with `headers` and `body`."""

    status: int | None
    headers: Headers = ()
    body: str = ""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def decide(
    allowed: tuple[str, ...],
    origin: str | None,
    method: str,
    request_method: str | None = None,
    request_headers: str | None = None,
) -> Decision:
    """What to answer a request with `Origin: origin` (None: none sent).
    `request_method` and `request_headers` are the preflight's
    `Access-Control-Request-Method` and `-Headers` (None: not sent)."""
    options = method.upper() == "OPTIONS"
    allow = (("Allow", ALLOW),) if options else ()
    if not allowed:  # CORS off
        return Decision(204, allow) if options else Decision(None)
    # The answer depends on Origin whatever it is, so caches must key on it.
    vary = (("Vary", "Origin"),)
    if origin is None or not origin_listed(origin, allowed):
        if options and origin is not None and request_method is not None:  # a preflight
            return Decision(403, vary, FORBIDDEN)
        return Decision(204, allow + vary) if options else Decision(None, vary)
    # The Origin as sent (a parser has trimmed it already; trim anyway: a header value).
    allow_origin = ("Access-Control-Allow-Origin", "*" if "*" in allowed else origin.strip())
    if options and request_method is not None:  # a preflight
        headers: list[tuple[str, str]] = [allow_origin, ("Access-Control-Allow-Methods", ALLOW)]
        names = requested_headers(request_headers)
        if names:
            headers.append(("Access-Control-Allow-Headers", names))
        headers += [("Access-Control-Max-Age", MAX_AGE), *vary]
        return Decision(204, (*allow, *headers))
    exposed = (allow_origin, ("Access-Control-Expose-Headers", EXPOSE), *vary)
    return Decision(204 if options else None, (*allow, *exposed))


def requested_headers(value: str | None) -> str:
    """The preflight's requested header names that are well-formed, lower-cased;
    anything else (a malformed name) is left out rather than echoed."""
    if not value:
        return ""
    names = (n.strip().lower() for n in value.split(","))
    return ", ".join(dict.fromkeys(n for n in names if _TOKEN.fullmatch(n)))


# ----------------------------------------------------------------------------- Sanic


def install(app: Sanic, allowed: tuple[str, ...], uris: Iterable[str]) -> None:
    """Answer OPTIONS on `uris`, and with a non-empty `allowed` add the CORS
    headers to every answer of a route registered with `ctx_cors=True`."""
    allowed = tuple(allowed)

    async def options(request: Request, **_: str) -> HTTPResponse:
        h = request.headers
        d = decide(
            allowed,
            h.get("origin"),
            "OPTIONS",
            h.get("access-control-request-method"),
            h.get("access-control-request-headers"),
        )
        if d.body:
            return response.text(d.body, status=d.status or 200, headers=dict(d.headers))
        return response.empty(status=d.status or 204, headers=dict(d.headers))

    for i, uri in enumerate(uris):
        app.add_route(options, uri, methods=["OPTIONS"], name=f"cors_options_{i}")

    if not allowed:
        return

    @app.on_response
    async def add_cors_headers(request: Request, resp: HTTPResponse) -> None:
        route = request.route
        if route is None or not getattr(route.ctx, "cors", False):
            return
        for name, value in decide(allowed, request.headers.get("origin"), request.method).headers:
            if name == "Vary" and resp.headers.get("vary"):
                if "origin" not in resp.headers["vary"].lower():
                    resp.headers["vary"] = resp.headers["vary"] + ", " + value
            else:
                resp.headers[name] = value
