"""pytest-benchmark suites: `pytest bench/ --benchmark-only`."""
