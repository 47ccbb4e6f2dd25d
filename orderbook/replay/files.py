"""The file edge of replay: find a format's companion files, open them
(gzip or not), and hand the pure readers their lines or byte chunks.

Several files of one capture (cryptofeed rotates a long one:
`KRAKEN.ws.50.0`, `KRAKEN.ws.50.1`, ...) are read in the order given as one
stream: the reader's books carry on from one file to the next, and every
line keeps its own file name and line number.

Everything here blocks on disk, so asynchronous callers pull records through
a worker thread (see `player.pull`)."""

from __future__ import annotations

import gzip
import io
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .formats.capture import Segments
from .records import FormatError, Record

FORMATS = ("kraken", "coinbase", "binance", "okx", "deribit", "lobster", "tardis", "recording")
# Formats whose files carry no venue reference (no checksum, no reference book).
FORMATS_WITHOUT_REFERENCES = ("tardis",)
# Formats whose files hold one stream of capture lines, so that the files of a
# rotated capture chain line by line (Binance only in the layout with its
# snapshots inline). Our recordings chain file by file, each file whole.
LINE_CHAINED = ("kraken", "coinbase", "okx", "deribit", "binance", "tardis")
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class Source:
    """What to read: a path (and the files that continue it), its format and reader options."""

    path: Path
    format: str
    options: tuple[tuple[str, Any], ...] = ()
    more: tuple[Path, ...] = ()  # read after `path`, in order, as one stream

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path, *self.more)

    @property
    def name(self) -> str:
        """The files, for a log line or a report's heading."""
        if not self.more:
            return str(self.path)
        return f"{self.path} ... {self.more[-1]}"

    def records(self) -> Iterator[Record]:
        return open_records(self.paths, self.format, **dict(self.options))


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


def open_records(path: Path | str | Sequence[Path | str], fmt: str, **options: Any) -> Iterator[Record]:
    """Stream the records of a recording; the files close when the iterator does.

    Several paths are read in order as one stream (see the module), all of
    one format: `common_format` checks each file."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise FormatError("files", "no file given")
    if fmt != "auto" and fmt not in FORMATS:
        raise FormatError(str(paths[0]), f"unknown format {fmt!r}; one of: {', '.join(FORMATS)}")
    for p in paths:
        if not p.exists():
            raise FormatError(str(p), "no such file")
    fmt = common_format(paths, fmt)
    if len(paths) == 1:
        return _records(paths[0], fmt, options)
    check_chainable(paths, fmt, options)
    if fmt == "recording":
        return _one_after_another(paths, fmt, options)
    return _records(paths[0], fmt, options, paths[1:])


# Why the files of these formats are not read as one stream.
_NOT_CHAINED = {
    "lobster": "each LOBSTER message file has its own orderbook file, its reference",
}


def check_chainable(paths: Sequence[Path], fmt: str, options: dict[str, Any]) -> None:
    """A clear error unless several files of `fmt` can be read as one stream."""
    if len(paths) < 2 or fmt == "recording":
        return
    if fmt not in LINE_CHAINED:
        why = _NOT_CHAINED.get(fmt, "")
        raise FormatError(str(paths[1]), f"several {fmt} files are not read as one stream ({why}): give one at a time")
    snapshots = options.get("snapshots")
    if fmt == "binance" and (
        paths[0].is_dir() or binance_files(paths[0], Path(snapshots) if snapshots else None)[1] is not None
    ):
        raise FormatError(
            str(paths[0]),
            "several Binance captures are read as one stream only in cryptofeed's older layout, "
            "with the snapshots inline; a capture whose REST snapshots are in a separate file "
            "(*.http.*) is read one at a time",
        )


def common_format(paths: Sequence[Path], fmt: str = "auto") -> str:
    """The one format of `paths`: `fmt`, or the first file's as detected.

    Every other file that shows its format must show the same one (a mix is
    an error naming the file); one that shows none, as a rotated part that
    starts mid-stream, is taken to continue the first."""
    first = detect_format(paths[0]) if fmt == "auto" else fmt
    if len(paths) == 1:
        return first
    for p in paths if fmt != "auto" else paths[1:]:
        found = _evident_format(p)
        if found is not None and found != first:
            given = f"--format {fmt}" if fmt != "auto" else f"{paths[0].name} is {first}"
            raise FormatError(
                str(p), f"this is a {found} file, but {given}: several files must be of one format, read as one stream"
            )
    return first


def _evident_format(path: Path) -> str | None:
    """The format a file shows by itself, or None when it shows none."""
    try:
        found = detect_format(path)
    except FormatError:
        return None
    if found == "recording" and path.is_file():
        from .formats import recording

        # detect_format's last guess (bytes that read as no text line) would
        # also take a rotated part whose first line is long: trust only a
        # recording's own header.
        with path.open("rb") as f:
            if not recording.sniff(f.read(4096)):
                return None
    return found


def _names(paths: Sequence[Path]) -> list[str]:
    """How errors name each file: by its name, or its path where two names are alike."""
    names = [p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def _parts(paths: Sequence[Path]) -> Generator[tuple[str, Iterable[str]]]:
    # One file open at a time: a year of captures is thousands of files.
    for name, path in zip(_names(paths), paths, strict=True):
        with open_text(path) as f:
            yield name, f


def _one_after_another(paths: Sequence[Path], fmt: str, options: dict[str, Any]) -> Iterator[Record]:
    # Each of our recordings begins with its subscription acks and snapshots,
    # as a later header in one file starts another recording.
    for path in paths:
        yield from _records(path, fmt, dict(options))


def _records(path: Path, fmt: str, options: dict[str, Any], more: Sequence[Path] = ()) -> Iterator[Record]:
    with ExitStack() as stack:

        def lines(path: Path) -> Iterable[str]:
            if not more:
                return stack.enter_context(open_text(path))
            parts = _parts((path, *more))
            stack.callback(parts.close)
            return Segments(parts)

        if fmt == "kraken":
            from .formats import kraken

            yield from kraken.read(lines(path), source=path.name, **options)
        elif fmt == "coinbase":
            from .formats import coinbase

            yield from coinbase.read(lines(path), source=path.name, **options)
        elif fmt == "binance":
            from .formats import binance

            snapshots = options.pop("snapshots", None)
            ws, http = binance_files(path, Path(snapshots) if snapshots else None)
            yield from binance.read(
                lines(ws),
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
                lines(path),
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

            yield from tardis.read(lines(path), source=path.name, **options)
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
