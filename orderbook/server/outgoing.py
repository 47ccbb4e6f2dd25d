"""A server message encoded at most once per encoding, framed once, and
compressed at most once.

Fan-out writes the same frame bytes to every subscriber that negotiated the
same encoding and the same compression: a frame's kind (`frame_kind`) is
its encoding, with or without permessage-deflate, and each kind is built
only if some subscriber wants it, then kept. Compression has no context
takeover, so one compressed frame is valid for every client that
negotiated it; a message too small to gain from it goes out uncompressed
to them too (`compression.compress`).
"""

from __future__ import annotations

from orderbook.wire import compression
from orderbook.wire.codec import Encoding, ServerMessage, to_json
from orderbook.wire.framing import OP_BINARY, OP_TEXT, frame

# The kinds of frame one message is sent as: index into `Outgoing.frames`.
PROTOBUF = 0
JSON = 1
DEFLATE = 2  # added to either: the same encoding, compressed
KINDS = 4


def frame_kind(encoding: Encoding, deflate: bool = False) -> int:
    return (JSON if encoding is Encoding.JSON else PROTOBUF) + (DEFLATE if deflate else 0)


class Outgoing:
    __slots__ = ("_json", "_msg", "frames", "payload")

    def __init__(self, msg: ServerMessage | None = None, payload: bytes | None = None) -> None:
        if payload is None:
            assert msg is not None
            payload = msg.SerializeToString()
        self._msg = msg
        self.payload = payload
        self._json: bytes | None = None  # the JSON text, UTF-8
        # Each kind's frame once built; the fan-out reads it here
        # (`frames[kind] or build(kind)`), so sharing costs one index.
        self.frames: list[bytes | None] = [None] * KINDS

    def frame(self, encoding: Encoding, deflate: bool = False) -> bytes:
        kind = frame_kind(encoding, deflate)
        return self.frames[kind] or self.build(kind)

    def build(self, kind: int) -> bytes:
        """The frame of `kind`, built and kept (at most once per kind)."""
        f = self.frames[kind]
        if f is not None:
            return f
        if kind == PROTOBUF:
            f = frame(self.payload, OP_BINARY)
        elif kind == JSON:
            f = frame(self._json_text(), OP_TEXT)
        else:
            data = self.payload if kind == PROTOBUF + DEFLATE else self._json_text()
            deflated = compression.compress(data)
            if deflated is None:
                f = self.build(kind - DEFLATE)  # not worth it: the plain frame, shared too
            else:
                f = frame(deflated, OP_BINARY if kind == PROTOBUF + DEFLATE else OP_TEXT, compressed=True)
        self.frames[kind] = f
        return f

    def _json_text(self) -> bytes:
        text = self._json
        if text is None:
            msg = self._msg
            if msg is None:
                msg = self._msg = ServerMessage.FromString(self.payload)
            text = self._json = to_json(msg).encode()
        return text


class Joined:
    """A group's waiting messages as one write per kind: each kind's frames
    joined once per flush, only if some member takes that kind."""

    __slots__ = ("frames", "msgs")

    def __init__(self, msgs: list[Outgoing]) -> None:
        self.msgs = msgs
        # Each kind's joined bytes once built (`frames[kind] or get(kind)`).
        self.frames: list[bytes | None] = [None] * KINDS

    def get(self, kind: int) -> bytes:
        data = self.frames[kind]
        if data is None:
            msgs = self.msgs
            if len(msgs) == 1:
                data = msgs[0].frames[kind] or msgs[0].build(kind)
            else:
                data = b"".join([m.frames[kind] or m.build(kind) for m in msgs])
            self.frames[kind] = data
        return data
