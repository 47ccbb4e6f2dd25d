"""When to connect again (docs/protocol.md §7.1, §2.3): after a refused
upgrade, a failed attempt, or a connection that ended. Pure: the caller
passes the current time in and does the waiting."""

from __future__ import annotations

import email.utils
import math
from datetime import UTC

from .backoff import Backoff

# A Retry-After beyond this is treated as this: a misconfigured server must not
# park a client for days.
MAX_RETRY_AFTER = 3600.0


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date,
    against `now` in Unix seconds), clamped to [0, MAX_RETRY_AFTER]; None when
    absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delay = when.timestamp() - now
    if not math.isfinite(delay):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


class ReconnectPolicy:
    """Delays between connection attempts, drawn from `backoff`."""

    __slots__ = ("backoff",)

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff

    def after_status(self, status: int, retry_after: float | None = None) -> float | None:
        """The delay after the upgrade was answered with HTTP `status`, or
        None to give up: another 4xx (401, 403, 426, ...) is a configuration
        error that retrying will not fix. 429 and 503 wait at least
        `retry_after`."""
        if status in (429, 503):
            return max(retry_after or 0.0, self.backoff.next_delay())
        if 400 <= status < 500:
            return None
        return self.backoff.next_delay()

    def after_failure(self) -> float:
        """The delay after a network error (refused, timed out, reset)."""
        return self.backoff.next_delay()

    def after_connection(self, delivered: bool) -> float:
        """The delay after a connection ended. One that delivered book data
        starts the delays over, but even then the first is jittered: clients
        dropped together must not come back together."""
        if delivered:
            self.backoff.reset()
        return self.backoff.next_delay()
