"""Jittered exponential backoff: the subscriber session's, under the name the
client has always exported it by."""

from __future__ import annotations

from orderbook.session.backoff import Backoff

__all__ = ["Backoff"]
