"""The book checksum carried by every snapshot and delta.

CRC-32 (zlib) over the top 10 asks ascending, then the top 10 bids
descending, each level as the decimal digits of its price ticks followed by
its size lots. With scales equal to the venue's decimals this is exactly
Kraken's book checksum (Kraken strips the '.' and leading zeros, which is what
the digits of an integer are).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from itertools import islice

CHECKSUM_DEPTH = 10


def book_checksum(asks: Iterable[tuple[int, int]], bids: Iterable[tuple[int, int]]) -> int:
    """`asks` best first (ascending), `bids` best first (descending); only the
    first CHECKSUM_DEPTH of each are used.

    `Book.checksum` gives the same value for a whole book without building
    the level lists (it keeps the text of its best levels between updates).

    >>> hex(book_checksum([(5005, 500)], [(5004, 1000)]))
    '0xb7dfcc2d'
    """
    parts = [f"{price}{size}" for price, size in islice(asks, CHECKSUM_DEPTH)]
    parts += [f"{price}{size}" for price, size in islice(bids, CHECKSUM_DEPTH)]
    return zlib.crc32("".join(parts).encode("ascii"))
