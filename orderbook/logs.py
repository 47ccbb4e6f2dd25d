"""Log lines of the `orderbook` command: one handler on the root logger,
writing to stderr as text for people or as JSON (one object per line) for log
collectors. Sanic's loggers have no handlers of their own (the app is created
with `configure_logging=False`) and propagate here, so every line is written
once.

A log call that concerns a connection or a symbol names it with `extra=`
(`conn`, `peer`, `symbol`, `reason`, ...); the JSON lines carry those fields,
the text lines only the message (which says the same in words).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: anything else on a record came with extra=.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Sanic's access lines carry their content as extra fields and an empty
# message; their names here.
_ACCESS_FIELDS = {"host": "peer", "request": "request", "status": "status", "byte": "bytes", "duration": "duration"}


def _access_text(record: logging.LogRecord) -> str:
    """A Sanic access record's line: `ADDRESS REQUEST STATUS BYTES [TIME]`."""
    parts = [str(getattr(record, name, "")).strip() for name in ("host", "request", "status", "byte", "duration")]
    message = record.getMessage()
    return " ".join(p for p in (*parts[:2], message, *parts[2:]) if p)


def _is_access(record: logging.LogRecord) -> bool:
    return record.name == "sanic.access" and hasattr(record, "request")


class TextFormatter(logging.Formatter):
    """`2026-01-01 12:00:00,000 INFO orderbook.server: epoch 1; simulator`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        if _is_access(record):
            record.message = _access_text(record)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger,
    message, then the fields the call added (`conn`, `peer`, `symbol`, ...),
    and `exc` with the traceback where there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if _is_access(record):
            out["message"] = _access_text(record)
            # A WebSocket's lines (Sanic marks them with a plug) say how it closed where others give bytes.
            websocket = str(getattr(record, "request", "")).lstrip().startswith("\N{ELECTRIC PLUG}")
            for name, key in _ACCESS_FIELDS.items():
                value = getattr(record, name, "")
                if value != "":
                    out["close" if websocket and key == "bytes" else key] = (
                        value.strip() if isinstance(value, str) else value
                    )
        else:
            for key, value in vars(record).items():
                if key not in _STANDARD and not key.startswith("_") and key not in out:
                    out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup(fmt: str = "text", *, debug: bool = False, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record, at INFO and above (the package's own at DEBUG
    with `debug`), to `stream` (stderr) in `fmt`; returns the handler. Any
    handler already on the root logger is replaced: the process has one."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("orderbook").setLevel(logging.DEBUG if debug else logging.NOTSET)
    return handler
