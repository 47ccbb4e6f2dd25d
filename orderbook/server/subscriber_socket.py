"""A subscriber's WebSocket after the upgrade: the connection's protocol,
a small frame reader in place of Sanic's HTTP protocol and a full WebSocket
implementation.

A subscriber sends a few small requests and must not cost more than a few
kilobytes while idle: no task, queue, lock or event per connection here.
Outbound frames are written by the hub (`Connection`); this object parses
what the client sends, answers pings and handles the closing handshake.
Keepalive pings for all subscribers come from one periodic duty
(`background.keepalive`); the server's stop closes them (`app.stop`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from websockets.protocol import State

from orderbook.wire.framing import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    close_frame,
    close_payload_error,
    control_frame,
)

log = logging.getLogger("orderbook.ws")

CLOSE_NORMAL = 1000
CLOSE_NO_STATUS = 1005  # recorded for an empty close frame; never sent
CLOSE_INVALID_DATA = 1007
CLOSE_INTERNAL = 1011
CLOSING_TIMEOUT = 5.0  # seconds to wait for the client's close frame


class SubscriberSocket:
    __slots__ = (
        "transport",
        "loop",
        "state",
        "_parser",
        "_on_message",
        "_before_close",
        "done",
        "ping_sent_at",
        "_abort_handle",
        "close_code",
        "_on_lost",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        max_message_bytes: int,
        on_message: Callable[[bytes | str], None],
        before_close: Callable[[], None],
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.transport = transport
        self.loop = loop
        self.state = State.OPEN
        self._parser = FrameParser(max_message_bytes)
        self._on_message = on_message
        self._before_close = before_close  # flushes what the hub queued, so the close frame comes last
        self.done: asyncio.Future[None] = loop.create_future()
        self.ping_sent_at: float | None = None  # unanswered keepalive ping
        self._abort_handle: asyncio.TimerHandle | None = None
        self.close_code: int | None = None
        self._on_lost = on_lost

    # Sanic's protocol looks for these ------------------------------------------------
    @property
    def ws_proto(self) -> SubscriberSocket:
        return self

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        error: FrameError | None = None
        try:
            messages = self._parser.feed(data)
        except FrameError as exc:
            # What came before the bad frame is handled first (a ping there is answered).
            messages, error = exc.messages, exc
        for opcode, payload in messages:
            if self.state is State.CLOSED:
                return
            if self.state is not State.OPEN:
                # We sent a close: data frames are ignored, the client's close ends it.
                if opcode == OP_CLOSE:
                    self._closed()
                continue
            if opcode == OP_BINARY:
                self._on_message(payload)
            elif opcode == OP_TEXT:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    self.fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text frame")
                    return
                self._on_message(text)
            elif opcode == OP_PING:
                self.transport.write(control_frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                self.ping_sent_at = None
            elif opcode == OP_CLOSE:
                self._close_received(payload)
        if error is not None:
            self.fail(error.code, error.reason)

    def _close_received(self, payload: bytes) -> None:
        """The client starts the closing handshake (RFC 6455 5.5.1, 7.4).

        A body of 1 byte, a code not valid on the wire (1005, 1006, 1015,
        1004, 1016-2999, under 1000, 5000 and up) fails with 1002; a reason
        that is not UTF-8 fails with 1007. Otherwise the close is echoed: the
        client's code without a reason, or an empty close for an empty one
        (no status code, and 1005 is never sent). Then the TCP connection ends.
        """
        problem = close_payload_error(payload)
        if problem is not None:
            self.fail(*problem)
            return
        code = int.from_bytes(payload[:2], "big") if payload else None
        self.close_code = code if code is not None else CLOSE_NO_STATUS  # as reported locally
        self._before_close()
        self.transport.write(close_frame(code) if code is not None else control_frame(OP_CLOSE))
        self.state = State.CLOSED
        self.transport.close()

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: BaseException | None) -> None:
        self.state = State.CLOSED
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        if not self.done.done():
            self.done.set_result(None)
        if self._on_lost is not None:
            self._on_lost()

    # The transport's flow control: the hub watches each buffer itself.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        return None

    def pause_writing(self) -> None:
        return None

    def resume_writing(self) -> None:
        return None

    def end_connection(self, code: int = 1001, reason: str = "") -> None:
        """Send a close frame now and drop the connection if the client does
        not answer it soon."""
        if self.state is not State.OPEN:
            return
        self.close_code = code
        self._before_close()
        self.state = State.CLOSING
        if not self.transport.is_closing():
            self.transport.write(close_frame(code, reason))
        self._abort_handle = self.loop.call_later(CLOSING_TIMEOUT, self.transport.abort)

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame, then the TCP
        connection ends at once; for a peer that broke the protocol or died."""
        if self.state is State.CLOSED:
            return
        if self.state is State.CLOSING:
            # Our close frame is already sent: no second one, just end it.
            self.state = State.CLOSED
            self.transport.close()
            return
        self.close_code = code
        self._before_close()
        self.state = State.CLOSED
        if not self.transport.is_closing():
            self.transport.write(close_frame(code, reason))
            self.transport.close()

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        self.end_connection(code, reason)
        await asyncio.shield(self.done)

    # Keepalive -------------------------------------------------------------------
    def ping(self, now: float) -> None:
        if self.state is State.OPEN and not self.transport.is_closing():
            self.ping_sent_at = now
            self.transport.write(control_frame(OP_PING))

    def _closed(self) -> None:
        # The client answered our close frame: the closing handshake is done.
        self.state = State.CLOSED
        self.transport.close()
