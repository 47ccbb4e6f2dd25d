"""permessage-deflate (RFC 7692) without context takeover, both ways.

Each message is compressed on its own, with nothing carried over from the
messages before it (`server_no_context_takeover`), so one compressed frame
is valid for every client that negotiated the extension: a server message
is compressed once, like it is framed once. Client messages are inflated
the same way (`client_no_context_takeover`), never past a size limit.
"""

from __future__ import annotations

import zlib

# The empty stored block a sync flush ends with; the sender strips it and
# the receiver appends it again (RFC 7692 7.2.1, 7.2.2).
TAIL = b"\x00\x00\xff\xff"
# Level 1: for protobuf the same size as zlib's default level 6 at about a
# quarter of the CPU on large messages; JSON's largest snapshots come out
# ~18% bigger (benchmarks/bench_compression.py, docs/benchmarks.md).
LEVEL = 1
# Messages under this many bytes go out uncompressed (RSV1 clear): they gain
# little or nothing (a 1-level protobuf delta, ~56 bytes, not at all) for
# the fixed ~5 µs of setting up a zlib stream (docs/benchmarks.md).
MIN_SIZE = 128


def deflate(payload: bytes) -> bytes:
    """`payload` as one raw DEFLATE stream ending in a sync flush, the
    flush's empty block stripped: the payload of a compressed frame.

    >>> inflate(deflate(b"abc" * 100), 1000) == b"abc" * 100
    True
    """
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


def compress(payload: bytes) -> bytes | None:
    """`deflate(payload)`, or None when compression does not pay: `payload`
    is under MIN_SIZE bytes, or its compressed form is no smaller. The
    message then goes out uncompressed, which is as valid on a connection
    that negotiated the extension (RFC 7692 6.1)."""
    if len(payload) < MIN_SIZE:
        return None
    data = deflate(payload)
    return data if len(data) < len(payload) else None


def inflate(data: bytes, max_size: int) -> bytes | None:
    """The message compressed in `data` (a frame payload as `deflate` makes
    it), or None if it is more than `max_size` bytes: inflating stops there,
    so a small payload that would inflate to gigabytes costs at most
    `max_size` bytes of work. Raises zlib.error on data that is not DEFLATE."""
    decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
    out = decompressor.decompress(data + TAIL, max_size + 1)
    if len(out) > max_size:
        return None
    return out
