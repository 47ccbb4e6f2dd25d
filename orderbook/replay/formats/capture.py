"""The raw capture format of the cryptofeed recorder, shared by the Kraken,
Coinbase and Binance readers. One record per line:

    <url> <-> <ts>              connection opened
    <url> <- <ts>: <json>       sent by the client (a subscribe request)
    <ts>: <json>                received; <ts> = local receive time, Unix seconds
    <url> -> <ts>: <body>       a REST response
    configuration: <json>       the recorder's configuration

The body is exactly what the venue sent, so it is split off at the first
": " and never re-parsed as anything but JSON by the venue reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..records import FormatError, seconds_to_ns

RECEIVED = "received"
SENT = "sent"
OPENED = "opened"
REST = "rest"
CONFIGURATION = "configuration"


@dataclass(frozen=True, slots=True)
class CaptureLine:
    kind: str
    time_ns: int  # local time of the line; 0 for configuration
    body: str  # the JSON text ('' for an opened connection)
    url: str  # '' for received messages
    where: str  # "source:lineno", for error messages


def read_capture(lines: Iterable[str], source: str = "capture") -> Iterator[CaptureLine]:
    """Split each line of a capture; blank lines (trailing ones included) are skipped."""
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        if line.startswith("configuration: "):
            yield CaptureLine(CONFIGURATION, 0, line[len("configuration: ") :], "", where)
            continue
        head, sep, body = line.partition(": ")
        if " <-> " in head and not sep:
            url, _, ts = line.partition(" <-> ")
            yield CaptureLine(OPENED, seconds_to_ns(ts, where), "", url, where)
            continue
        if not sep:
            raise FormatError(where, f"not a capture line: {line[:80]!r}")
        for arrow, kind in ((" <- ", SENT), (" -> ", REST)):
            if arrow in head:
                url, _, ts = head.rpartition(arrow)
                yield CaptureLine(kind, seconds_to_ns(ts, where), body, url, where)
                break
        else:
            yield CaptureLine(RECEIVED, seconds_to_ns(head, where), body, "", where)
