"""A bounded history of recent sequenced changes, kept for resume.

Entries form a contiguous chain (each entry's prev_seq is the previous entry's
seq). The history is bounded both by entry count and by total bytes; the
oldest entries are dropped first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import InvariantViolation

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    max_entries: int = 10_000
    max_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_entries < 0 or self.max_bytes < 0:
            raise ValueError("history limits must be >= 0")


class History(Generic[T]):
    """Recent changes of one symbol, for resume.

    >>> h = History(HistoryLimits(max_entries=2, max_bytes=100), start_seq=0)
    >>> for seq in (1, 2, 3):
    ...     h.append(seq, seq - 1, f"d{seq}", 10)
    >>> h.since(1), h.since(0), h.since(3)
    (['d2', 'd3'], None, [])
    """

    __slots__ = ("_base_seq", "_bytes", "_entries", "_head_seq", "_limits")

    def __init__(self, limits: HistoryLimits, start_seq: int) -> None:
        self._limits = limits
        self._entries: deque[tuple[int, int, T, int]] = deque()
        self._bytes = 0
        # Resume is possible from any seq in [_base_seq, _head_seq].
        self._base_seq = start_seq
        self._head_seq = start_seq

    @property
    def base_seq(self) -> int:
        """Oldest seq a client can resume from."""
        return self._base_seq

    @property
    def head_seq(self) -> int:
        return self._head_seq

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, seq: int, prev_seq: int, item: T, nbytes: int) -> None:
        if prev_seq != self._head_seq or seq <= prev_seq:
            raise InvariantViolation(f"history chain broken: head {self._head_seq}, got {prev_seq}->{seq}")
        self._entries.append((seq, prev_seq, item, nbytes))
        self._bytes += nbytes
        self._head_seq = seq
        self._trim()

    def _trim(self) -> None:
        lim = self._limits
        entries = self._entries
        while entries and (len(entries) > lim.max_entries or self._bytes > lim.max_bytes):
            seq, _, _, n = entries.popleft()
            self._bytes -= n
            self._base_seq = seq

    def reset(self, seq: int) -> None:
        """Forget everything; resume becomes possible from `seq` onward."""
        self._entries.clear()
        self._bytes = 0
        self._base_seq = self._head_seq = seq

    def since(self, seq: int) -> list[T] | None:
        """Items of every change after `seq`, oldest first; None if the history
        does not reach back to exactly `seq` (too old, ahead, or mid-entry)."""
        if seq == self._head_seq:
            return []
        if seq < self._base_seq or seq > self._head_seq:
            return None
        # Walk back from the newest entry: resumes are usually recent.
        out: list[T] = []
        for _e_seq, e_prev, item, _ in reversed(self._entries):
            out.append(item)
            if e_prev == seq:
                out.reverse()
                return out
            if e_prev < seq:
                return None  # seq falls inside a merged entry
        return None
