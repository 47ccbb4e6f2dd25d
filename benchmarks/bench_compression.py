"""permessage-deflate: bytes on the wire and CPU per delivered message.

Three ways to send one message to N subscribers, for protobuf and JSON,
snapshots (20 and 1,000 levels per side) and deltas (1 level, ~10 levels):
  * plain: framed once (`Outgoing`), the same frame queued for all N;
  * compressed once: what a node with --compression sends, compressed with
    no context takeover once (`Outgoing`, kind protobuf/JSON + deflate, with
    its MIN_SIZE rule) and the same frame queued for all N;
  * per subscriber, with context takeover (for comparison; what a generic
    WebSocket server does by default): one zlib stream per subscriber at
    the default level, every message compressed N times. A snapshot is
    compressed on a fresh stream (it is a connection's first large message),
    deltas each on their subscriber's stream, in order.

"Queued" is an append to the subscriber's list, as `Connection.push` does.
Bytes are the frame's (header included). µs per delivered message =
the time for the message and its N appends / N.
Then the threshold table (which messages are worth compressing at all) and
the zlib level (1, the node's, against 6, zlib's default).

    python benchmarks/bench_compression.py [--seconds S] [--subscribers 1 100 1000]
"""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import Callable, Sequence

import _common as c

from orderbook.core.events import BookUpdate, Delta
from orderbook.core.sequencer import SequencedBook
from orderbook.server.outgoing import DEFLATE, JSON, PROTOBUF, Outgoing
from orderbook.wire import codec, compression
from orderbook.wire.framing import OP_BINARY, OP_TEXT, frame

ENCODINGS = {"protobuf": PROTOBUF, "JSON": JSON}
MODES = ("plain", "compressed once", "per subscriber, context takeover")


def message_sets(seed: int) -> dict[str, list[codec.ServerMessage]]:
    """The messages of each row: from one generated stream over a
    1,000-level book (deltas), and snapshots of it along the way."""
    stream = c.generate_stream(seed, 6_000, 1_000)
    sb = SequencedBook(c.INSTRUMENT, epoch=1)
    sb.apply(stream.snapshot)
    one: list[Delta] = []
    ten: list[Delta] = []
    snaps20: list[codec.ServerMessage] = []
    snaps1000: list[codec.ServerMessage] = []
    pending: dict[tuple[str, int], int] = {}
    for i, u in enumerate(stream.updates):
        if i % 2:
            # Odd updates: gathered into ~10-level updates (a burst merged).
            for side, levels in (("b", u.bids), ("a", u.asks)):
                for price, size in levels:
                    pending[side, price] = size
            if len(pending) >= 10:
                bids = tuple((p, s) for (side, p), s in pending.items() if side == "b")
                asks = tuple((p, s) for (side, p), s in pending.items() if side == "a")
                pending = {}
                d = sb.apply(BookUpdate(u.symbol, bids, asks, event_time_ns=u.event_time_ns), now_ns=u.event_time_ns)
                if d is not None:
                    ten.append(d)
        else:
            d = sb.apply(u, now_ns=u.event_time_ns + 150_000)
            if d is not None and len(d.bids) + len(d.asks) == 1:
                one.append(d)
        if i % 300 == 0:
            snaps20.append(codec.snapshot_message(sb.snapshot(20, u.event_time_ns)))
            snaps1000.append(codec.snapshot_message(sb.snapshot(0, u.event_time_ns)))
    return {
        "snapshot, 20 levels": snaps20,
        "snapshot, 1,000 levels": snaps1000,
        "delta, 1 level": [codec.delta_message(d) for d in one],
        "delta, ~10 levels": [codec.delta_message(d) for d in ten],
    }


def payloads(msgs: Sequence[codec.ServerMessage], kind: int) -> list[bytes]:
    return [m.SerializeToString() if kind == PROTOBUF else codec.to_json(m).encode() for m in msgs]


def context_frames(data: Sequence[bytes], opcode: int, fresh: bool) -> list[bytes]:
    """The frames one subscriber's own zlib stream (context takeover) makes."""
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    out = []
    for p in data:
        if fresh:
            packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        z = packer.compress(p) + packer.flush(zlib.Z_SYNC_FLUSH)
        out.append(frame(z[:-4], opcode, compressed=True))
    return out


def step_for(mode: str, msgs: Sequence[codec.ServerMessage], kind: int, n: int, fresh: bool) -> Callable[[int], int]:
    queues: list[list[bytes]] = [[] for _ in range(n)]
    data = payloads(msgs, kind)
    opcode = OP_BINARY if kind == PROTOBUF else OP_TEXT
    if mode == "per subscriber, context takeover":
        packers = [zlib.compressobj(wbits=-zlib.MAX_WBITS) for _ in range(n)]

        def per_subscriber(i: int) -> int:
            p = data[i % len(data)]
            for k, q in enumerate(queues):
                packer = zlib.compressobj(wbits=-zlib.MAX_WBITS) if fresh else packers[k]
                z = packer.compress(p) + packer.flush(zlib.Z_SYNC_FLUSH)
                q.append(frame(z[:-4], opcode, compressed=True))
                if len(q) > 64:
                    q.clear()
            return n

        return per_subscriber
    want = kind + DEFLATE if mode == "compressed once" else kind

    pb = payloads(msgs, PROTOBUF)

    def shared(i: int) -> int:
        # From the encoded message on, as in the per-subscriber mode: the
        # encoding itself costs the same in every mode, so it is left out.
        out = Outgoing(payload=pb[i % len(pb)])
        if kind == JSON:
            out._json = data[i % len(data)]
        for q in queues:
            q.append(out.frames[want] or out.build(want))
            if len(q) > 64:
                q.clear()
        return n

    return shared


def wire_bytes(mode: str, msgs: Sequence[codec.ServerMessage], kind: int, fresh: bool) -> float:
    data = payloads(msgs, kind)
    if mode == "per subscriber, context takeover":
        frames = context_frames(data, OP_BINARY if kind == PROTOBUF else OP_TEXT, fresh)
    else:
        want = kind + DEFLATE if mode == "compressed once" else kind
        frames = [Outgoing(m).build(want) for m in msgs]
    return sum(map(len, frames)) / len(frames)


def deflate_at(payload: bytes, level: int) -> bytes:
    packer = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return (packer.compress(payload) + packer.flush(zlib.Z_SYNC_FLUSH))[:-4]


def mean_us(fn: Callable[[bytes], object], data: Sequence[bytes], seconds: float, repeats: int) -> float:
    def step(i: int) -> int:
        fn(data[i % len(data)])
        return 1

    rate = c.interleaved({0: c.timeboxed(step, seconds)}, repeats)[0]
    return 1e6 / rate.median


def context_memory(n: int, sample: bytes) -> float:
    """Bytes each per-subscriber zlib stream holds once it has compressed a message."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    packers = [zlib.compressobj(wbits=-zlib.MAX_WBITS) for _ in range(n)]
    for p in packers:
        p.compress(sample)
        p.flush(zlib.Z_SYNC_FLUSH)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del packers
    return (after - before) / n


def main(argv: Sequence[str] | None = None) -> None:
    p = c.base_parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=0.2, help="seconds per timed run (default 0.2)")
    p.add_argument("--subscribers", type=int, nargs="+", default=[1, 100, 1000], help="N values (default 1 100 1000)")
    p.set_defaults(repeats=3)
    args = p.parse_args(argv)

    info = c.machine_info()
    sets = message_sets(args.seed)

    # Untimed check: what the node sends inflates back to the message.
    for msgs in sets.values():
        for kind in ENCODINGS.values():
            for m, data in zip(msgs[:20], payloads(msgs[:20], kind), strict=True):
                f = Outgoing(m).build(kind + DEFLATE)
                body = f[{126: 4, 127: 10}.get(f[1] & 0x7F, 2) :]
                back = compression.inflate(body, 1 << 24) if f[0] & 0x40 else body
                assert back == data, "a compressed frame does not inflate to its message"

    samplers: dict[tuple[str, str, str, int], Callable[[], float]] = {}
    for name, msgs in sets.items():
        fresh = name.startswith("snapshot")
        for enc, kind in ENCODINGS.items():
            for mode in MODES:
                for n in args.subscribers:
                    step = step_for(mode, msgs, kind, n, fresh)
                    c.timeboxed(step, min(0.02, args.seconds))()  # warm-up, untimed
                    samplers[name, enc, mode, n] = c.timeboxed(step, args.seconds)
    rates = c.interleaved(samplers, args.repeats)

    c.print_header("Compression: bytes on the wire and CPU per delivered message", info, argv)
    print(
        c.markdown_table(
            ["Input", ""],
            [
                ["messages per row (cycled)", ", ".join(f"{k}: {len(v):,}" for k, v in sets.items())],
                ["node's zlib level / MIN_SIZE", f"{compression.LEVEL} / {compression.MIN_SIZE} bytes"],
                ["seconds per timed run / repeats", f"{args.seconds} / {args.repeats}"],
                ["seed", f"{args.seed}"],
            ],
        )
    )
    print()

    rows = []
    for name, msgs in sets.items():
        fresh = name.startswith("snapshot")
        for enc, kind in ENCODINGS.items():
            plain, once, ctx = (wire_bytes(mode, msgs, kind, fresh) for mode in MODES)
            rows.append(
                [
                    name,
                    enc,
                    f"{plain:,.0f}",
                    f"{once:,.0f}",
                    f"{once / plain:.2f}",
                    f"{ctx:,.0f}",
                    f"{ctx / plain:.2f}",
                ]
            )
    print("Bytes on the wire per message (frame included, mean):\n")
    print(
        c.markdown_table(
            ["message", "encoding", "plain", "compressed once", "ratio", "per subscriber, context", "ratio"],
            rows,
            [False, False, True, True, True, True, True],
        )
    )
    print()

    rows = []
    for name in sets:
        for enc in ENCODINGS:
            for n in args.subscribers:
                us = {mode: 1e6 / (rates[name, enc, mode, n].median) for mode in MODES}
                rows.append(
                    [
                        name,
                        enc,
                        f"{n:,}",
                        *(f"{us[mode]:.3f}" for mode in MODES),
                        c.fmt_ratio(us["compressed once"] / us["plain"]),
                        c.fmt_ratio(us["per subscriber, context takeover"] / us["compressed once"]),
                    ]
                )
    print("CPU, µs per delivered message (median):\n")
    print(
        c.markdown_table(
            ["message", "encoding", "N", *MODES, "once vs plain", "per subscriber vs once"],
            rows,
            [False, False, True, True, True, True, True, True],
        )
    )
    print()

    # Which messages gain: the threshold.
    one = sets["delta, 1 level"]
    candidates: list[tuple[str, list[bytes]]] = []
    for enc, kind in ENCODINGS.items():
        candidates.append((f"delta, 1 level ({enc})", payloads(one, kind)))
        candidates.append((f"delta, ~10 levels ({enc})", payloads(sets["delta, ~10 levels"], kind)))
    stream = c.generate_stream(args.seed, 0, 1_000)
    sb = SequencedBook(c.INSTRUMENT, epoch=1)
    sb.apply(stream.snapshot)
    for depth in (1, 2, 5, 10):
        snap = codec.snapshot_message(sb.snapshot(depth, 1))
        candidates.append((f"snapshot, {depth} level{'s' if depth > 1 else ''} (protobuf)", [snap.SerializeToString()]))
    rows = []
    for label, data in sorted(candidates, key=lambda kv: sum(map(len, kv[1])) / len(kv[1])):
        size = sum(map(len, data)) / len(data)
        packed = sum(len(compression.deflate(d)) for d in data) / len(data)
        us = mean_us(compression.deflate, data, args.seconds, args.repeats)
        rows.append([label, f"{size:,.0f}", f"{packed:,.0f}", f"{100 * (1 - packed / size):.0f}%", f"{us:.1f}"])
    print("Which messages gain (level 1, no context; MIN_SIZE sends those under it as they are):\n")
    print(
        c.markdown_table(
            ["message", "bytes", "compressed", "saved", "µs to compress"], rows, [False, True, True, True, True]
        )
    )
    print()

    rows = []
    for name in ("snapshot, 20 levels", "snapshot, 1,000 levels", "delta, ~10 levels"):
        for enc, kind in ENCODINGS.items():
            data = payloads(sets[name], kind)
            cells = [name, enc]
            for level in (1, 6):
                size = sum(len(deflate_at(d, level)) for d in data) / len(data)
                us = mean_us(lambda d, lv=level: deflate_at(d, lv), data, args.seconds, args.repeats)
                cells += [f"{size:,.0f}", f"{us:.1f}"]
            rows.append(cells)
    print("zlib level, no context (bytes, µs per message):\n")
    print(
        c.markdown_table(
            ["message", "encoding", "level 1 bytes", "level 1 µs", "level 6 bytes", "level 6 µs"],
            rows,
            [False, False, True, True, True, True],
        )
    )
    print()
    sample = payloads(one[:1], PROTOBUF)[0]
    print(
        f"Memory a per-subscriber zlib stream holds (context takeover, default window and memLevel, "
        f"tracemalloc): {context_memory(200, sample) / 1024:,.0f} KiB per subscriber; compressed once: none.\n"
    )


if __name__ == "__main__":
    main()
