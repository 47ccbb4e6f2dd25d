"""When each record is due, by its recorded time and a speed factor.

Pure arithmetic: the player asks `Pacer.due(time_ns)` for the offset (in
seconds from the start of play) at which a record should go out, and waits
on whatever clock it was given. Tests drive it with a fake clock, so nobody
sleeps through a recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

NS = 1_000_000_000


class Clock(Protocol):
    """The player's view of time: a monotonic reading and a way to wait."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass(slots=True)
class Pacer:
    """`speed` 1.0 = recorded pace, 10.0 = ten times faster, 0 = as fast as possible.

    Recorded times may step back (rounded timestamps, two files merged by
    their own clocks): a record is never due before the one ahead of it, so
    the order of the file is kept and time never runs backwards.
    """

    speed: float = 1.0
    _first_ns: int | None = None
    _latest_ns: int = 0
    _base: float = 0.0  # offset added for each completed loop

    def __post_init__(self) -> None:
        if self.speed < 0 or self.speed != self.speed:
            raise ValueError(f"speed must be >= 0 (0 = as fast as possible), got {self.speed}")

    @property
    def unpaced(self) -> bool:
        return self.speed == 0

    def due(self, time_ns: int) -> float:
        """Seconds after the start of play at which a record of `time_ns` is due."""
        if self._first_ns is None:
            self._first_ns = self._latest_ns = time_ns
        if time_ns > self._latest_ns:
            self._latest_ns = time_ns
        if self.unpaced:
            return 0.0
        return self._base + (self._latest_ns - self._first_ns) / NS / self.speed

    def next_lap(self, gap_s: float = 0.0) -> None:
        """Start the recording again: its first record is due `gap_s` after the last one."""
        if self._first_ns is not None and not self.unpaced:
            self._base += (self._latest_ns - self._first_ns) / NS / self.speed + gap_s
        self._first_ns = None


def parse_speed(text: str) -> float:
    """ "10", "10x", "0.5" -> factor; "max" (or 0) -> as fast as possible."""
    t = text.strip().lower()
    if t in ("max", "0", "0x", "inf"):
        return 0.0
    t = t.removesuffix("x")
    try:
        value = float(t)  # a pacing factor, not a price: float is fine here
    except ValueError:
        raise ValueError(f"speed must be a positive number or 'max', got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"speed must be a positive number or 'max', got {text!r}")
    return value
