"""An L2 order book: price levels of integer ticks with integer lot sizes.

Bids are stored under the negated price so that both sides iterate best
first from index 0. Runtime complexity: updates O(log n) (SortedDict), top-N
views O(log n + N), best price O(1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

from sortedcontainers import SortedDict

from .checksum import CHECKSUM_DEPTH, book_checksum
from .errors import InvariantViolation

Level: TypeAlias = tuple[int, int]  # (price ticks, size lots)


class Book:
    """A two-sided book. Sizes are > 0; setting a size of 0 removes the level.

    >>> b = Book()
    >>> b.set_bid(100, 5), b.set_ask(101, 7)
    (0, 0)
    >>> b.best_bid(), b.best_ask()
    ((100, 5), (101, 7))
    >>> b.set_bid(100, 0)
    5
    >>> b.bids()
    []
    """

    __slots__ = ("_bids", "_asks")

    def __init__(self) -> None:
        self._bids: SortedDict = SortedDict()  # -price -> size
        self._asks: SortedDict = SortedDict()  # price -> size

    # Mutation -------------------------------------------------------------------
    def set_bid(self, price: int, size: int) -> int:
        """Set the bid level at `price` to `size` (0 removes); return the old size."""
        key = -price
        bids = self._bids
        if size:
            old = bids.get(key, 0)
            if old != size:
                bids[key] = size
            return old
        return bids.pop(key, 0)

    def set_ask(self, price: int, size: int) -> int:
        """Set the ask level at `price` to `size` (0 removes); return the old size."""
        asks = self._asks
        if size:
            old = asks.get(price, 0)
            if old != size:
                asks[price] = size
            return old
        return asks.pop(price, 0)

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book with the given levels (size-0 levels are skipped)."""
        self._bids = SortedDict({-p: s for p, s in bids if s})
        self._asks = SortedDict({p: s for p, s in asks if s})

    # Queries --------------------------------------------------------------------
    def bid_size(self, price: int) -> int:
        return self._bids.get(-price, 0)

    def ask_size(self, price: int) -> int:
        return self._asks.get(price, 0)

    def best_bid(self) -> Level | None:
        if not self._bids:
            return None
        k, v = self._bids.peekitem(0)
        return -k, v

    def best_ask(self) -> Level | None:
        if not self._asks:
            return None
        return self._asks.peekitem(0)

    def bids(self, depth: int | None = None) -> list[Level]:
        """Bid levels, best (highest) first; at most `depth` if given (0 = all)."""
        keys = self._bids.keys()
        if depth:
            keys = keys[:depth]
        get = self._bids.__getitem__
        return [(-k, get(k)) for k in keys]

    def asks(self, depth: int | None = None) -> list[Level]:
        """Ask levels, best (lowest) first; at most `depth` if given (0 = all)."""
        keys = self._asks.keys()
        if depth:
            keys = keys[:depth]
        get = self._asks.__getitem__
        return [(k, get(k)) for k in keys]

    def nth_bid_price(self, n: int) -> int | None:
        """Price of the n-th best bid (0 = best), or None if there are fewer."""
        return -self._bids.keys()[n] if n < len(self._bids) else None

    def nth_ask_price(self, n: int) -> int | None:
        """Price of the n-th best ask (0 = best), or None if there are fewer."""
        return self._asks.keys()[n] if n < len(self._asks) else None

    def bid_count(self) -> int:
        return len(self._bids)

    def ask_count(self) -> int:
        return len(self._asks)

    def __len__(self) -> int:
        return len(self._bids) + len(self._asks)

    def checksum(self) -> int:
        """CRC-32 of the top 10 levels (see `checksum.book_checksum`)."""
        return book_checksum(self.asks(CHECKSUM_DEPTH), self.bids(CHECKSUM_DEPTH))

    def crossed(self) -> bool:
        """True if the best bid is at or above the best ask (a venue can send
        such a book transiently; the book stores what it is told)."""
        bb, ba = self.best_bid(), self.best_ask()
        return bb is not None and ba is not None and bb[0] >= ba[0]

    def copy(self) -> Book:
        other = Book()
        other._bids = self._bids.copy()
        other._asks = self._asks.copy()
        return other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Book):
            return NotImplemented
        return dict(self._bids) == dict(other._bids) and dict(self._asks) == dict(other._asks)

    def __repr__(self) -> str:
        return f"Book(bids={self.bids(3)}..., asks={self.asks(3)}..., levels={len(self)})"

    def check(self, price_increment: int = 1, size_increment: int = 1) -> None:
        """Verify the invariants; raise `InvariantViolation` if one fails.

        Every size is a positive int on the size grid, every price an int on
        the price grid, and the sorted index agrees with the level map.
        """
        self._bids._check()
        self._asks._check()
        for side, levels in (("bid", self.bids()), ("ask", self.asks())):
            for price, size in levels:
                if type(price) is not int or type(size) is not int:
                    raise InvariantViolation(f"{side} {price}x{size}: not integers")
                if size <= 0:
                    raise InvariantViolation(f"{side} {price}: size {size} <= 0")
                if price % price_increment:
                    raise InvariantViolation(f"{side} {price}: off the price grid")
                if size % size_increment:
                    raise InvariantViolation(f"{side} {price}: size {size} off the size grid")
