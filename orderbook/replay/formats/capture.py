"""The raw capture format of the cryptofeed recorder, shared by the Kraken,
Coinbase and Binance readers. One record per line:

    <url> <-> <ts>              connection opened
    <url> <- <ts>: <json>       sent by the client (a subscribe request)
    <ts>: <json>                received; <ts> = local receive time, Unix seconds
    <url> -> <ts>: <body>       a REST response
    configuration: <json>       the recorder's configuration

cryptofeed's older recorder wrote the same lines, one file per connection
(`<EXCHANGE>-<6 hex>.<n>`), REST responses inline among the WebSocket
messages; its timestamps are Python float reprs of any length.

The body is exactly what the venue sent, so it is split off at the first
": " and never re-parsed as anything but JSON by the venue reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ..records import FormatError, seconds_to_ns

RECEIVED = "received"
SENT = "sent"
OPENED = "opened"
REST = "rest"
CONFIGURATION = "configuration"
BAD = "bad"  # not a capture line; yielded only to readers that ask (`bad_lines`)


class CaptureLine(NamedTuple):
    # A named tuple, not a frozen dataclass: one is built per line of every
    # capture, and a tuple is built in one step.
    kind: str
    time_ns: int  # local time of the line; 0 for configuration
    body: str  # the JSON text ('' for an opened connection)
    url: str  # '' for received messages
    where: str  # "source:lineno", for error messages
    # False for a last line with no line break: a recorder stopped mid-write may have cut it.
    ended: bool = True


class Segments:
    """Several files of one capture (a rotated capture: `KRAKEN.ws.50.0`,
    `.1`, ...) read as one stream. Iterated, it is the files' lines one after
    another, so a reader takes it wherever it takes lines; `read_capture`
    numbers each file's lines on their own and names each line by its file.

    `parts` is iterated once, lazily: the files can be opened one at a time."""

    __slots__ = ("parts",)

    def __init__(self, parts: Iterable[tuple[str, Iterable[str]]]) -> None:
        self.parts = parts

    def __iter__(self) -> Iterator[str]:
        for _, lines in self.parts:
            yield from lines


def read_capture(lines: Iterable[str], source: str = "capture", *, bad_lines: bool = False) -> Iterator[CaptureLine]:
    """Split each line of a capture; blank lines (trailing ones included) are skipped.

    `lines` may be `Segments`: then each line is named by its own file and
    line number there, and `source` is not used.

    A line that is no capture line is a FormatError, or with `bad_lines` a
    `BAD` line (body: the problem, url: the text) at the previous line's
    time, so a reader that can skip damage goes on after it."""
    parts = lines.parts if isinstance(lines, Segments) else ((source, lines),)
    last_ns = 0
    for name, part in parts:
        for lineno, raw in enumerate(part, 1):
            line = raw.rstrip("\r\n")
            if not line or line.isspace():  # (strip() would copy every line)
                continue
            where = f"{name}:{lineno}"
            ended = line != raw
            try:
                parsed = _split(line, where, ended)
            except FormatError as exc:
                if not bad_lines:
                    raise
                problem = str(exc).removeprefix(f"{where}: ")
                parsed = CaptureLine(BAD, last_ns, problem, line, where, ended)
            last_ns = max(last_ns, parsed.time_ns)
            yield parsed


def _split(line: str, where: str, ended: bool) -> CaptureLine:
    if line.startswith("configuration: "):
        return CaptureLine(CONFIGURATION, 0, line[len("configuration: ") :], "", where, ended)
    head, sep, body = line.partition(": ")
    if " <-> " in head and not sep:
        url, _, ts = line.partition(" <-> ")
        return CaptureLine(OPENED, seconds_to_ns(ts, where), "", url, where, ended)
    if not sep:
        cut = "" if ended else " (cut short: the file ends mid-line)"
        raise FormatError(where, f"not a capture line{cut}: {line[:80]!r}")
    for arrow, kind in ((" <- ", SENT), (" -> ", REST)):
        if arrow in head:
            url, _, ts = head.rpartition(arrow)
            return CaptureLine(kind, seconds_to_ns(ts, where), body, url, where, ended)
    return CaptureLine(RECEIVED, seconds_to_ns(head, where), body, "", where, ended)
