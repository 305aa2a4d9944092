"""What every command shares: the results folder, --set parsing, the executor
options of sweep and plan, and progress bars."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import yaml

from sim.errors import InputError
from sim.sweep import dask_executor, inline_executor, local_executor
from sim.yamlio import load_yaml

RESULTS_DIR = Path("results")


def parse_set(items: list[str]) -> dict[str, Any]:
    """--set key=value pairs; values are parsed as YAML (numbers, lists, strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set: expected key=value, got {item!r}")
        if any(not part.strip() for part in key.split(".")):
            raise InputError(f"--set {key}: a dotted key needs a name between every two dots")
        try:
            out[key] = load_yaml(raw)
        except yaml.YAMLError:
            raise InputError(f"--set {key}: cannot parse value {raw!r}") from None
    return out


def add_execution_options(p: argparse.ArgumentParser, what: str) -> None:
    """--workers, --dask, --set and --quiet, as sweep and plan take them."""
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPU count)")
    p.add_argument("--dask", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Dask distributed: a scheduler address (tcp://host:8786), or no value for a local cluster")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a {what} key, e.g. --set duration_s=60 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress and no table; print only the results folder")


def make_executor(workers: int, dask: str | None) -> AbstractContextManager:
    """The executor the options ask for: in-process (1 worker), a process pool, or Dask."""
    if workers < 1:
        raise InputError(f"--workers: must be >= 1, got {workers}")
    if dask is not None:
        return dask_executor(None if dask == "local" else dask, workers)
    return inline_executor() if workers == 1 else local_executor(workers)


@contextmanager
def progress_bar(console: Any, label: str, unit: str, total: float, show: bool) -> Iterator[Callable[[float], None]]:
    """Yield `update(done)` for a bar with ETA (a no-op when not shown)."""
    if not show:
        yield lambda _done: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn(f"{{task.completed:,.0f}}/{{task.total:,.0f}} {unit}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as prog:
        task = prog.add_task(label, total=total)

        def update(done: float) -> None:
            # Past the total (a simulation draining its last requests) the bar says so instead
            # of sitting at 100 %.
            desc = label if done <= total else f"{label} (draining, +{done - total:,.0f})"
            prog.update(task, completed=min(done, total), description=desc)

        yield update
