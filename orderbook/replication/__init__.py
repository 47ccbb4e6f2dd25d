"""Replication through Redis: the sequenced log, the sequencer lease, fencing."""
