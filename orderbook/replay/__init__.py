"""Replay, recording and verification of recorded market data."""
