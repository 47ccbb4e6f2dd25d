"""The file edge of replay: find a format's companion files, open them
(gzip or not), and hand the pure readers their lines or byte chunks.

Everything here blocks on disk, so asynchronous callers pull records through
a worker thread (see `player.pull`)."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .records import FormatError, Record

FORMATS = ("kraken", "coinbase", "binance", "okx", "deribit", "lobster", "tardis", "recording")
# Formats whose files carry no venue reference (no checksum, no reference book).
FORMATS_WITHOUT_REFERENCES = ("tardis",)
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class Source:
    """What to read: a path, its format and reader options."""

    path: Path
    format: str
    options: tuple[tuple[str, Any], ...] = ()

    def records(self) -> Iterator[Record]:
        return open_records(self.path, self.format, **dict(self.options))


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: Path) -> gzip.GzipFile | io.BufferedReader:
    return gzip.open(path, "rb") if _is_gzip(path) else path.open("rb")


def open_text(path: Path) -> IO[str]:
    # newline="" keeps '\r\n' as written; the readers accept both endings.
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline="")


def _one(candidates: list[Path], what: str, near: Path) -> Path:
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise FormatError(str(near), f"expected exactly one {what} beside it, found: {found}")
    return candidates[0]


def binance_files(path: Path, snapshots: Path | None = None) -> tuple[Path, Path | None]:
    """The WebSocket capture and its REST snapshots: a folder holding both,
    or the capture with `*.http.*` beside it unless named explicitly; None
    for a capture of cryptofeed's older layout, which holds its snapshots
    inline (told by its content, whatever files lie beside it)."""
    ws = _one(sorted(path.glob("*.ws.*")), "WebSocket capture (*.ws.*)", path) if path.is_dir() else path
    if snapshots is None:
        from .formats import binance

        with open_text(ws) as f:
            if binance.has_inline_snapshots(f):
                return ws, None
        beside = sorted(ws.parent.glob("*.http.*"))
        if not beside:
            return ws, None  # an older-layout capture whose first snapshot lies deep in the file
        snapshots = _one(beside, "REST snapshot file (*.http.*)", ws)
    return ws, snapshots


def instruments_file(capture: Path, instruments: Path | None = None) -> Path | None:
    """The instruments cryptofeed saved beside an OKX or Deribit capture (its
    REST responses): named explicitly, else `OKX.0` for `OKX.ws.1.0` (the
    same rotation, `OKX.5` for `OKX.ws.1.5`, else `OKX.0`); None if absent."""
    if instruments is not None:
        if not instruments.is_file():
            raise FormatError(str(instruments), "no such instruments file")
        return instruments
    prefix, sep, rest = capture.name.partition(".ws.")
    if not sep:
        return None
    rotation = rest.rpartition(".")[2]
    for name in dict.fromkeys((f"{prefix}.{rotation}", f"{prefix}.0")):
        candidate = capture.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def lobster_files(path: Path) -> tuple[Path, Path]:
    """The message file and its orderbook file (same name, 'orderbook' for 'message')."""
    if path.is_dir():
        path = _one(sorted(path.glob("*_message_*")), "LOBSTER message file (*_message_*)", path)
    if "_message_" not in path.name:
        raise FormatError(str(path), "a LOBSTER message file is named <SYMBOL>_<date>_<start>_<end>_message_<L>.csv")
    book = path.with_name(path.name.replace("_message_", "_orderbook_"))
    if not book.exists():
        raise FormatError(str(path), f"its orderbook file {book.name} is missing (it is the reference)")
    return path, book


def open_records(path: Path | str, fmt: str, **options: Any) -> Iterator[Record]:
    """Stream the records of a recording; the files close when the iterator does."""
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise FormatError(str(path), f"unknown format {fmt!r}; one of: {', '.join(FORMATS)}")
    if not path.exists():
        raise FormatError(str(path), "no such file")
    return _records(path, fmt, options)


def _records(path: Path, fmt: str, options: dict[str, Any]) -> Iterator[Record]:
    with ExitStack() as stack:
        if fmt == "kraken":
            from .formats import kraken

            yield from kraken.read(stack.enter_context(open_text(path)), source=path.name, **options)
        elif fmt == "coinbase":
            from .formats import coinbase

            yield from coinbase.read(stack.enter_context(open_text(path)), source=path.name, **options)
        elif fmt == "binance":
            from .formats import binance

            snapshots = options.pop("snapshots", None)
            ws, http = binance_files(path, Path(snapshots) if snapshots else None)
            yield from binance.read(
                stack.enter_context(open_text(ws)),
                stack.enter_context(open_text(http)) if http else (),
                source=ws.name,
                snapshot_source=http.name if http else None,
                **options,
            )
        elif fmt in ("okx", "deribit"):
            from .formats import deribit, okx

            read = okx.read if fmt == "okx" else deribit.read
            given = options.pop("instruments", None)
            defs = instruments_file(path, Path(given) if given else None)
            yield from read(
                stack.enter_context(open_text(path)),
                instruments=stack.enter_context(open_text(defs)) if defs else None,
                source=path.name,
                instruments_source=defs.name if defs else "instruments",
                **options,
            )
        elif fmt == "lobster":
            from .formats import lobster

            messages, book = lobster_files(path)
            symbol, date, levels = lobster.parse_filename(messages.name)
            options.setdefault("symbol", symbol)
            options.setdefault("date", date)
            options.setdefault("levels", levels)
            yield from lobster.read(
                stack.enter_context(open_text(messages)),
                stack.enter_context(open_text(book)),
                source=messages.name,
                **options,
            )
        elif fmt == "tardis":
            from .formats import tardis

            yield from tardis.read(stack.enter_context(open_text(path)), source=path.name, **options)
        else:
            from .formats import recording

            # Raw bytes: the reader inflates gzip itself and so keeps every
            # complete entry of a recording whose writer was killed.
            f = stack.enter_context(path.open("rb"))
            yield from recording.read(iter(lambda: f.read(CHUNK), b""), source=path.name, **options)


def detect_format(path: Path) -> str:
    """Guess the format from the name and the first bytes; a clear error if unsure."""
    if path.is_dir():
        if any(path.glob("*_message_*")):
            return "lobster"
        if any(path.glob("*.ws.*")) and any(path.glob("*.http.*")):
            return "binance"
        raise FormatError(str(path), "cannot tell the format of this folder; pass --format")
    if "_message_" in path.name:
        return "lobster"
    from .formats import recording

    with path.open("rb") as f:
        if recording.sniff(f.read(4096)):
            return "recording"
    with open_binary(path) as f:
        head = f.read(4096)
        if head.startswith(b"configuration: "):
            # A long configuration line first: read past it, to a whole line
            # (a cut through a multi-byte character would look binary).
            head += f.read(1 << 20)
            head = head[: head.rfind(b"\n") + 1] or head
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "recording"
    first = text.lstrip().lower()
    # cryptofeed's older recorder may open a capture with its configuration, which can name any venue.
    while first.startswith("configuration: "):
        first = first.partition("\n")[2].lstrip()
    if first.startswith("exchange,symbol,timestamp"):
        return "tardis"
    for marker, fmt in (
        ("kraken.com", "kraken"),
        ("coinbase.com", "coinbase"),
        ("binance.com", "binance"),
        ("okx.com", "okx"),
        ("deribit.com", "deribit"),
    ):
        if marker in first[:1024]:
            return fmt
    if not text.isprintable() and "\n" not in text[:200]:
        return "recording"
    raise FormatError(str(path), "cannot tell the format; pass --format " + "|".join(FORMATS))
