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

CHECKSUM_DEPTH = 10


def book_checksum(asks: Iterable[tuple[int, int]], bids: Iterable[tuple[int, int]]) -> int:
    """`asks` best first (ascending), `bids` best first (descending); only the
    first CHECKSUM_DEPTH of each are used.

    >>> hex(book_checksum([(5005, 500)], [(5004, 1000)]))
    '0xb7dfcc2d'
    """
    parts: list[str] = []
    for n, (price, size) in enumerate(asks):
        if n == CHECKSUM_DEPTH:
            break
        parts.append(f"{price}{size}")
    for n, (price, size) in enumerate(bids):
        if n == CHECKSUM_DEPTH:
            break
        parts.append(f"{price}{size}")
    return zlib.crc32("".join(parts).encode("ascii"))
