"""Helpers of the benchmark scripts (`scripts/benchmark_*.py`, `scripts/memory_per_device.py`), importable because
`python scripts/X.py` puts scripts/ on the path."""
