"""Metrics: what a run records (records.py) and what it means (summary.py, docs/metrics.md)."""

from sim.metrics.records import IterRecord, LevelLog, LevelRecord, LifecycleRecord, Status
from sim.metrics.summary import iterations_frame, requests_frame, summarize, window_overlap_s

__all__ = ["IterRecord", "LevelLog", "LevelRecord", "LifecycleRecord", "Status", "iterations_frame",
           "requests_frame", "summarize", "window_overlap_s"]
