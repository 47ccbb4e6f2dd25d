"""Progress of long work (`orderbook replay`, `verify`, `record`): a bar on
stderr with count, rate and, where the end is known, ETA; and the elapsed
time and rate for the summary line every run prints at its end.

The work itself is never slowed: it only counts (an attribute it keeps
anyway), and a separate thread reads that count a few times a second and
redraws the bar. No bar unless stderr is a terminal, or with --no-progress.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm  # type: ignore[import-untyped]  # (no type information)

# Redraws per second at most.
REFRESH_S = 0.25


def wanted(disabled: bool, stream: TextIO | None = None) -> bool:
    """Whether to draw a bar: not turned off, and `stream` (stderr) a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return not disabled and stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A bar driven by polling: `count()` says how far the work is,
    `total()` how far it will go (None while unknown), `note()` a few words
    shown after the bar. Use as a context manager around the work."""

    def __init__(
        self,
        what: str,
        unit: str,
        count: Callable[[], float],
        *,
        show: bool,
        total: Callable[[], float | None] = lambda: None,
        note: Callable[[], str] = lambda: "",
        rate: bool = True,
        stream: TextIO | None = None,
        refresh: float = REFRESH_S,
    ) -> None:
        self.what = what
        self.unit = unit
        self._count = count
        self._total = total
        self._note = note
        self._show = show
        # A bar in seconds (record --duration) has no rate of its own: the note says it.
        self._format = None if rate else "{l_bar}{bar}| {n:.1f}/{total:.0f}{unit} [{elapsed}<{remaining}{postfix}]"
        self._stream = stream if stream is not None else sys.stderr
        self._refresh = refresh
        self._bar: Any = None  # the tqdm bar, while shown
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = self._ended = 0.0

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        if self._show:
            self._bar = tqdm(
                desc=self.what,
                unit=" " + self.unit,  # "12 records", "3.4 records/s"
                total=self._total(),
                file=self._stream,
                mininterval=self._refresh,
                dynamic_ncols=True,
                leave=False,
                bar_format=self._format,
            )
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ended = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()

    @property
    def elapsed(self) -> float:
        """Seconds from start to end (or to now, while running)."""
        end = self._ended or time.monotonic()
        return max(end - self._started, 1e-9)

    def rate(self, done: float) -> str:
        """`done` per second over the elapsed time, for a summary line."""
        return f"{done / self.elapsed:,.0f} {self.unit}/s"

    def took(self, done: float) -> str:
        """`in 1.2 s (3,456 records/s)`: the end of a summary line."""
        return f"in {self.elapsed:.1f} s ({self.rate(done)})"

    def _run(self) -> None:
        bar = self._bar
        assert bar is not None
        while not self._stop.wait(self._refresh):
            self._draw(bar)
        self._draw(bar)

    def _draw(self, bar: Any) -> None:
        total = self._total()
        if total != bar.total:
            bar.total = total
        note = self._note()
        if note:
            bar.set_postfix_str(note, refresh=False)
        bar.update(self._count() - bar.n)


def counted_later(count: Callable[[], float]) -> Callable[[], float | None]:
    """Run `count()` in a background thread; the returned function gives its
    result once it is done (None until then, or if it failed)."""
    result: list[float] = []

    def run() -> None:
        try:
            result.append(count())
        except Exception:  # no total then: the bar still counts and shows the rate
            return

    threading.Thread(target=run, name="progress-total", daemon=True).start()
    return lambda: result[0] if result else None
