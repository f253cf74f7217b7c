"""Benchmarks: commands, not timed tests (``python -m benchmarks.<name>``)."""
