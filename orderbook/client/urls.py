"""Where a subscriber's token goes: the query (`?token=`) or the subprotocol
`bearer.<token>` (docs/protocol.md §2.2), and URLs fit for logs."""

from __future__ import annotations

import string
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# A subprotocol is an HTTP token; a token with other characters goes in the query.
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


def with_token(url: str, token: str | None) -> str:
    """`url` with `?token=` set to `token` (any earlier one replaced); `url`
    itself without a token."""
    if not token:
        return url
    query = [(k, v) for k, v in _query(url) if k != "token"]
    query.append(("token", token))
    return urlunsplit(urlsplit(url)._replace(query=urlencode(query)))


def without_token(url: str) -> str:
    """`url` with its `token` query parameter removed."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, v) for k, v in _query(url) if k != "token"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def redact(url: str) -> str:
    """`url` with the value of its `token` query parameter hidden, for logs."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, "***" if k == "token" else v) for k, v in _query(url)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def bearer_subprotocol(token: str) -> str | None:
    """The subprotocol that carries `token`, or None if `token` is not an
    HTTP token (then it must go in the query)."""
    return f"bearer.{token}" if token and set(token) <= _TOKEN_CHARS else None


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)
