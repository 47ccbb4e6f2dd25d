"""The resume rules: given what a client holds, resume it or send a snapshot.

no resume point                    -> snapshot (NEW)
resume epoch != current epoch      -> snapshot (STALE_EPOCH)
depth-limited subscription         -> snapshot (UNSUPPORTED)
resume seq > current seq           -> snapshot (AHEAD)
history holds every change after it -> resumed with exactly those changes
otherwise                          -> snapshot (HISTORY_EXHAUSTED)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

from .history import History

T = TypeVar("T")


class SnapshotReason(enum.Enum):
    NEW = 1
    STALE_EPOCH = 2
    HISTORY_EXHAUSTED = 3
    AHEAD = 4
    UNSUPPORTED = 5


@dataclass(frozen=True, slots=True)
class ResumePoint:
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class Decision(Generic[T]):
    """`resumed` with `replay` (the changes to send, oldest first), or a
    snapshot for `reason`."""

    resumed: bool
    replay: tuple[T, ...] = ()
    reason: SnapshotReason | None = None


def decide(
    epoch: int,
    seq: int,
    history: History[T],
    resume: ResumePoint | None,
    depth: int = 0,
) -> Decision[T]:
    if resume is None:
        return Decision(False, reason=SnapshotReason.NEW)
    if resume.epoch != epoch:
        return Decision(False, reason=SnapshotReason.STALE_EPOCH)
    if depth:
        return Decision(False, reason=SnapshotReason.UNSUPPORTED)
    if resume.seq > seq:
        return Decision(False, reason=SnapshotReason.AHEAD)
    replay = history.since(resume.seq)
    if replay is None:
        return Decision(False, reason=SnapshotReason.HISTORY_EXHAUSTED)
    return Decision(True, replay=tuple(replay))
