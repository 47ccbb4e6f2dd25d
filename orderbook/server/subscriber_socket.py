"""A subscriber's WebSocket after the upgrade: the connection's protocol,
a small frame reader in place of Sanic's HTTP protocol and a full WebSocket
implementation.

A subscriber sends a few small requests and must not cost more than a few
kilobytes while idle: no task, queue, lock or event per connection here.
Outbound frames are written by the hub (`Connection`); this object parses
what the client sends, answers pings and handles the closing handshake.
Keepalive pings for all subscribers come from one periodic duty
(`background.keepalive`); the server's stop closes them (`app.stop`).

With permessage-deflate negotiated (`NoContextTakeoverDeflate`, at the
upgrade), the client's compressed messages are inflated by the frame reader.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence

from websockets.exceptions import NegotiationError
from websockets.extensions import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.protocol import State
from websockets.typing import ExtensionParameter

from orderbook.core.ratelimit import TokenBucket
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
# Fair scheduling of one connection's input: per event-loop turn at most
# SLICE_FRAMES frames (fragments and control frames count) and SLICE_SECONDS.
SLICE_FRAMES = 64
SLICE_SECONDS = 0.002
STALL_POLL = 0.05  # seconds between checks while the output is over budget
READ_AHEAD = 64 * 1024  # unparsed bytes kept beyond the largest message before reading stops


class NoContextTakeoverDeflate(ServerPerMessageDeflateFactory):
    """The permessage-deflate terms of /ws (RFC 7692 7.1), negotiated by
    websockets' factory: `server_no_context_takeover` and
    `client_no_context_takeover` in every agreement, whatever the offer says.

    Server messages are compressed once for every subscriber with a 32 KiB
    window (`orderbook.wire.compression`), so an offer that asks for a
    smaller server window cannot be honoured: it is declined, and the
    client's next offer, if any, is considered; with none left the
    connection opens without the extension. Any client window is accepted:
    inflating with a 32 KiB window reads a stream made with a smaller one.
    """

    def __init__(self) -> None:
        super().__init__(server_no_context_takeover=True, client_no_context_takeover=True)

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        for name, value in params:
            if name == "server_max_window_bits" and value != "15":
                raise NegotiationError(f"server_max_window_bits={value} not supported: frames use a 15-bit window")
        return super().process_request_params(params, accepted_extensions)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


class SubscriberSocket(asyncio.Protocol):
    __slots__ = (
        "_abort_handle",
        "_before_close",
        "_bucket",
        "_gate",
        "_on_lost",
        "_on_message",
        "_parser",
        "_paused",
        "_ping_payload",
        "_read_high",
        "_send_frame",
        "_work_handle",
        "close_code",
        "done",
        "loop",
        "ping_sent_at",
        "state",
        "transport",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        max_message_bytes: int,
        on_message: Callable[[bytes | str], None],
        before_close: Callable[[], None],
        on_lost: Callable[[], None] | None = None,
        *,
        gate: Callable[[float], bool] | None = None,
        send_frame: Callable[[bytes], None] | None = None,
        rate: float = 0.0,
        burst: float = 0.0,
        max_fragments: int = 0,
        deflate: bool = False,
    ) -> None:
        self.transport = transport
        self.loop = loop
        self.state = State.OPEN
        # deflate: permessage-deflate was negotiated; compressed messages are inflated.
        self._parser = FrameParser(max_message_bytes, max_fragments, inflate=deflate)
        self._on_message = on_message
        self._before_close = before_close  # flushes what the hub queued, so the close frame comes last
        self.done: asyncio.Future[None] = loop.create_future()
        self.ping_sent_at: float | None = None  # unanswered keepalive ping
        self._ping_payload = b""  # what the answering pong must carry
        self._abort_handle: asyncio.TimerHandle | None = None
        self.close_code: int | None = None
        self._on_lost = on_lost
        # The connection's output budget: False while its queued bytes are over it.
        self._gate = gate
        # Pongs go through the connection's queue, so they count against its budget.
        self._send_frame = send_frame if send_frame is not None else transport.write
        # Messages per second (--client-rate); None: no limit.
        self._bucket = TokenBucket(rate, max(burst, 1.0), loop.time()) if rate > 0 else None
        self._work_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._paused = False
        # Unparsed bytes beyond which reading stops: past max_message_bytes a
        # whole frame is always there, so parsing can always go on.
        self._read_high = max_message_bytes + READ_AHEAD

    # Sanic's protocol looks for these ------------------------------------------------
    @property
    def ws_proto(self) -> SubscriberSocket:
        return self

    def data_received(self, data: bytes) -> None:
        """Only buffers: messages are handled in slices (`_work`), at most
        SLICE_FRAMES frames and SLICE_SECONDS per event-loop turn, so a burst
        from one client delays no other client or the feed by more than a slice."""
        if self.state is State.CLOSED:
            return
        self._parser.feed(data, 0)
        if self._work_handle is None:
            self._work()
        else:
            self._flow()

    def _flow(self) -> None:
        """Stop reading while too much input waits to be handled; go on below it."""
        buffered = self._parser.buffered
        if not self._paused:
            if buffered > self._read_high and self.state is not State.CLOSED:
                self._paused = True
                self.transport.pause_reading()
        elif buffered <= self._read_high - READ_AHEAD // 2:
            self._paused = False
            if self.state is not State.CLOSED:
                self.transport.resume_reading()

    def _work(self) -> None:
        """Handle one slice of the buffered input; the rest waits for the next
        turn, for tokens (--client-rate) or for the output to drain."""
        self._work_handle = None
        if self.state is State.CLOSED:
            return
        loop = self.loop
        parser = self._parser
        now = loop.time()
        deadline = now + SLICE_SECONDS
        frames = SLICE_FRAMES
        while parser.buffered:
            if self.state is State.OPEN:
                wait = self._wait(now)
                if wait:
                    self._work_handle = loop.call_later(wait, self._work)
                    break
            if frames <= 0 or now >= deadline:
                self._work_handle = loop.call_soon(self._work)
                break
            before = parser.frames
            try:
                messages = parser.feed(b"", 1)
            except FrameError as exc:
                for opcode, payload in exc.messages:
                    self._dispatch(opcode, payload)
                if not self._is_closed():
                    log.info("closing %s: %s (%d)", _peer(self.transport), exc.reason, exc.code)
                self.fail(exc.code, exc.reason)
                return
            used = parser.frames - before
            if not used:
                break  # the rest of a frame is still to come
            frames -= used
            for opcode, payload in messages:
                self._dispatch(opcode, payload)
                if self._is_closed():  # a message may close it
                    return
            now = loop.time()
        self._flow()

    def _wait(self, now: float) -> float:
        """0 if the next message may be handled now, else seconds to wait."""
        if self._gate is not None and not self._gate(now):
            return STALL_POLL
        return self._bucket.wait_time(now) if self._bucket is not None else 0.0

    def _dispatch(self, opcode: int, payload: bytes) -> None:
        if self.state is not State.OPEN:
            # We sent a close: data frames are ignored, the client's close ends it.
            if opcode == OP_CLOSE:
                self._closed()
            return
        if self._bucket is not None:
            self._bucket.take(self.loop.time())
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
            self._send_frame(control_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            # Only the answer to our ping counts: an unsolicited pong proves nothing.
            if self.ping_sent_at is not None and payload == self._ping_payload:
                self.ping_sent_at = None
        elif opcode == OP_CLOSE:
            self._close_received(payload)

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
        if self._work_handle is not None:
            self._work_handle.cancel()
            self._work_handle = None
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

    def _is_closed(self) -> bool:
        return self.state is State.CLOSED

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
            self._ping_payload = os.urandom(4)
            self.transport.write(control_frame(OP_PING, self._ping_payload))

    def _closed(self) -> None:
        # The client answered our close frame: the closing handshake is done.
        self.state = State.CLOSED
        self.transport.close()
