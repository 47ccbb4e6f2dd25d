"""Server-to-client WebSocket frames (RFC 6455 section 5.2), built once.

Server frames are unmasked, so the bytes of one frame are valid for every
client: a message is framed once and the same bytes are written to each
subscriber's transport. With permessage-deflate negotiated (RFC 7692), a
frame may carry its message compressed (RSV1 set); the parser of client
frames inflates such messages (`compression`).
"""

from __future__ import annotations

import struct
import zlib

from orderbook.core.errors import InvalidInput

from .compression import inflate

OP_TEXT = 0x1
OP_BINARY = 0x2


RSV1 = 0x40  # the frame's message is compressed (permessage-deflate)


def frame(payload: bytes, opcode: int = OP_BINARY, *, compressed: bool = False) -> bytes:
    """A single final (FIN) unmasked frame carrying `payload`; `compressed`:
    `payload` is a message compressed by `compression.deflate` (RSV1 set).

    >>> frame(b"hi")
    b'\\x82\\x02hi'
    """
    n = len(payload)
    first = (0x80 | RSV1 | opcode) if compressed else (0x80 | opcode)
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
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009


def close_code_valid(code: int) -> bool:
    """Whether `code` may appear in a close frame on the wire (RFC 6455 7.4):
    the registered codes 1000-1003 and 1007-1014, and 3000-4999 (libraries,
    applications). 1004 is reserved; 1005, 1006 and 1015 only ever report a
    close locally; the rest of 0-2999 is unassigned, 5000 and up undefined."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_payload_error(payload: bytes) -> tuple[int, str] | None:
    """What is wrong with a received close frame's body (RFC 6455 5.5.1,
    7.1.5, 7.4): (the close code to fail with, reason), or None if it is
    valid. A body is empty, or a valid code then a UTF-8 reason."""
    if not payload:
        return None
    if len(payload) == 1:
        return CLOSE_PROTOCOL_ERROR, "a close frame body must be empty or hold a 2-byte code"
    code = int.from_bytes(payload[:2], "big")
    if not close_code_valid(code):
        return CLOSE_PROTOCOL_ERROR, f"close code {code} is not valid on the wire"
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        return CLOSE_INVALID_DATA, "close reason is not valid UTF-8"
    return None


class FrameError(InvalidInput):
    """The peer broke RFC 6455; `code` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.messages: list[tuple[int, bytes]] = []  # completed before the violation


class FrameParser:
    """Incremental parser of client-to-server frames (masked, RFC 6455 5.2).

    `feed(data)` returns the complete messages as (opcode, payload): data
    messages reassembled from their fragments (OP_TEXT / OP_BINARY) and
    control frames (close, ping, pong) as they come. Raises FrameError on a
    protocol violation, a message over `max_size` bytes (1009) or one in more
    than `max_fragments` frames (1009).

    With `inflate` (permessage-deflate negotiated, without client context
    takeover), a data message whose first frame has RSV1 set is compressed:
    it comes out inflated, and one that would inflate past `max_size` bytes
    fails with 1009 without being inflated further (its compressed bytes
    count against `max_size` too). RSV1 on a continuation or control frame,
    RSV2 or RSV3, or RSV1 without `inflate`, are protocol errors (1002).

    `feed(data, max_frames)` parses at most `max_frames` frames (fragments
    and control frames each count one) and keeps the rest buffered for the
    next call (`feed(b"", n)`), so a caller can spread a burst over several
    event-loop turns; `frames` counts every frame parsed so far and
    `buffered` the bytes not parsed yet. Each frame costs O(1) plus its payload.
    """

    __slots__ = (
        "_buf",
        "_fragment_compressed",
        "_fragment_op",
        "_fragment_size",
        "_fragments",
        "_pos",
        "frames",
        "inflate",
        "max_fragments",
        "max_size",
    )

    def __init__(self, max_size: int, max_fragments: int = 0, *, inflate: bool = False) -> None:
        self.max_size = max_size
        self.max_fragments = max_fragments  # 0: no limit
        self.inflate = inflate
        self._fragment_compressed = False
        self._buf = bytearray()
        self._pos = 0  # parsed up to here; compacted lazily
        self._fragments: list[bytes] = []
        self._fragment_op = -1
        self._fragment_size = 0
        self.frames = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes, max_frames: int | None = None) -> list[tuple[int, bytes]]:
        """The messages completed by `data`. On a violation the FrameError
        carries, as `messages`, those completed before the bad frame (they
        are to be handled before failing the connection)."""
        out: list[tuple[int, bytes]] = []
        try:
            self._feed(data, out, max_frames)
        except FrameError as exc:
            exc.messages = out
            raise
        finally:
            pos = self._pos
            if pos and (pos >= len(self._buf) or pos > 65536):
                del self._buf[:pos]
                self._pos = 0
        return out

    def _feed(self, data: bytes, out: list[tuple[int, bytes]], max_frames: int | None) -> None:
        buf = self._buf
        if data:
            buf += data
        pos = self._pos
        n = len(buf)
        left = -1 if max_frames is None else max_frames
        while n - pos >= 2 and left:
            b0, b1 = buf[pos], buf[pos + 1]
            compressed = b0 & 0x70
            if compressed and (compressed != RSV1 or not self.inflate):
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
                if length >> 63:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "64-bit payload length with the top bit set")
                head = 10
            if opcode >= OP_CLOSE:
                if not fin or length > 125:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
                if opcode > OP_PONG:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif opcode not in (OP_CONTINUATION, 0x1, 0x2):
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if compressed and (opcode >= OP_CLOSE or opcode == OP_CONTINUATION):
                # RFC 7692 6: only a message's first frame says it is compressed.
                raise FrameError(CLOSE_PROTOCOL_ERROR, "RSV1 set on a control or continuation frame")
            if self._fragment_size + length > self.max_size and opcode < OP_CLOSE:
                raise FrameError(CLOSE_TOO_BIG, f"message over {self.max_size} bytes")
            end = pos + head + 4 + length
            if n < end:
                break
            mask = bytes(buf[pos + head : pos + head + 4])
            payload = _unmask(bytes(buf[pos + head + 4 : end]), mask)
            pos = self._pos = end
            self.frames += 1
            left -= 1
            if opcode >= OP_CLOSE:
                out.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if self._fragment_op < 0:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation frame with nothing to continue")
                if self.max_fragments and len(self._fragments) >= self.max_fragments:
                    raise FrameError(CLOSE_TOO_BIG, f"message in more than {self.max_fragments} fragments")
                self._fragments.append(payload)
                self._fragment_size += length
                if fin:
                    message = b"".join(self._fragments)
                    if self._fragment_compressed:
                        message = self._inflated(message)
                    out.append((self._fragment_op, message))
                    self._fragments, self._fragment_op, self._fragment_size = [], -1, 0
            else:
                if self._fragment_op >= 0:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "new message before the previous one ended")
                if fin:
                    out.append((opcode, self._inflated(payload) if compressed else payload))
                else:
                    self._fragments, self._fragment_op, self._fragment_size = [payload], opcode, length
                    self._fragment_compressed = bool(compressed)

    def _inflated(self, data: bytes) -> bytes:
        try:
            message = inflate(data, self.max_size)
        except zlib.error as exc:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"compressed message is not valid DEFLATE data ({exc})") from None
        if message is None:
            raise FrameError(CLOSE_TOO_BIG, f"message over {self.max_size} bytes once inflated")
        return message


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
    """A server close frame. Only codes valid on the wire are sent: never
    1005, 1006 or 1015 (RFC 6455 7.4.1). The reason is cut to fit the
    125-byte control frame on a character boundary, so it stays UTF-8."""
    if not close_code_valid(code):
        raise ValueError(f"close code {code} must not be sent")
    data = code.to_bytes(2, "big") + reason.encode()[:123].decode(errors="ignore").encode()
    return control_frame(OP_CLOSE, data)
