"""Reading the project's own recording format: entries per second and CPU
time per entry of `orderbook.wire.recording.decode` (length-delimited
framing, gzip, protobuf parse), plain and gzip-compressed, and records per
second of the whole reader (`open_records`: decode plus the replay layer's
sequence checks and conversion to book updates).

The recording is written first, into a temporary folder, by the project's
own `RecordingWriter`: a header, then per symbol a Subscribed and a
Snapshot, then the deltas of `_common.generate_stream` sequenced by
`SequencedBook` (as a server sends them) with a Heartbeat every 50 deltas.
Nothing is written outside that folder.

With `--against REV`, `decode` from `orderbook/wire/recording.py` at git
revision REV (loaded beside this tree's; it imports the rest of the package
from this tree) is timed on the same files in the same rounds. Both decoders
must yield the same entries before anything is timed.

    python benchmarks/bench_recording_read.py [--deltas N] [--symbols N]
        [--chunk BYTES] [--against REV] [--repeats N]
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _common as c  # noqa: E402

from orderbook.core.events import BookUpdate  # noqa: E402
from orderbook.core.instrument import Instrument  # noqa: E402
from orderbook.core.sequencer import SequencedBook  # noqa: E402
from orderbook.replay.files import open_records  # noqa: E402
from orderbook.wire import codec  # noqa: E402
from orderbook.wire import recording as wire  # noqa: E402

EPOCH = 1
T0 = 1_700_000_000_000_000_000


def write_recording(path: Path, *, gz: bool, deltas: int, symbols: int, seed: int) -> int:
    """A recording of `symbols` interleaved streams; returns its entry count."""
    streams = []
    with path.open("wb") as f, wire.RecordingWriter(f, gzip=gz) as w:
        names = [f"SYM{i}" for i in range(symbols)]
        w.write_header(wire.RecordingInfo("ws://127.0.0.1:8000/ws", tuple(names), T0))
        t = T0
        for i, name in enumerate(names):
            inst = Instrument(name, c.INSTRUMENT.price_scale, c.INSTRUMENT.size_scale)
            stream = c.generate_stream(seed + i, deltas // symbols, 500)
            sb = SequencedBook(inst, EPOCH)
            snap = stream.snapshot
            sb.apply(BookUpdate(name, snap.bids, snap.asks, replace=True))
            t += 1000
            w.write_message(
                t, codec.subscribed_message(name, i + 1, False, codec.SnapshotReason.NEW, EPOCH, sb.seq, 0, inst)
            )
            w.write_message(t, codec.snapshot_message(sb.snapshot(0, t)))
            streams.append((name, sb, iter(stream.updates)))
        live = list(streams)
        n = 0
        while live:
            for entry in list(live):
                name, sb, updates = entry
                u = next(updates, None)
                if u is None:
                    live.remove(entry)
                    continue
                t += 1000
                delta = sb.apply(BookUpdate(name, u.bids, u.asks, event_time_ns=u.event_time_ns))
                if delta is not None:
                    w.write_message(t, codec.delta_message(delta))
                n += 1
                if n % 50 == 0:
                    w.write_message(t, codec.heartbeat_message(name, sb.epoch, sb.seq, t))
        return w.entries


def chunks(path: Path, size: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def decoder_at(rev: str) -> Callable[..., Iterator[Any]]:
    """`decode` of orderbook/wire/recording.py at git revision `rev`."""
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:orderbook/wire/recording.py"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"--against {rev}: cannot read orderbook/wire/recording.py from git: {exc}")
    name = "_recording_at_" + "".join(ch if ch.isalnum() else "_" for ch in rev)
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:orderbook/wire/recording.py"
    sys.modules[name] = module  # dataclasses look their module up by name
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module.decode


def timed(count: Callable[[], int]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, items) of one run, GC off."""
    gc.collect()
    gc.disable()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        n = count()
        return time.perf_counter() - wall, time.process_time() - cpu, n
    finally:
        gc.enable()


def count_entries(decode: Callable[..., Iterator[Any]], path: Path, chunk: int) -> int:
    n = 0
    for _ in decode(chunks(path, chunk)):
        n += 1
    return n


def count_records(path: Path) -> int:
    n = 0
    for _ in open_records(path, "recording"):
        n += 1
    return n


def same_entries(a: Callable[..., Iterator[Any]], b: Callable[..., Iterator[Any]], path: Path, chunk: int) -> None:
    def key(e: Any) -> tuple[object, ...]:
        content = e.message.SerializeToString() if e.message is not None else repr((e.header, e.connection))
        return (e.offset, e.receive_time_ns, content)

    for x, y in zip(a(chunks(path, chunk)), b(chunks(path, chunk)), strict=True):
        if key(x) != key(y):
            sys.exit(f"the decoders disagree at offset {x.offset} of {path.name}")


def main(argv: list[str] | None = None) -> None:
    p = c.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--deltas", type=int, default=60_000, help="deltas in the recording, all symbols (default 60000)")
    p.add_argument("--symbols", type=int, default=3, help="symbols, interleaved (default 3)")
    p.add_argument("--chunk", type=int, default=1 << 16, help="bytes per read from the file (default 65536)")
    p.add_argument("--against", metavar="REV", help="also time decode() at this git revision (e.g. HEAD)")
    args = p.parse_args(argv)
    info = c.machine_info()

    with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp:
        files: dict[str, Path] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for label, gz in (("plain", False), ("gzip", True)):
            path = Path(tmp) / ("bench.rec.gz" if gz else "bench.rec")
            entries = write_recording(path, gz=gz, deltas=args.deltas, symbols=args.symbols, seed=args.seed)
            files[label] = path
            sizes[label] = (entries, path.stat().st_size)

        decoders: dict[str, Callable[..., Iterator[Any]]] = {"this tree": wire.decode}
        if args.against:
            decoders[f"at {args.against}"] = decoder_at(args.against)
            for path in files.values():
                same_entries(wire.decode, decoders[f"at {args.against}"], path, args.chunk)

        rows: dict[tuple[str, str, str], Callable[[], int]] = {}
        for label, path in files.items():
            for who, decode in decoders.items():
                rows[("decode", label, who)] = lambda d=decode, p=path: count_entries(d, p, args.chunk)
            rows[("open_records", label, "this tree")] = lambda p=path: count_records(p)
        for run in rows.values():  # warm-up, untimed
            run()
        samples: dict[tuple[str, str, str], list[tuple[float, float, int]]] = {k: [] for k in rows}
        for _ in range(args.repeats):
            for k, run in rows.items():
                samples[k].append(timed(run))

    c.print_header("Recording read", info)
    print(
        c.markdown_table(
            ["file", "entries", "bytes"],
            [(label, f"{n:,}", f"{size:,}") for label, (n, size) in sizes.items()],
            [False, True, True],
        )
    )
    print()
    table = []
    for (what, label, who), runs in samples.items():
        n = runs[0][2]
        rates = c.Rate(tuple(n / wall for wall, _, _ in runs))
        cpu_us = sorted(cpu / n * 1e6 for _, cpu, _ in runs)
        table.append(
            (
                what,
                label,
                who,
                c.fmt_rate(rates.median),
                c.fmt_spread(rates),
                f"{cpu_us[len(cpu_us) // 2]:.2f}",
            )
        )
    print(
        c.markdown_table(
            ["path", "file", "code", "items/s (median)", "min – max", "CPU µs per item (median)"],
            table,
            [False, False, False, True, True, True],
        )
    )
    print(
        f"\nItems: entries for decode, records for open_records. {args.repeats} rounds, "
        f"rows interleaved; {args.chunk:,}-byte reads; pid {os.getpid()}."
    )


if __name__ == "__main__":
    main()
