"""Metrics: what a run records (records.py), over which window (window.py), what it means
(summary.py, docs/metrics.md), and what must always hold (invariants.py)."""

from sim.metrics.records import (
    STATUS_NAMES,
    IterLog,
    IterRecord,
    LevelLog,
    LevelRecord,
    LifecycleRecord,
    PackedLog,
    Status,
)
from sim.metrics.summary import (
    iterations_frame,
    levels_frame,
    lifecycle_frame,
    requests_frame,
    summarize,
)
from sim.metrics.window import Window, measurement_window

__all__ = ["STATUS_NAMES", "IterLog", "IterRecord", "LevelLog", "PackedLog", "LevelRecord", "LifecycleRecord", "Status", "Window",
           "iterations_frame", "levels_frame", "lifecycle_frame", "measurement_window", "requests_frame",
           "summarize"]
