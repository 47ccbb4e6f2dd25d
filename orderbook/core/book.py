"""An L2 order book: price levels of integer ticks with integer lot sizes.

Bids are stored under the negated price so that both sides iterate best
first from index 0. Runtime complexity: a size change O(1) (dict), a level
that appears or goes O(log n) (SortedList; near the top of the book, a
plain list of at most `_Keys.HEAD_MAX` keys), top-N views O(log n + N),
best price O(1).

The book keeps what its checksum needs between updates: per side, the keys
and the text of its best `CHECKSUM_DEPTH` levels, exact after every change.
A change below them leaves them as they are; a change among them formats
that one level (and, when one of them goes, the level that moves up), so
`checksum()` only joins ten pieces per side that changed and runs CRC-32.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice, pairwise
from typing import TypeAlias

from sortedcontainers import SortedList

from .checksum import CHECKSUM_DEPTH, book_checksum
from .errors import InvariantViolation

Level: TypeAlias = tuple[int, int]  # (price ticks, size lots)
# A side's update: levels in, the effective changes out (`Book.apply_bids`).
SideUpdate: TypeAlias = Callable[[tuple[Level, ...]], tuple[Level, ...]]


class _Keys:
    """The keys of one side, sorted: the part of `SortedList` the book uses
    (`add`, `remove`, indexing, iteration), with the best keys apart.

    Most levels that appear or go are near the top of a book. `head` is a
    plain sorted list of the best keys (at most `HEAD_MAX`), where such a
    change is one insort or delete in C, against two Python calls of
    `SortedList`; the other keys are in `rest`, a `SortedList`. Every key of
    `head` is below every key of `rest`, and `head` holds at least
    `CHECKSUM_DEPTH` keys while `rest` holds any, so the best
    `CHECKSUM_DEPTH` keys are always in `head`.
    """

    __slots__ = ("head", "rest")

    # The gap between the two keeps a level that comes and goes at the
    # boundary from moving keys between `head` and `rest` every time.
    HEAD_MAX = 128  # past this, the last key of `head` moves to `rest`
    HEAD_REFILL = 64  # `head` below CHECKSUM_DEPTH takes keys from `rest` up to this

    def __init__(self, keys: Iterable[int] = ()) -> None:
        ordered = sorted(keys)
        self.head: list[int] = ordered[: self.HEAD_REFILL]
        self.rest = SortedList(ordered[self.HEAD_REFILL :])

    def copy(self) -> _Keys:
        other = _Keys()
        other.head = self.head.copy()
        other.rest = self.rest.copy()
        return other

    def add(self, key: int) -> None:
        """Add a key that is not there."""
        head = self.head
        if self.rest and key > head[-1]:
            self.rest.add(key)
            return
        insort(head, key)
        if len(head) > self.HEAD_MAX:
            self.rest.add(head.pop())

    def remove(self, key: int) -> None:
        """Remove a key that is there."""
        head = self.head
        if key > head[-1]:
            self.rest.remove(key)
            return
        del head[bisect_left(head, key)]
        rest = self.rest
        if len(head) < CHECKSUM_DEPTH and rest:
            n = self.HEAD_REFILL - len(head)
            head += rest[:n]
            del rest[:n]

    def __len__(self) -> int:
        return len(self.head) + len(self.rest)

    def __iter__(self) -> Iterator[int]:
        return chain(self.head, self.rest)

    def __getitem__(self, i: int) -> int:
        """The i-th key; negative counts from the end, as in a list."""
        head = self.head
        if 0 <= i < len(head):
            return head[i]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("index out of range")
        return head[i] if i < len(head) else self.rest[i - len(head)]

    def check(self) -> None:
        """Raise `InvariantViolation` unless the keys are sorted and split as described."""
        self.rest._check()
        head, rest = self.head, self.rest
        if any(a >= b for a, b in pairwise(head)) or len(head) > self.HEAD_MAX:
            raise InvariantViolation("sorted index: head not sorted or too long")
        if rest and (len(head) < CHECKSUM_DEPTH or head[-1] >= rest[0]):
            raise InvariantViolation("sorted index: head and rest overlap, or head too short")


class _Side:
    """The levels of one side, best first, and the checksum text of the best ones.

    `sizes` maps each level's key to its size, `keys` holds the same keys
    sorted (best first, `_Keys`): a size change is a plain dict store, and
    only a level that appears or goes touches the sorted index.

    `top` holds the keys of the best `CHECKSUM_DEPTH` levels, best first,
    and `parts` their checksum pieces (`b"{price}{size}"`) at the same
    places; both are kept exact on every change, which costs a bisect in a
    list of ten for a change among them and nothing for one below them.
    `edge` is the last of them (None: the side has fewer levels, so every
    level is among them). `text` is the joined pieces, None once one of
    them changed; `Book.checksum` joins them again.
    """

    __slots__ = ("edge", "keys", "negate", "parts", "sizes", "text", "top")

    def __init__(self, negate: bool, sizes: dict[int, int] | None = None) -> None:
        self.sizes: dict[int, int] = {} if sizes is None else sizes  # key -> size
        self.keys = _Keys(self.sizes)
        self.negate = negate  # bids: key = -price
        self.top: list[int] = list(islice(self.keys, CHECKSUM_DEPTH))
        size_of = self.sizes.__getitem__
        self.parts: list[bytes] = [b"%d%d" % (-k if negate else k, size_of(k)) for k in self.top]
        self.edge: int | None = self.top[-1] if len(self.top) == CHECKSUM_DEPTH else None
        self.text: bytes | None = None

    def copy(self) -> _Side:
        other = _Side(self.negate)
        other.sizes = self.sizes.copy()
        other.keys = self.keys.copy()
        other.top = self.top.copy()
        other.parts = self.parts.copy()  # the pieces are immutable bytes
        other.edge, other.text = self.edge, self.text
        return other

    def set(self, price: int, size: int) -> int:
        """One level (size 0 removes); return the old size."""
        sizes = self.sizes
        key = -price if self.negate else price
        old = sizes.get(key, 0)
        if old == size:
            return old  # same size, or removing a level that is not there
        if size:
            sizes[key] = size
            if not old:
                self.keys.add(key)
        else:
            del sizes[key]
            self.keys.remove(key)
        edge = self.edge
        if edge is None or key <= edge:
            self.retop(key, price, old, size)
        return old

    def retop(self, key: int, price: int, old: int, size: int) -> None:
        """Keep `top`, `parts` and `edge` exact after the level at `key`
        (at or above `edge`, already in `sizes` and `keys`) went from `old`
        to `size`."""
        top, parts = self.top, self.parts
        self.text = None
        i = bisect_left(top, key)
        if old and size:  # a size change among the best
            parts[i] = b"%d%d" % (price, size)
        elif size:  # a new level among the best: the last one may drop out
            top.insert(i, key)
            parts.insert(i, b"%d%d" % (price, size))
            if len(top) > CHECKSUM_DEPTH:
                del top[CHECKSUM_DEPTH:], parts[CHECKSUM_DEPTH:]
            if len(top) == CHECKSUM_DEPTH:
                self.edge = top[-1]
        else:  # one of the best went: the next one below moves up
            del top[i], parts[i]
            head = self.keys.head  # holds the best CHECKSUM_DEPTH keys, if there are as many
            if len(head) >= CHECKSUM_DEPTH:
                k = head[CHECKSUM_DEPTH - 1]
                top.append(k)
                parts.append(b"%d%d" % (-k if self.negate else k, self.sizes[k]))
                self.edge = k
            else:
                self.edge = None

    def update(self, levels: tuple[Level, ...]) -> tuple[Level, ...]:
        """Apply (price, size) levels in order; return the levels that changed
        the side, once per price, each with its final size.

        The hot path of ingest: one pass with no Python call per level
        except a sorted-index insert or removal when a level appears or goes,
        and `retop` for a level among the best.
        """
        n = len(levels)
        sizes = self.sizes
        if n == 1:
            # One level, the most common update: `set` inlined.
            price, size = levels[0]
            key = -price if self.negate else price
            old = sizes.get(key, 0)
            if old == size:
                return ()
            if size:
                sizes[key] = size
                if not old:
                    self.keys.add(key)
            else:
                del sizes[key]
                self.keys.remove(key)
            edge = self.edge
            if edge is None or key <= edge:
                if old and size:  # a size change among the best: `retop` inlined
                    self.parts[bisect_left(self.top, key)] = b"%d%d" % (price, size)
                    self.text = None
                else:
                    self.retop(key, price, old, size)
            return levels
        if n > 1:
            final = dict(levels)
            if len(final) < n:
                # A price more than once: the last size wins and is compared
                # with the size before the update; it keeps the place of the
                # price's first appearance.
                levels = tuple(final.items())
                n = len(levels)
        get = sizes.get
        add = self.keys.add
        remove = self.keys.remove
        retop = self.retop
        negate = self.negate
        changed = []
        for level in levels:
            price, size = level
            key = -price if negate else price
            old = get(key, 0)
            if old == size:
                continue  # same size, or removing a level that is not there
            if size:
                sizes[key] = size
                if not old:
                    add(key)
            else:
                del sizes[key]
                remove(key)
            changed.append(level)
            edge = self.edge  # `retop` may move it
            if edge is None or key <= edge:
                retop(key, price, old, size)
        return levels if len(changed) == n else tuple(changed)


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

    __slots__ = ("_ask", "_ask_crc", "_bid", "_checksum")

    def __init__(self) -> None:
        self._bid = _Side(negate=True)
        self._ask = _Side(negate=False)
        # CRC-32 of the asks' text, and of both texts: valid while the texts
        # they were computed from are kept (not None).
        self._ask_crc = 0
        self._checksum = 0

    # Mutation -------------------------------------------------------------------
    def set_bid(self, price: int, size: int) -> int:
        """Set the bid level at `price` to `size` (0 removes); return the old size."""
        return self._bid.set(price, size)

    def set_ask(self, price: int, size: int) -> int:
        """Set the ask level at `price` to `size` (0 removes); return the old size."""
        return self._ask.set(price, size)

    def apply_bids(self, levels: Iterable[Level]) -> tuple[Level, ...]:
        """Set bid levels in order (last write wins per price); return the
        effective changes: each price whose size differs from before the
        call, once, with its final size, in order of first appearance."""
        return self._bid.update(levels if isinstance(levels, tuple) else tuple(levels))

    def apply_asks(self, levels: Iterable[Level]) -> tuple[Level, ...]:
        """As `apply_bids`, for asks."""
        return self._ask.update(levels if isinstance(levels, tuple) else tuple(levels))

    def apply(self, bids: tuple[Level, ...], asks: tuple[Level, ...]) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """`apply_bids` then `apply_asks` in one call (the ingest path: one
        call fewer per update); an empty side is not looked at."""
        return (self._bid.update(bids) if bids else (), self._ask.update(asks) if asks else ())

    def updaters(self) -> tuple[SideUpdate, SideUpdate]:
        """`apply_bids` and `apply_asks` for tuples, without their call in
        between: for a loop over many updates. Valid until `clear` or
        `replace` (which give the book new sides)."""
        return self._bid.update, self._ask.update

    def clear(self) -> None:
        self._bid = _Side(negate=True)
        self._ask = _Side(negate=False)

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book with the given levels (size-0 levels are skipped)."""
        self._bid = _Side(True, {-p: s for p, s in bids if s})
        self._ask = _Side(False, {p: s for p, s in asks if s})

    # Queries --------------------------------------------------------------------
    def bid_size(self, price: int) -> int:
        return self._bid.sizes.get(-price, 0)

    def ask_size(self, price: int) -> int:
        return self._ask.sizes.get(price, 0)

    def best_bid(self) -> Level | None:
        side = self._bid
        if not side.sizes:
            return None
        k = side.keys.head[0]
        return -k, side.sizes[k]

    def best_ask(self) -> Level | None:
        side = self._ask
        if not side.sizes:
            return None
        k = side.keys.head[0]
        return k, side.sizes[k]

    def bids(self, depth: int | None = None) -> list[Level]:
        """Bid levels, best (highest) first; at most `depth` if given (0 = all)."""
        side = self._bid
        get = side.sizes.__getitem__
        return [(-k, get(k)) for k in _first(side.keys, depth)]

    def asks(self, depth: int | None = None) -> list[Level]:
        """Ask levels, best (lowest) first; at most `depth` if given (0 = all)."""
        side = self._ask
        get = side.sizes.__getitem__
        return [(k, get(k)) for k in _first(side.keys, depth)]

    def nth_bid_price(self, n: int) -> int | None:
        """Price of the n-th best bid (0 = best), or None if there are fewer."""
        keys = self._bid.keys
        return -keys[n] if n < len(keys) else None

    def nth_ask_price(self, n: int) -> int | None:
        """Price of the n-th best ask (0 = best), or None if there are fewer."""
        keys = self._ask.keys
        return keys[n] if n < len(keys) else None

    def bid_count(self) -> int:
        return len(self._bid.sizes)

    def ask_count(self) -> int:
        return len(self._ask.sizes)

    def __len__(self) -> int:
        return len(self._bid.sizes) + len(self._ask.sizes)

    def checksum(self) -> int:
        """CRC-32 of the top 10 levels (see `checksum.book_checksum`).

        Equal to `book_checksum(self.asks(10), self.bids(10))`; computed again
        only when a change reached the top of a side since the last call.
        """
        ask, bid = self._ask, self._bid
        bid_text = bid.text
        if ask.text is None or bid_text is None:
            # Asks first, then bids: the CRC of the bids' text continues the
            # CRC of the asks' text, which is kept for updates of bids only.
            if ask.text is None:
                ask_text = ask.text = b"".join(ask.parts)
                self._ask_crc = zlib.crc32(ask_text)
            if bid_text is None:
                bid_text = bid.text = b"".join(bid.parts)
            self._checksum = zlib.crc32(bid_text, self._ask_crc)
        return self._checksum

    def crossed(self) -> bool:
        """True if the best bid is at or above the best ask (a venue can send
        such a book transiently; the book stores what it is told)."""
        bb, ba = self.best_bid(), self.best_ask()
        return bb is not None and ba is not None and bb[0] >= ba[0]

    def copy(self) -> Book:
        other = Book()
        other._bid = self._bid.copy()
        other._ask = self._ask.copy()
        other._ask_crc, other._checksum = self._ask_crc, self._checksum
        return other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Book):
            return NotImplemented
        return self._bid.sizes == other._bid.sizes and self._ask.sizes == other._ask.sizes

    def __repr__(self) -> str:
        return f"Book(bids={self.bids(3)}..., asks={self.asks(3)}..., levels={len(self)})"

    def check(self, price_increment: int = 1, size_increment: int = 1) -> None:
        """Verify the invariants; raise `InvariantViolation` if one fails.

        Every size is a positive int on the size grid, every price an int on
        the price grid, the sorted index holds exactly the keys of the level
        map, and the checksum kept between updates equals one computed from
        scratch.
        """
        for name, side in (("bid", self._bid), ("ask", self._ask)):
            side.keys.check()
            if len(side.keys) != len(side.sizes) or any(k not in side.sizes for k in side.keys):
                raise InvariantViolation(f"{name} side: sorted index and levels disagree")
        for name, levels in (("bid", self.bids()), ("ask", self.asks())):
            for price, size in levels:
                if type(price) is not int or type(size) is not int:
                    raise InvariantViolation(f"{name} {price}x{size}: not integers")
                if size <= 0:
                    raise InvariantViolation(f"{name} {price}: size {size} <= 0")
                if price % price_increment:
                    raise InvariantViolation(f"{name} {price}: off the price grid")
                if size % size_increment:
                    raise InvariantViolation(f"{name} {price}: size {size} off the size grid")
        for name, side in (("bid", self._bid), ("ask", self._ask)):
            best = list(islice(side.keys, CHECKSUM_DEPTH))
            edge = best[-1] if len(best) == CHECKSUM_DEPTH else None
            if side.top != best or side.edge != edge:
                raise InvariantViolation(f"{name} side: kept top levels are not the best levels")
            pieces = [b"%d%d" % (-k if side.negate else k, side.sizes[k]) for k in best]
            if side.parts != pieces:
                raise InvariantViolation(f"{name} side: kept checksum pieces are not those of the best levels")
            if side.text is not None and side.text != b"".join(pieces):
                raise InvariantViolation(f"{name} side: kept checksum text is stale")
        fresh = book_checksum(self.asks(CHECKSUM_DEPTH), self.bids(CHECKSUM_DEPTH))
        if self.checksum() != fresh:
            raise InvariantViolation(f"kept checksum {self.checksum()} != {fresh} computed afresh")


def _first(keys: _Keys, depth: int | None) -> Iterable[int]:
    """`keys` in order, the first `depth` only if given (0 = all)."""
    if not depth:
        return keys
    if depth > 0:
        return islice(keys, depth)
    return list(keys)[:depth]  # negative: all but the last, as a slice does
