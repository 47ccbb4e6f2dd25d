"""Server-to-client WebSocket frames (RFC 6455 section 5.2), built once.

Server frames are unmasked, so the bytes of one frame are valid for every
client: a message is framed once and the same bytes are written to each
subscriber's transport.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2


def frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """A single final (FIN) unmasked frame carrying `payload`.

    >>> frame(b"hi")
    b'\\x82\\x02hi'
    """
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload
