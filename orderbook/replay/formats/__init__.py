"""Readers of recorded market data, one module per format; each exposes a
pure `read(...)` generator of `orderbook.replay.records.Record`."""
