"""A server message encoded at most once per encoding and framed once.

Fan-out writes the same frame bytes to every subscriber that negotiated the
same encoding; the JSON form is only built if some subscriber wants it.
"""

from __future__ import annotations

from orderbook.wire.codec import Encoding, ServerMessage, to_json
from orderbook.wire.framing import OP_BINARY, OP_TEXT, frame


class Outgoing:
    __slots__ = ("_json_frame", "_msg", "_proto_frame", "payload")

    def __init__(self, msg: ServerMessage | None = None, payload: bytes | None = None) -> None:
        if payload is None:
            assert msg is not None
            payload = msg.SerializeToString()
        self._msg = msg
        self.payload = payload
        self._proto_frame: bytes | None = None
        self._json_frame: bytes | None = None

    def frame(self, encoding: Encoding) -> bytes:
        if encoding is Encoding.PROTOBUF:
            f = self._proto_frame
            if f is None:
                f = self._proto_frame = frame(self.payload, OP_BINARY)
            return f
        f = self._json_frame
        if f is None:
            msg = self._msg
            if msg is None:
                msg = self._msg = ServerMessage.FromString(self.payload)
            f = self._json_frame = frame(to_json(msg).encode(), OP_TEXT)
        return f
