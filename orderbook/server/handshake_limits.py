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
log (`LogThrottle`; `throttled` is shared by every limit's refusal).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from sanic import Request

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

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        if now < self._next.get(key, -math.inf):
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._next[key] = now + self._interval
        held = self._held.pop(key, 0)
        if held:
            self._log.warning(msg + " (and %d more like it since the last line)", *args, held)
        else:
            self._log.warning(msg, *args)


# One per process: limit refusals of every kind (feed, HTTP, handshakes).
throttled = LogThrottle(log)


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
