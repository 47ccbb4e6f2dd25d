"""Exact L2 order books broadcast over WebSockets with sequenced, resumable streams."""

__version__ = "0.1.0"
