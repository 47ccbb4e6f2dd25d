"""Encode: deltas made ready to send per second, for N subscribers of a symbol.

Rows (same deltas, same run), each for N = 1, 100, 1000 subscribers:
  * protobuf, once per delta: `codec.delta_message(d).SerializeToString()`,
    then `framing.frame(...)`; the one frame is handed to all N subscribers.
  * canonical JSON, once per delta: `codec.to_json(codec.delta_message(d))`,
    UTF-8 encoded and framed as a text frame; also handed to all N.
  * naive baseline: a dict with decimal strings built once per delta, then
    `json.dumps` once per subscriber (no framing, no UTF-8 encoding: the
    baseline is spared the work a WebSocket library would add).

"Handed to a subscriber" is an append to that subscriber's bounded outbound
deque, so every row pays the same per-subscriber step. The deltas come from
running the generated stream through `SequencedBook` before timing.

    python benchmarks/bench_encode.py [--seconds S] [--updates N] [--subscribers 1 100 1000]
"""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import _common as c

from orderbook.core.events import Delta
from orderbook.core.sequencer import SequencedBook
from orderbook.wire import codec
from orderbook.wire.framing import OP_TEXT, frame

CHUNK = 16  # deltas per timed step; keeps the clock reads out of the cost
QUEUE_LEN = 64


def make_deltas(seed: int, updates: int, book_levels: int) -> list[Delta]:
    stream = c.generate_stream(seed, updates, book_levels)
    sb = SequencedBook(c.INSTRUMENT, epoch=1)
    sb.apply(stream.snapshot)
    out = []
    for u in stream.updates:
        d = sb.apply(u, now_ns=u.event_time_ns + 150_000)
        if d is not None:
            out.append(d)
    return out


# A naive server keeps Decimal prices and sizes; it turns them into strings
# when it builds the message.
DecLevels = tuple[tuple[Decimal, Decimal], ...]
NaiveDelta = tuple[str, int, int, DecLevels, DecLevels, int, int]


def to_naive(d: Delta) -> NaiveDelta:
    pd, sd = c.INSTRUMENT.price_decimal, c.INSTRUMENT.size_decimal
    return (
        d.symbol,
        d.seq,
        d.prev_seq,
        tuple((pd(p), sd(s)) for p, s in d.bids),
        tuple((pd(p), sd(s)) for p, s in d.asks),
        d.checksum,
        d.publish_time_ns,
    )


def naive_dict(n: NaiveDelta) -> dict[str, Any]:
    symbol, seq, prev, bids, asks, checksum, t = n
    return {
        "type": "delta",
        "symbol": symbol,
        "seq": seq,
        "prev_seq": prev,
        "bids": [[str(p), str(s)] for p, s in bids],
        "asks": [[str(p), str(s)] for p, s in asks],
        "checksum": checksum,
        "time": t,
    }


def encode_pb(d: Delta) -> bytes:
    return frame(codec.delta_message(d).SerializeToString())


def encode_json(d: Delta) -> bytes:
    return frame(codec.to_json(codec.delta_message(d)).encode("utf-8"), OP_TEXT)


def unframe(data: bytes) -> bytes:
    """The payload of one unmasked frame (for the untimed content check)."""
    n = data[1] & 0x7F
    return data[{126: 4, 127: 10}.get(n, 2) :]


def shared_step(chunks: Sequence[Sequence[Delta]], encode: Callable[[Delta], bytes], n: int) -> Callable[[int], int]:
    queues = [deque(maxlen=QUEUE_LEN) for _ in range(n)]
    appends = [q.append for q in queues]

    def step(i: int) -> int:
        chunk = chunks[i % len(chunks)]
        for d in chunk:
            data = encode(d)
            for put in appends:
                put(data)
        return len(chunk)

    return step


def naive_step(chunks: Sequence[Sequence[NaiveDelta]], n: int) -> Callable[[int], int]:
    queues = [deque(maxlen=QUEUE_LEN) for _ in range(n)]
    appends = [q.append for q in queues]
    dumps = json.dumps

    def step(i: int) -> int:
        chunk = chunks[i % len(chunks)]
        for nd in chunk:
            msg = naive_dict(nd)
            for put in appends:
                put(dumps(msg))
        return len(chunk)

    return step


def main(argv: Sequence[str] | None = None) -> None:
    p = c.base_parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=0.5, help="seconds per timed run (default 0.5)")
    p.add_argument("--updates", type=int, default=5_000, help="generated updates to take deltas from (default 5,000)")
    p.add_argument("--book-levels", type=int, default=500, help="book size per side (default 500)")
    p.add_argument("--subscribers", type=int, nargs="+", default=[1, 100, 1000], help="N values (default 1 100 1000)")
    args = p.parse_args(argv)

    info = c.machine_info()
    deltas = make_deltas(args.seed, args.updates, args.book_levels)
    naive = [to_naive(d) for d in deltas]
    chunks = [deltas[i : i + CHUNK] for i in range(0, len(deltas), CHUNK)]
    naive_chunks = [naive[i : i + CHUNK] for i in range(0, len(naive), CHUNK)]

    # Same content in all three encodings (untimed check).
    for d, nd in zip(deltas[:200], naive[:200], strict=True):
        back = codec.delta_from_pb(codec.parse_server_message(unframe(encode_pb(d))).delta)
        js = json.loads(codec.to_json(codec.delta_message(d)))["delta"]
        nj = json.loads(json.dumps(naive_dict(nd)))
        same = back == d and int(js["seq"]) == nj["seq"] == d.seq
        for side in ("bids", "asks"):
            from_naive = [[c.INSTRUMENT.price_ticks(x), c.INSTRUMENT.size_lots(y)] for x, y in nj[side]]
            same = same and from_naive == [[int(lv["price"]), int(lv["size"])] for lv in js.get(side, [])]
        if not same:
            sys.exit(f"encodings disagree on delta seq {d.seq}")

    sizes = {
        "pb": sum(len(encode_pb(d)) for d in deltas) / len(deltas),
        "json": sum(len(encode_json(d)) for d in deltas) / len(deltas),
        "naive": sum(len(json.dumps(naive_dict(nd)).encode("utf-8")) for nd in naive) / len(naive),
    }

    steps: dict[tuple[str, int], Callable[[int], int]] = {}
    for n in args.subscribers:
        steps["pb", n] = shared_step(chunks, encode_pb, n)
        steps["json", n] = shared_step(chunks, encode_json, n)
        steps["naive", n] = naive_step(naive_chunks, n)
    for step in steps.values():  # warm-up, untimed
        c.timeboxed(step, min(0.05, args.seconds))()
    samplers = {key: c.timeboxed(step, args.seconds) for key, step in steps.items()}
    rates = c.interleaved(samplers, args.repeats)
    results = [(kind, n, r) for (kind, n), r in rates.items()]

    c.print_header("Encode: deltas made ready to send per second", info, argv)
    levels = sum(len(d.bids) + len(d.asks) for d in deltas) / len(deltas)
    print(
        c.markdown_table(
            ["Input", ""],
            [
                ["distinct deltas (cycled)", f"{len(deltas):,}"],
                ["levels per delta (mean)", f"{levels:.2f}"],
                ["seconds per timed run / repeats", f"{args.seconds} / {args.repeats}"],
                ["seed", f"{args.seed}"],
            ],
        )
    )
    print()
    labels = {
        "pb": "protobuf, framed once, shared",
        "json": "canonical JSON (`codec.to_json`), framed once, shared",
        "naive": "naive: `json.dumps` per subscriber",
    }
    print(
        c.markdown_table(
            ["encoding", "bytes per message (mean)"],
            [
                [labels["pb"], f"{sizes['pb']:.1f} (incl. 2-byte frame header)"],
                [labels["json"], f"{sizes['json']:.1f} (incl. frame header)"],
                [labels["naive"], f"{sizes['naive']:.1f} (no frame)"],
            ],
        )
    )
    print()
    naive_by_n = {n: r.median for k, n, r in results if k == "naive"}
    rows = []
    for kind, n, r in results:
        rows.append(
            [
                labels[kind],
                f"{n:,}",
                c.fmt_rate(r.median),
                c.fmt_spread(r),
                f"{1e6 / r.median:.1f}",
                c.fmt_rate(r.median * n),
                c.fmt_ratio(r.median / naive_by_n[n]),
            ]
        )
    print(
        c.markdown_table(
            [
                "path",
                "N",
                "deltas/s (median)",
                "min – max",
                "µs/delta",
                "deliveries ready/s",
                "vs naive, same N",
            ],
            rows,
            [False, True, True, True, True, True, True],
        )
    )
    print()


if __name__ == "__main__":
    main()
