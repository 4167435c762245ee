"""Benchmarks that print figures. Never run as timed tests; CI runs them in --smoke mode."""
