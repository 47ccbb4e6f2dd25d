"""Waiting for books: conditions over the session (`synced`, `reached`) and
the waiters that are checked again whenever a book changes.

A waiter's condition is re-evaluated on `notify`, in the task that changed a
book, so no wait polls; a condition may raise to fail its wait (a symbol
refused for good). Once `end` is called every wait, present and future, fails
with the first reason given, until `reopen`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from orderbook.session.session import SubscriberSession

Condition = Callable[[], bool]


@dataclass(slots=True)
class _Waiter:
    ready: Condition  # may raise to fail the wait
    future: asyncio.Future[None]


class Waiters:
    """Tasks waiting for conditions on the books."""

    __slots__ = ("_ended", "_waiting")

    def __init__(self) -> None:
        self._waiting: list[_Waiter] = []
        self._ended: BaseException | None = None

    async def wait(self, ready: Condition, timeout: float | None) -> None:
        """Return once `ready()` is true; raise what it raises, TimeoutError
        after `timeout` seconds, or the reason given to `end`."""
        if ready():
            return
        if self._ended is not None:
            raise self._ended
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(ready, future)
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)

    def notify(self) -> None:
        """Something changed: finish the waits whose condition now holds."""
        for w in tuple(self._waiting):
            if w.future.done():
                continue
            try:
                if w.ready():
                    w.future.set_result(None)
            except Exception as exc:
                w.future.set_exception(exc)

    def end(self, reason: BaseException) -> None:
        """Fail every wait with `reason`, and every later one too, until
        `reopen`; the first reason given stays."""
        if self._ended is None:
            self._ended = reason
        reason = self._ended
        for w in self._waiting:
            if not w.future.done():
                w.future.set_exception(reason)
        self._waiting.clear()

    def reopen(self) -> None:
        self._ended = None


def synced(session: SubscriberSession, symbols: Iterable[str]) -> Condition:
    """Every one of `symbols` has a live, verified book; raises the refusal
    of a symbol the server rejected for good."""
    wanted = tuple(symbols)

    def ready() -> bool:
        for s in wanted:
            if s in session.failed:
                raise session.failed[s]
        return all(session.is_live(s) for s in wanted)

    return ready


def reached(session: SubscriberSession, symbol: str, seq: int, epoch: int | None = None) -> Condition:
    """`symbol`'s live book is at `seq` or later (in `epoch`, if given)."""

    def ready() -> bool:
        if symbol in session.failed:
            raise session.failed[symbol]
        if not session.is_live(symbol):
            return False
        f = session.books[symbol]
        return f.seq is not None and f.seq >= seq and (epoch is None or f.epoch == epoch)

    return ready
