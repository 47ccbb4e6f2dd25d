"""Sources of book updates: anything that produces `FeedBatch` values for the core."""
