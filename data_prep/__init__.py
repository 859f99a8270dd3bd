"""Benchmark -> verl parquet converters (one script per benchmark; shared logic in ``common``)."""
