"""Runnable examples of tracking with Cairn (`cairn example` runs sklearn_sweep)."""
