"""Checks made on a WebSocket request before the 101 upgrade: is it a
WebSocket request at all, is its Origin allowed (against cross-site WebSocket
hijacking), does it carry the token, is there room, and which encoding."""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from sanic.compat import Header as Headers

from orderbook.wire.codec import SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO, Encoding

BEARER_PREFIX = "bearer."
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Admission:
    encoding: Encoding
    subprotocol: str | None  # the one to echo in the 101 response


def offered_subprotocols(header_values: list[str]) -> list[str]:
    out: list[str] = []
    for value in header_values:
        out.extend(p.strip() for p in value.split(",") if p.strip())
    return out


def is_upgrade(headers: Headers) -> bool:
    upgrade = headers.get("upgrade", "")
    connection = headers.get("connection", "")
    return upgrade.lower() == "websocket" and "upgrade" in connection.lower()


WEBSOCKET_VERSION = "13"


def handshake_refusal(headers: Headers) -> Refusal | None:
    """RFC 6455 4.2.1/4.4 on an upgrade request: a `Sec-WebSocket-Version`
    other than 13 (or none) gets 426 with `Sec-WebSocket-Version: 13`, the
    version the server speaks; a missing or malformed `Sec-WebSocket-Key`
    (base64 of 16 bytes) gets 400."""
    versions = headers.getall("sec-websocket-version", [])
    if [v.strip() for v in versions] != [WEBSOCKET_VERSION]:
        got = ", ".join(versions) or "none"
        return Refusal(
            426,
            f"unsupported WebSocket version ({got}): this server speaks version 13 (RFC 6455)\n",
            (("Sec-WebSocket-Version", WEBSOCKET_VERSION),),
        )
    keys = headers.getall("sec-websocket-key", [])
    if not keys:
        return Refusal(400, "missing Sec-WebSocket-Key header\n")
    if len(keys) != 1 or not _valid_key(keys[0].strip()):
        return Refusal(400, "invalid Sec-WebSocket-Key: must be the base64 of 16 bytes\n")
    return None


def _valid_key(key: str) -> bool:
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def normalize_origin(origin: str) -> str:
    """An Origin as compared: trimmed, without a trailing "/", lower-cased
    (an Origin is scheme://host[:port], all of it case-insensitive)."""
    return origin.strip().rstrip("/").lower()


def origin_listed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Whether `origin` is in an explicit allow-list ("*" allows any). The one
    comparison of the WebSocket Origin check and of CORS."""
    if "*" in allowed:
        return True
    want = normalize_origin(origin)
    return any(want == normalize_origin(a) for a in allowed)


def origin_allowed(origin: str | None, host_header: str, allowed: tuple[str, ...]) -> bool:
    """Browsers always send Origin on WebSocket requests; programs usually do
    not, and cannot be hijacked cross-site, so a missing Origin is allowed."""
    if origin is None:
        return True
    if allowed:
        return origin_listed(origin, allowed)
    origin = origin.strip().rstrip("/")
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
        netloc = parts.netloc
    except ValueError:
        return False
    if not hostname:
        return False
    return hostname in LOCAL_HOSTS or netloc.lower() == host_header.strip().lower()


def token_matches(expected: str | None, offered: list[str], query_token: str | None) -> bool:
    if expected is None:
        return True
    candidates = [p[len(BEARER_PREFIX) :] for p in offered if p.startswith(BEARER_PREFIX)]
    if query_token is not None:
        candidates.append(query_token)
    want = expected.encode()
    return any(hmac.compare_digest(c.encode(), want) for c in candidates)


def choose_encoding(offered: list[str]) -> Admission:
    """The first encoding the client offers; protobuf if it offers none."""
    for p in offered:
        if p == SUBPROTOCOL_PROTO:
            return Admission(Encoding.PROTOBUF, p)
        if p == SUBPROTOCOL_JSON:
            return Admission(Encoding.JSON, p)
    return Admission(Encoding.PROTOBUF, None)


NOT_WEBSOCKET = (
    "This endpoint speaks WebSocket (RFC 6455) only: connect with a WebSocket client, "
    "e.g. `wscat -c ws://HOST/ws -s orderbook.v1.json`.\n"
)
