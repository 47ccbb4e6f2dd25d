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


# ----------------------------------------------------------------------------- client frames

OP_CONTINUATION = 0x0
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009


class FrameError(Exception):
    """The peer broke RFC 6455; `code` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameParser:
    """Incremental parser of client-to-server frames (masked, RFC 6455 5.2).

    `feed(data)` returns the complete messages as (opcode, payload): data
    messages reassembled from their fragments (OP_TEXT / OP_BINARY) and
    control frames (close, ping, pong) as they come. Raises FrameError on a
    protocol violation or a message over `max_size` bytes.
    """

    __slots__ = ("max_size", "_buf", "_fragments", "_fragment_op", "_fragment_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_op = -1
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if opcode >= OP_CLOSE:
                if not fin or length > 125:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
                if opcode > OP_PONG:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif opcode not in (OP_CONTINUATION, 0x1, 0x2):
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if self._fragment_size + length > self.max_size and opcode < OP_CLOSE:
                raise FrameError(CLOSE_TOO_BIG, f"message over {self.max_size} bytes")
            end = pos + head + 4 + length
            if n < end:
                break
            mask = bytes(buf[pos + head : pos + head + 4])
            payload = _unmask(bytes(buf[pos + head + 4 : end]), mask)
            pos = end
            if opcode >= OP_CLOSE:
                out.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if self._fragment_op < 0:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation frame with nothing to continue")
                self._fragments.append(payload)
                self._fragment_size += length
                if fin:
                    out.append((self._fragment_op, b"".join(self._fragments)))
                    self._fragments, self._fragment_op, self._fragment_size = [], -1, 0
            else:
                if self._fragment_op >= 0:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "new message before the previous one ended")
                if fin:
                    out.append((opcode, payload))
                else:
                    self._fragments, self._fragment_op, self._fragment_size = [payload], opcode, length
        if pos:
            del buf[:pos]
        return out


def _unmask(payload: bytes, mask: bytes) -> bytes:
    # XOR with the 4-byte key repeated: one big-int operation, not a byte loop.
    n = len(payload)
    if not n:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """An unmasked server control frame (close, ping, pong)."""
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    data = code.to_bytes(2, "big") + reason.encode()[:123]
    return control_frame(OP_CLOSE, data)
