"""Limits checked before a WebSocket upgrade (/ws and /feed): handshakes per
second per source IP and from everyone, and open connections per source IP.
Over a limit: 429 Too Many Requests with Retry-After, before the 101.

The source IP is the transport's peer, or, when that peer is a proxy trusted
with `--trust-proxy CIDR`, the client address its X-Forwarded-For names
(`Gate.source`, client_address.py). Behind a proxy that is not trusted every
client shares the proxy's address: raise or turn off (0) the per-IP limits
there and let the proxy limit its clients (docs/operations.md "Limits").

Refusals are logged at WARNING, at most one line per second per kind, with
the count of refusals the quiet time held back, so a flood cannot flood the
log (`LogThrottle`; `throttled` is shared by every limit's refusal). The
endpoints' other refusals (token, Origin, full, malformed, draining) are
logged the same way, with the reason the client was given
(`refusals_logged`).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from sanic import Request
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse

from orderbook.core.ratelimit import KeyedBuckets, TokenBucket

from .admission import Refusal
from .client_address import ClientAddresses
from .settings import Settings

log = logging.getLogger("orderbook.limits")


class LogThrottle:
    """At most one log line per `interval` seconds per key; the next line says
    how many were held back."""

    def __init__(
        self, logger: logging.Logger, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object, extra: Mapping[str, object] | None = None) -> None:
        self.log(logging.WARNING, key, msg, *args, extra=extra)

    def log(self, level: int, key: str, msg: str, *args: object, extra: Mapping[str, object] | None = None) -> None:
        """`extra`: the fields a JSON log line carries (peer, conn, symbol...)."""
        now = self._clock()
        if now < self._next.get(key, -math.inf):
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._next[key] = now + self._interval
        held = self._held.pop(key, 0)
        fields = dict(extra or {})
        if held:
            fields["held"] = held
            self._log.log(level, msg + " (and %d more like it since the last line)", *args, held, extra=fields)
        else:
            self._log.log(level, msg, *args, extra=fields)


# One per process: limit refusals of every kind (feed, HTTP, handshakes).
throttled = LogThrottle(log)

UpgradeHandler = Callable[[Request], Coroutine[Any, Any, HTTPResponse | None]]
# Refusals that are a client's bug or a probe (a plain GET), or routine (a
# drain), rather than a sign of misconfiguration or attack.
_ROUTINE_STATUSES = frozenset({400, 426})


def conn_id(conn: object) -> str:
    """A connection's id in log lines (`conn`): unique among open connections."""
    return f"{id(conn):x}"


def _refusal_fields(endpoint: str, peer: str, status: int, reason: str) -> dict[str, object]:
    return {"peer": peer, "endpoint": endpoint, "status": status, "reason": reason}


def refusals_logged(endpoint: str) -> Callable[[UpgradeHandler], UpgradeHandler]:
    """Log each upgrade `endpoint` refuses (an HTTP answer instead of the 101)
    with its status, the reason the client was given and the peer: at most
    one line a second per status (`throttled`), so a storm cannot flood the
    log. 429s are logged where they are decided (`Gate.admit`, which names
    the limit)."""

    def wrap(handler: UpgradeHandler) -> UpgradeHandler:
        @functools.wraps(handler)
        async def logged(request: Request) -> HTTPResponse | None:
            try:
                resp = await handler(request)
            except SanicException as exc:  # a malformed handshake Sanic answers itself
                _log_refusal(request, endpoint, exc.status_code, str(exc))
                raise
            if resp is not None and resp.status >= 400 and resp.status != 429:
                _log_refusal(request, endpoint, resp.status, bytes(resp.body or b"").decode("utf-8", "replace"))
            return resp

        return logged

    return wrap


def _log_refusal(request: Request, endpoint: str, status: int, reason: str) -> None:
    reason = reason.strip()
    state = getattr(request.app.ctx, "state", None)
    peer = state.gate.source(request) if state is not None else (request.ip or "")
    routine = status in _ROUTINE_STATUSES or "draining" in reason
    throttled.log(
        logging.INFO if routine else logging.WARNING,
        f"refused {endpoint} {status}{' routine' if routine else ''}",
        "refused %s upgrade from %s: %d %s",
        endpoint,
        peer,
        status,
        reason,
        extra=_refusal_fields(endpoint, peer, status, reason),
    )


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds))) if math.isfinite(seconds) else "60"


class Gate:
    """The per-process admission limits. `admit` before the upgrade;
    `opened`/`closed` around each connection it let through."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        s = settings
        self.max_per_ip = s.max_connections_per_ip
        self._per_ip = KeyedBuckets(s.handshake_rate, max(s.handshake_burst, 1.0)) if s.handshake_rate > 0 else None
        self._global = (
            TokenBucket(s.global_handshake_rate, max(s.global_handshake_burst, 1.0), now)
            if s.global_handshake_rate > 0
            else None
        )
        self._open: dict[str, set[object]] = {}
        self._addresses = ClientAddresses(s.trusted_proxies)

    def source(self, request: Request) -> str:
        """The address a request counts as: its TCP peer, or behind a trusted
        proxy the client that X-Forwarded-For names."""
        return self._addresses.of(request)

    def connections(self, ip: str) -> int:
        held = self._open.get(ip)
        return len(held) if held else 0

    def admit(self, ip: str, endpoint: str) -> Refusal | None:
        """None, or the 429 for a handshake from `ip` now."""
        now = self._clock()
        if self.max_per_ip and self.connections(ip) >= self.max_per_ip:
            throttled.warning(
                "conns_per_ip",
                "refused %s handshake from %s: %d connections open (--max-connections-per-ip %d)",
                endpoint,
                ip,
                self.connections(ip),
                self.max_per_ip,
                extra=_refusal_fields(endpoint, ip, 429, "max_connections_per_ip"),
            )
            return Refusal(
                429,
                f"too many connections from your address ({self.max_per_ip}, max_connections_per_ip); "
                "close one or retry later\n",
                (("Retry-After", "5"),),
            )
        per_ip = self._per_ip
        if per_ip is not None and not per_ip.take(ip, now):
            wait = per_ip.wait_time(ip, now)
            throttled.warning(
                "handshake_rate",
                "refused %s handshake from %s: over %g handshakes/s (--handshake-rate)",
                endpoint,
                ip,
                per_ip.rate,
                extra=_refusal_fields(endpoint, ip, 429, "handshake_rate"),
            )
            return Refusal(
                429,
                f"too many handshakes from your address (handshake_rate {per_ip.rate:g}/s, "
                f"burst {per_ip.burst:g}); retry later\n",
                (("Retry-After", _retry_after(wait)),),
            )
        glob = self._global
        if glob is not None and not glob.take(now):
            throttled.warning(
                "global_handshake_rate",
                "refused %s handshake from %s: over %g handshakes/s from everyone (--global-handshake-rate)",
                endpoint,
                ip,
                glob.rate,
                extra=_refusal_fields(endpoint, ip, 429, "global_handshake_rate"),
            )
            return Refusal(
                429,
                f"too many handshakes on this node (global_handshake_rate {glob.rate:g}/s); retry later\n",
                (("Retry-After", _retry_after(glob.wait_time(now))),),
            )
        return None

    def opened(self, ip: str, conn: object) -> None:
        self._open.setdefault(ip, set()).add(conn)

    def closed(self, ip: str, conn: object) -> None:
        """Idempotent: a connection counts once however often it is closed."""
        held = self._open.get(ip)
        if held is not None:
            held.discard(conn)
            if not held:
                del self._open[ip]
