"""What a capture reader does when an instrument's book can no longer be
trusted (a gap: a failed check, a break in the ids, a damaged line).

`gaps="error"` stops with a FormatError naming file:line, the instrument and
what was wrong. `gaps="resync"` notes the gap ("gap at FILE:LINE: SYM:
PROBLEM"), skips the instrument's messages until its next snapshot and notes
how many were skipped when it comes ("resync: SYM skipped N records") or at
the end of the file ("no snapshot: SYM skipped N records to the end"). A
damaged line whose text names no instrument is noted "unreadable line".

`GapPolicy` holds the choice and which instruments wait for a snapshot; the
reader keeps its own books and drops an instrument's when `gap` or
`damaged` returns for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Literal

from ..records import FormatError, Record

Gaps = Literal["error", "resync"]

NOTE_GAP = "gap"


def check(gaps: object, *, optional: bool = False) -> None:
    """Refuse a `gaps` that is neither "error" nor "resync" (nor None, when `optional`)."""
    if gaps not in ("error", "resync") and not (optional and gaps is None):
        raise ValueError(f"gaps must be 'error' or 'resync', not {gaps!r}")


def records(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


def resync_note(name: str, skipped: int) -> str:
    return f"resync: {name} skipped {records(skipped)}"


def no_snapshot_note(name: str, skipped: int) -> str:
    return f"no snapshot: {name} skipped {records(skipped)} to the end"


def damage(body: str, ended: bool, exc: ValueError) -> str:
    """What is wrong with a line that is not JSON."""
    # A last line with no line break, or JSON that stops mid-string or
    # mid-value, ran out of line: a cut, not garbage.
    cut = not ended or (
        isinstance(exc, json.JSONDecodeError)
        and (exc.pos >= len(body.rstrip()) or exc.msg.startswith("Unterminated string"))
    )
    return f"{'the line is cut short' if cut else 'not JSON'}: {exc}"


class GapPolicy:
    """`gaps` and, with resync, the instruments waiting for their next snapshot."""

    def __init__(self, gaps: Gaps) -> None:
        check(gaps)
        self.gaps = gaps
        # name -> its messages lost since its gap, the one at the gap included
        self.waiting: dict[str, int] = {}

    def gap(self, name: str, problem: str, time_ns: int, where: str) -> Record:
        """The note of a gap of `name`, which now waits for a snapshot (a gap
        while it waits starts the count again); with "error", the FormatError."""
        if self.gaps == "error":
            raise FormatError(where, f"{name}: {problem}")
        self.waiting[name] = 1
        return Record(time_ns, note=f"{NOTE_GAP} at {where}: {name}: {problem}")

    def skip(self, name: str) -> bool:
        """Whether `name` waits for a snapshot; if so, one more of its messages counts as skipped."""
        if name not in self.waiting:
            return False
        self.waiting[name] += 1
        return True

    def damaged(self, name: str | None, problem: str, time_ns: int, where: str) -> Record | None:
        """A line that cannot be read, `name` the instrument its text still
        names (None: none): an error; with resync, a gap of that instrument
        (None when it already waits: one more skipped), else a note."""
        if name is None:
            if self.gaps == "error":
                raise FormatError(where, f"instrument unknown: {problem}")
            return Record(time_ns, note=f"unreadable line at {where}: {problem}")
        if self.skip(name):
            return None
        return self.gap(name, problem, time_ns, where)

    def resynced(self, name: str, time_ns: int) -> Iterator[Record]:
        """A good snapshot of `name`: the note of what its wait skipped, if it waited."""
        skipped = self.waiting.pop(name, None)
        if skipped is not None:
            yield Record(time_ns, note=resync_note(name, skipped))

    def finish(self, names: Iterable[str], time_ns: int) -> Iterator[Record]:
        """At the end of the file, a note for each of `names` (in that order) still waiting."""
        for name in names:
            skipped = self.waiting.get(name)
            if skipped is not None:
                yield Record(time_ns, note=no_snapshot_note(name, skipped))
