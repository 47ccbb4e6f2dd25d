"""The subscriber side of the /ws protocol without I/O (docs/protocol.md §7).

`SubscriberSession` keeps every subscription of one subscriber across its
connections: a `BookFollower` per symbol (the book, its (epoch, seq), whether
it is verified) and the subscription's phase on the current connection. The
shell feeds it the connection's life (`open`, `close`), every server message
(`receive`, or `receive_frame` for raw frames) and the application's requests
(`subscribe`, `unsubscribe`, `ping`, `retry`), and acts on the `Output`s it
returns: messages to send, retries to schedule, verified books to show.

The rules live here and nowhere else:

* subscribe with a resume point only for a verified full-depth book (§7.2, §8);
* take START_RESUMED only at the point offered, else resync (§7.3);
* verify prev_seq continuity, epochs, checksums and heartbeat positions,
  and resynchronise just the symbol that failed, in-band: Unsubscribe, then
  a Subscribe without resume point on its answer (§7.5);
* ignore what belongs to an older request (the phases of `ACCEPTS`);
* give up on or retry a refused Subscribe as the `RefusalPolicy` says.

Phases move only through the table in `transitions.py`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from orderbook.core.errors import (
    ChecksumMismatch,
    DuplicateDelta,
    EpochMismatch,
    InvariantViolation,
    OrderbookError,
    StreamError,
)
from orderbook.core.follower import BookFollower
from orderbook.core.instrument import Instrument
from orderbook.core.resume import ResumePoint
from orderbook.wire.codec import (
    ClientMessage,
    ErrorCode,
    MalformedMessage,
    ServerMessage,
    instrument_from_pb,
    levels_from_pb,
    parse_server_message,
    ping_message,
    subscribe_message,
    unsubscribe_message,
)

from .backoff import Backoff
from .errors import ResumeMismatch, ServerError, SubscriptionRejected
from .outputs import (
    BookUpdated,
    ErrorOutcome,
    ErrorReceived,
    HeartbeatChecked,
    MalformedReceived,
    Output,
    PongReceived,
    Rejected,
    Resync,
    RetrySubscribe,
    Send,
    Started,
    StateChanged,
)
from .policy import RefusalPolicy
from .states import Phase, ResyncReason, SymbolState, derive_state
from .stats import SessionStats
from .transitions import ACCEPTS, Trigger, transition

if TYPE_CHECKING:  # annotations only: the codec is the module that imports generated code
    from orderbook.v1 import stream_pb2


def _subscribed_enum(field: str) -> Mapping[str, int]:
    """Name -> number of the enum of the `Subscribed` field `field`, read from
    the message descriptor (the codec is the only module importing generated
    code; values are never renumbered)."""
    message = ServerMessage.DESCRIPTOR.fields_by_name["subscribed"].message_type
    enum_type = None if message is None else message.fields_by_name[field].enum_type
    if enum_type is None:
        raise InvariantViolation(f"Subscribed.{field} is not an enum")
    return MappingProxyType({v.name: v.number for v in enum_type.values})


_START_RESUMED = _subscribed_enum("start")["START_RESUMED"]
_REASON_NAMES: Mapping[int, str] = MappingProxyType({n: name for name, n in _subscribed_enum("reason").items()})

# The streams' own failures, by the reason a resync gives for them.
_DELTA_REASONS: tuple[tuple[type[StreamError], ResyncReason], ...] = (
    (ChecksumMismatch, ResyncReason.CHECKSUM),
    (DuplicateDelta, ResyncReason.DUPLICATE),
    (EpochMismatch, ResyncReason.EPOCH),
)


def reason_name(value: int) -> str:
    """`SNAPSHOT_REASON_STALE_EPOCH` for 2; the number for a reason newer than this program."""
    return _REASON_NAMES.get(value, str(value))


@dataclass(slots=True)
class _Subscription:
    """One symbol's subscription record, kept across connections."""

    symbol: str
    depth: int  # as wanted
    granted_depth: int = 0  # as the last Subscribed granted it
    wanted: bool = True  # False once the application left it (or it was rejected)
    phase: Phase = Phase.IDLE
    request_id: int = 0  # of the Subscribe or Unsubscribe in flight
    resume: ResumePoint | None = None  # offered with the Subscribe in flight
    retry: Backoff | None = None  # delays of retried refusals, until it is live again
    retry_pending: bool = False  # a RetrySubscribe is out and not yet acted on
    ever_synced: bool = False
    server_stale: bool = False  # the last heartbeat said the node's source is unreachable
    state: SymbolState = SymbolState.SUBSCRIBING


class SubscriberSession:
    """Every subscription of one subscriber; see the module docstring.

    `books[symbol]` is the `BookFollower` of each wanted symbol (its book,
    epoch and seq exact and verified while `synced`); `failed` holds the
    symbols the server refused for good; `stats` counts what happened.
    `depth` and `interval_ms` are the defaults of `subscribe`.
    """

    def __init__(
        self,
        symbols: Iterable[str] = (),
        *,
        depth: int = 0,
        interval_ms: int = 0,
        refusals: RefusalPolicy | None = None,
        stats: SessionStats | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if depth < 0:
            raise ValueError("depth must be >= 0")
        if interval_ms < 0:
            raise ValueError("interval_ms must be >= 0")
        self.depth = depth
        self.interval_ms = interval_ms  # conflation asked for every subscription
        self.refusals = refusals if refusals is not None else RefusalPolicy()
        self.stats = stats if stats is not None else SessionStats()
        self.books: dict[str, BookFollower] = {}
        self.failed: dict[str, SubscriptionRejected] = {}
        self.connected = False
        self.delivered = False  # book data arrived since the last `open`
        self._subs: dict[str, _Subscription] = {}
        self._ids = itertools.count(1)
        self._rng = rng
        for symbol in symbols:
            self.subscribe(symbol)

    # ------------------------------------------------------------------ introspection

    @property
    def symbols(self) -> tuple[str, ...]:
        """The wanted symbols, in the order they were asked for."""
        return tuple(s for s, sub in self._subs.items() if sub.wanted)

    def phase(self, symbol: str) -> Phase | None:
        """Where `symbol`'s subscription stands in the protocol (None: not wanted)."""
        sub = self._subs.get(symbol)
        return sub.phase if sub is not None else None

    def state(self, symbol: str) -> SymbolState | None:
        """What to show for `symbol` (None: not wanted)."""
        sub = self._subs.get(symbol)
        return sub.state if sub is not None and (sub.wanted or sub.phase is Phase.FAILED) else None

    def is_live(self, symbol: str) -> bool:
        """True if `symbol`'s book is current on the open connection."""
        sub = self._subs.get(symbol)
        return sub is not None and sub.phase is Phase.LIVE

    def request_id(self) -> int:
        """A fresh request id (never 0, which means "none")."""
        return next(self._ids)

    # ------------------------------------------------------------------ connection

    def open(self) -> list[Output]:
        """A connection is open: subscribe to every wanted symbol, resuming
        verified books (§7.2). A session still open is closed first."""
        out: list[Output] = []
        if self.connected:
            out.extend(self.close())
        self.connected = True
        self.delivered = False
        for sub in tuple(self._subs.values()):
            if sub.wanted and sub.phase is Phase.IDLE:
                self._subscribe(sub, out)
        return out

    def close(self) -> list[Output]:
        """The connection is gone: keep every book with its (epoch, seq) and
        verified flag, to resume from on the next one (§7.4)."""
        out: list[Output] = []
        self.connected = False
        for sub in tuple(self._subs.values()):
            # Retries belong to a connection: the next one subscribes anyway.
            sub.retry = None
            sub.retry_pending = False
            self._move(sub, Trigger.DISCONNECTED, out)
            if not sub.wanted and sub.phase is Phase.IDLE:
                del self._subs[sub.symbol]
        return out

    # ------------------------------------------------------------------ application requests

    def subscribe(self, symbol: str, depth: int | None = None) -> list[Output]:
        """Want `symbol` at `depth` (default the session's). Subscribing
        again at another depth leaves and comes back (a fresh snapshot)."""
        if not symbol:
            raise ValueError("empty symbol")
        d = self.depth if depth is None else depth
        if d < 0:
            raise ValueError("depth must be >= 0")
        out: list[Output] = []
        self.failed.pop(symbol, None)
        if symbol not in self.books:
            self.books[symbol] = BookFollower(symbol)
        sub = self._subs.get(symbol)
        if sub is None:
            sub = self._subs[symbol] = _Subscription(symbol, d)
            if self.connected:
                self._subscribe(sub, out)
            return out
        previous = sub.depth if sub.wanted else None
        sub.depth = d
        sub.wanted = True
        if sub.phase is Phase.FAILED:
            self._move(sub, Trigger.WANTED_AGAIN, out)
        if sub.phase is Phase.IDLE:
            if self.connected and not sub.retry_pending:  # else the retry subscribes it
                self._subscribe(sub, out)
        elif sub.phase is not Phase.UNSUBSCRIBING and previous != d:
            self._unsubscribe(sub, Trigger.UNSUBSCRIBE, out)  # its answer subscribes at the new depth
        # UNSUBSCRIBING: its answer subscribes again, since it is wanted.
        return out

    def unsubscribe(self, symbol: str) -> list[Output]:
        """Stop wanting `symbol` and forget its book."""
        out: list[Output] = []
        self.books.pop(symbol, None)
        self.failed.pop(symbol, None)
        sub = self._subs.get(symbol)
        if sub is None:
            return out
        sub.wanted = False
        sub.retry = None
        sub.retry_pending = False
        if sub.phase in (Phase.SUBSCRIBING, Phase.SNAPSHOT_WAIT, Phase.LIVE):
            self._unsubscribe(sub, Trigger.UNSUBSCRIBE, out)  # its answer forgets it
        elif sub.phase is not Phase.UNSUBSCRIBING:
            del self._subs[symbol]
        return out

    def retry(self, symbol: str) -> list[Output]:
        """The delay of a `RetrySubscribe` has passed: send its Subscribe,
        unless the symbol was left, or the connection changed, meanwhile."""
        out: list[Output] = []
        sub = self._subs.get(symbol)
        if sub is None or not sub.retry_pending or not self.connected:
            return out
        sub.retry_pending = False
        if sub.wanted and sub.phase is Phase.IDLE:
            if self.refusals.ping_before_retry:
                out.append(Send(ping_message(self.request_id())))
            self._subscribe(sub, out)
        return out

    def ping(self) -> tuple[int, ClientMessage]:
        """An application Ping and its request id (answered by `PongReceived`)."""
        rid = self.request_id()
        return rid, ping_message(rid)

    # ------------------------------------------------------------------ server messages

    def receive_frame(self, data: bytes | str) -> list[Output]:
        """One received WebSocket message (str: the JSON encoding)."""
        try:
            msg = parse_server_message(data)
        except MalformedMessage as exc:
            self.stats.malformed += 1
            return [MalformedReceived(exc)]
        return self.receive(msg)

    def receive(self, msg: ServerMessage) -> list[Output]:
        """One decoded server message (§7.3). Kinds newer than this program
        are ignored, as the contract asks."""
        out: list[Output] = []
        kind = msg.WhichOneof("kind")
        if kind == "delta":
            self._on_delta(msg.delta, out)
        elif kind == "heartbeat":
            self._on_heartbeat(msg.heartbeat, out)
        elif kind == "snapshot":
            self._on_snapshot(msg.snapshot, out)
        elif kind == "subscribed":
            self._on_subscribed(msg.subscribed, out)
        elif kind == "unsubscribed":
            self._on_unsubscribed(msg.unsubscribed, out)
        elif kind == "error":
            self._on_error(msg.error, out)
        elif kind == "pong":
            out.append(PongReceived(msg.pong.request_id, msg.pong.time_ns))
        return out

    def _taking(self, kind: str, symbol: str) -> _Subscription | None:
        """The subscription a message about `symbol` is for, if its phase
        takes that kind of message; otherwise the message was in flight
        before our latest request reached the server."""
        sub = self._subs.get(symbol)
        return sub if sub is not None and sub.phase in ACCEPTS[kind] else None

    def _on_delta(self, pd: stream_pb2.Delta, out: list[Output]) -> None:
        sub = self._taking("delta", pd.symbol)
        if sub is None:
            return
        follower = self.books[sub.symbol]
        try:
            follower.apply_delta(
                pd.epoch, pd.seq, pd.prev_seq, levels_from_pb(pd.bids), levels_from_pb(pd.asks), pd.checksum
            )
        except StreamError as exc:
            self._resync(sub, _delta_reason(exc), exc, out)
            return
        self.stats.deltas += 1
        self.delivered = True
        self._move(sub, Trigger.VERIFIED, out)
        if sub.server_stale:
            sub.server_stale = False  # changes flow again: the node reached its source
            self._refresh(sub, out)
        out.append(BookUpdated(sub.symbol, "delta", pd.epoch, pd.seq, follower))

    def _on_heartbeat(self, hb: stream_pb2.Heartbeat, out: list[Output]) -> None:
        sub = self._taking("heartbeat", hb.symbol)
        if sub is None:
            return
        self.stats.heartbeats += 1
        follower = self.books[sub.symbol]
        # A depth-limited stream skips changes outside its top levels, so the
        # symbol's seq may be ahead of the last delta sent to us.
        lenient = sub.granted_depth and hb.epoch == follower.epoch and hb.seq >= (follower.seq or 0)
        if not lenient:
            try:
                follower.check_heartbeat(hb.epoch, hb.seq)
            except EpochMismatch as exc:
                self._resync(sub, ResyncReason.EPOCH, exc, out)
                return
            except StreamError as exc:
                self._resync(sub, ResyncReason.HEARTBEAT, exc, out)
                return
        self._move(sub, Trigger.VERIFIED, out)
        if hb.stale != sub.server_stale:
            sub.server_stale = hb.stale
            self._refresh(sub, out)
        out.append(HeartbeatChecked(sub.symbol, hb.stale))

    def _on_snapshot(self, ps: stream_pb2.Snapshot, out: list[Output]) -> None:
        sub = self._taking("snapshot", ps.symbol)
        if sub is None:
            return
        solicited = sub.phase is Phase.SNAPSHOT_WAIT
        follower = self.books[sub.symbol]
        try:
            follower.apply_snapshot(
                ps.epoch,
                ps.seq,
                levels_from_pb(ps.bids),
                levels_from_pb(ps.asks),
                ps.checksum,
                _instrument(ps),
                ps.depth,
            )
        except StreamError as exc:
            self._resync(sub, ResyncReason.CHECKSUM, exc, out)
            return
        self.stats.snapshots += 1
        self.delivered = True
        sub.ever_synced = True
        sub.retry = None
        self._move(sub, Trigger.VERIFIED, out)
        out.append(BookUpdated(sub.symbol, "snapshot", ps.epoch, ps.seq, follower, solicited))

    def _on_subscribed(self, m: stream_pb2.Subscribed, out: list[Output]) -> None:
        sub = self._taking("subscribed", m.symbol)
        if sub is None or m.request_id != sub.request_id:
            return
        follower = self.books[sub.symbol]
        sub.granted_depth = m.depth
        instrument = _instrument(m)
        new_epoch = sub.ever_synced and m.epoch != follower.epoch
        if m.start == _START_RESUMED:
            problem = _resume_problem(sub.resume, follower, m.epoch, m.seq, instrument)
            if problem:
                self._resync(sub, ResyncReason.RESUME, ResumeMismatch(f"{sub.symbol}: {problem}"), out)
                return
            if instrument is not None:
                follower.instrument = instrument
            self.stats.resumes += 1
            self.delivered = True
            sub.retry = None
            out.append(Started(sub.symbol, True, "", m.epoch, m.seq, sub.resume, new_epoch))
            self._move(sub, Trigger.RESUMED, out)
            out.append(BookUpdated(sub.symbol, "resumed", m.epoch, m.seq, follower))
            return
        # START_SNAPSHOT (or a value newer than this program): a snapshot
        # follows and replaces the book. Until then the book is not current,
        # and it must not be offered for resuming either: the server just
        # refused it, possibly as AHEAD ("cannot be trusted").
        follower.desync()
        if instrument is not None:
            follower.instrument = instrument
        out.append(Started(sub.symbol, False, reason_name(m.reason), m.epoch, m.seq, sub.resume, new_epoch))
        self._move(sub, Trigger.SNAPSHOT_FOLLOWS, out)

    def _on_unsubscribed(self, m: stream_pb2.Unsubscribed, out: list[Output]) -> None:
        sub = self._taking("unsubscribed", m.symbol)
        if sub is not None and m.request_id == sub.request_id:
            self._left(sub, out)

    def _on_error(self, e: stream_pb2.Error, out: list[Output]) -> None:
        err = ServerError(e.code, e.message, e.symbol, e.request_id)
        self.stats.errors += 1
        self.stats.last_error = err
        sub = self._answered(e.symbol, e.request_id)
        if sub is None:
            out.append(ErrorReceived(err, e.symbol, ErrorOutcome.UNRELATED))
            return
        if sub.phase is Phase.UNSUBSCRIBING:
            # NOT_SUBSCRIBED or a failure: either way the server does not
            # hold it for us any more; move on.
            out.append(ErrorReceived(err, sub.symbol, ErrorOutcome.LEFT))
            self._left(sub, out)
            return
        if e.code == ErrorCode.ERROR_CODE_ALREADY_SUBSCRIBED:
            # The server still holds an older subscription: start over.
            out.append(ErrorReceived(err, sub.symbol, ErrorOutcome.RESYNC))
            self._resync(sub, ResyncReason.ALREADY_SUBSCRIBED, err, out)
            return
        if self._gives_up(sub, e.code):
            rejected = SubscriptionRejected(e.code, e.message, sub.symbol, e.request_id)
            sub.wanted = False
            sub.retry = None
            self.failed[sub.symbol] = rejected
            out.append(ErrorReceived(err, sub.symbol, ErrorOutcome.REJECTED))
            self._move(sub, Trigger.REJECTED, out)
            out.append(Rejected(sub.symbol, rejected))
            return
        policy = self.refusals
        if sub.retry is None:
            sub.retry = Backoff(policy.retry_base, policy.retry_cap, rng=self._rng)
        delay = max(sub.retry.next_delay(), policy.retry_floor)
        sub.retry_pending = True
        out.append(ErrorReceived(err, sub.symbol, ErrorOutcome.RETRY))
        self._move(sub, Trigger.REFUSED, out)
        out.append(RetrySubscribe(sub.symbol, delay, sub.retry.attempt))

    def _answered(self, symbol: str, request_id: int) -> _Subscription | None:
        """The subscription whose request in flight an Error answers."""
        if not request_id:
            return None
        sub = self._subs.get(symbol) if symbol else None
        if sub is None or sub.request_id != request_id:
            sub = next((s for s in self._subs.values() if s.request_id == request_id), None)
        return sub if sub is not None and sub.phase in ACCEPTS["error"] else None

    def _gives_up(self, sub: _Subscription, code: int) -> bool:
        policy = self.refusals
        if code not in policy.give_up:
            return False
        # A symbol we held a book for is unknown only while a restarted node
        # waits for its feed to define it again.
        held = self.books[sub.symbol].epoch is not None
        return not (code == ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL and policy.wait_if_held and held)

    # ------------------------------------------------------------------ actions

    def _subscribe(self, sub: _Subscription, out: list[Output]) -> None:
        follower = self.books[sub.symbol]
        # Only a verified full-depth book is offered (§7.2, §8): the server
        # never resumes a depth-limited subscription, nor can a depth-limited
        # book continue as a full one.
        resume = follower.resume_point() if sub.depth == 0 and follower.depth == 0 else None
        sub.request_id = self.request_id()
        sub.resume = resume
        sub.granted_depth = sub.depth
        sub.server_stale = False
        sub.retry_pending = False
        self._move(sub, Trigger.SUBSCRIBE, out)
        out.append(Send(subscribe_message(sub.symbol, sub.depth, resume, sub.request_id, self.interval_ms)))

    def _unsubscribe(self, sub: _Subscription, trigger: Trigger, out: list[Output]) -> None:
        sub.request_id = self.request_id()
        self._move(sub, trigger, out)
        out.append(Send(unsubscribe_message(sub.symbol, sub.request_id)))

    def _left(self, sub: _Subscription, out: list[Output]) -> None:
        """The server no longer holds `sub`: subscribe afresh if the symbol is
        still wanted (a resync or a depth change), else forget it."""
        self._move(sub, Trigger.LEFT, out)
        if not sub.wanted:
            del self._subs[sub.symbol]
        elif self.connected:
            self._subscribe(sub, out)

    def _resync(self, sub: _Subscription, reason: ResyncReason, error: OrderbookError, out: list[Output]) -> None:
        """Resynchronise one symbol in-band after its stream broke (§7.5)."""
        stats = self.stats
        stats.resyncs += 1
        stats.resyncs_by_reason[reason] = stats.resyncs_by_reason.get(reason, 0) + 1
        if reason is ResyncReason.GAP or reason is ResyncReason.HEARTBEAT:
            stats.gaps += 1
        elif reason is ResyncReason.CHECKSUM:
            stats.checksum_failures += 1
        elif reason is ResyncReason.DUPLICATE:
            stats.duplicates += 1
        elif reason is ResyncReason.EPOCH:
            stats.epoch_changes += 1
        self.books[sub.symbol].desync()
        out.append(Resync(sub.symbol, reason, error))
        self._unsubscribe(sub, Trigger.CHECK_FAILED, out)

    def _move(self, sub: _Subscription, trigger: Trigger, out: list[Output]) -> None:
        phase = transition(sub.phase, trigger)
        if phase is not sub.phase:
            sub.phase = phase
            self._refresh(sub, out)

    def _refresh(self, sub: _Subscription, out: list[Output]) -> None:
        """Report the state `sub` shows now, if it changed."""
        if not sub.wanted and sub.phase is not Phase.FAILED:
            return  # being left: nothing more is reported for it
        follower = self.books.get(sub.symbol)
        state = derive_state(
            sub.phase,
            follower is not None and follower.synced,
            sub.ever_synced,
            self.connected,
            sub.server_stale,
        )
        if state is not sub.state:
            out.append(StateChanged(sub.symbol, state, sub.state))
            sub.state = state


def _delta_reason(exc: StreamError) -> ResyncReason:
    for kind, reason in _DELTA_REASONS:
        if isinstance(exc, kind):
            return reason
    return ResyncReason.GAP  # SequenceGap (and NotSynced, which a live book never raises)


def _instrument(m: stream_pb2.Subscribed | stream_pb2.Snapshot) -> Instrument | None:
    return instrument_from_pb(m.instrument) if m.HasField("instrument") else None


def _resume_problem(
    offered: ResumePoint | None, follower: BookFollower, epoch: int, seq: int, instrument: Instrument | None
) -> str:
    """Why a START_RESUMED cannot be taken, or "" if it can."""
    if offered is None or not follower.synced or (follower.epoch, follower.seq) != (offered.epoch, offered.seq):
        return "resumed without a matching resume point"
    if (epoch, seq) != (offered.epoch, offered.seq):
        return f"resumed at ({epoch}, {seq}), asked ({offered.epoch}, {offered.seq})"
    if instrument is not None and follower.instrument is not None and not follower.instrument.same_terms(instrument):
        return "instrument scales changed"
    return ""
