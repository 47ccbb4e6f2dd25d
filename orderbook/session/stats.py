"""Counters of a subscriber session."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ServerError
from .states import ResyncReason


@dataclass(slots=True)
class SessionStats:
    """Counters since the session was created, across connections."""

    snapshots: int = 0  # snapshots applied
    deltas: int = 0  # deltas applied
    resumes: int = 0  # START_RESUMED acknowledgements honoured
    resyncs: int = 0  # in-band resynchronisations started
    gaps: int = 0  # prev_seq gaps, heartbeat seq mismatches
    checksum_failures: int = 0
    duplicates: int = 0
    epoch_changes: int = 0  # a delta or heartbeat from another epoch
    errors: int = 0  # Error messages received
    heartbeats: int = 0  # heartbeats received for live subscriptions
    malformed: int = 0  # server messages that could not be decoded
    last_error: ServerError | None = None  # the last Error message received
    resyncs_by_reason: dict[ResyncReason, int] = field(default_factory=dict)
