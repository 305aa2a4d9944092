"""Sweeps: a scenario plus a `sweep:` block -> one tidy table (row per point x replication).

* Points: the full grid (Cartesian product) of `axes`, crossed with the rows of `zip` (axes that
  vary together, equal lengths). Each axis is a dotted scenario path (`serving.replicas`).
* Common random numbers: replication r of every point runs with the same seed,
  seed_r = SeedSequence(root_seed, spawn_key=(r,)) -> 63-bit int, so differences between points
  are not drowned by sampling noise (two points see identical arrivals and lengths when their
  workload keys are equal). Each row stores root_seed, replication and seed, so any row can be
  re-run alone: ``run.py SCENARIO --seed SEED --set path=value ...``.
* Execution: any ``concurrent.futures.Executor``: a local process pool, or Dask distributed's
  ``Client.get_executor()``; results come back as they complete. A failing point returns a row with
  its error instead of raising, so it never stops the others.
* Aggregation: per point, mean and 95% confidence half-width (Student t, replications - 1 degrees
  of freedom) of every numeric metric.
* Pareto frontier: points not dominated in (tokens/s/user, tokens/s/GPU), as published benchmark
  charts draw them.

The library does not write files: persistence and resuming live in the CLI (simcli/).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError, model_validator

from sim.errors import InputError
from sim.input_model import InputModel
from sim.scenario import (
    LOAD_KNOB_PATHS,
    format_validation_error,
    read_scenario_file,
    scenario_from_dict,
    set_dotted,
)

#: Columns every sweep row carries; an axis of the same name would be ignored or overwrite them.
RESERVED_AXES = ("seed", "root_seed", "replication", "replications", "point_id", "error", "traceback")


#: Simulations one sweep may ask for (points x replications): the grid is expanded in memory,
#: and a 4-billion-point grid would exhaust it before the first simulation.
MAX_SWEEP_RUNS = 100_000


class SweepSpec(InputModel):
    """The `sweep:` block of a sweep file."""

    axes: dict[str, list[Any]] = Field(default_factory=dict, description="full grid over these")
    zip: dict[str, list[Any]] = Field(default_factory=dict, description="axes that vary together")
    replications: int = Field(default=1, ge=1, le=10_000)

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if not self.axes and not self.zip:
            raise ValueError("sweep needs at least one axis under 'axes' or 'zip'")
        for group in ("axes", "zip"):
            for path, values in getattr(self, group).items():
                if not values:
                    raise ValueError(f"sweep.{group}.{path}: the axis is empty")
                if path in RESERVED_AXES:
                    raise ValueError(
                        f"sweep.{group}.{path}: {path!r} is not a sweep axis: every replication runs with its own "
                        "seed derived from the file's seed (common random numbers); set sweep.replications "
                        "for more seeds, or the file's seed for another root seed")
        lengths = {path: len(v) for path, v in self.zip.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"sweep.zip: axes must have equal lengths, got {lengths}")
        overlap = set(self.axes) & set(self.zip)
        if overlap:
            raise ValueError(f"sweep: {sorted(overlap)} appear in both axes and zip")
        points = math.prod(len(v) for v in self.axes.values()) * (next(iter(lengths.values())) if lengths else 1)
        if points * self.replications > MAX_SWEEP_RUNS:
            raise ValueError(f"sweep: {points:,} points x {self.replications:,} replications = "
                             f"{points * self.replications:,} simulations; at most {MAX_SWEEP_RUNS:,} per sweep")
        return self


@dataclass(frozen=True)
class Point:
    """One simulation to run: a parameter assignment and a replication."""

    point_id: str
    params: dict[str, Any]
    replication: int
    seed: int
    root_seed: int

    @property
    def key(self) -> str:
        return point_key(self.point_id, self.replication)


def point_key(pid: str, replication: int) -> str:
    """The identity of one point x replication (file name of its stored row)."""
    return f"{pid}-r{replication}"


@dataclass(frozen=True)
class SweepFile:
    """A parsed sweep file: the base scenario data (plain YAML), the sweep spec, where it lives."""

    base: dict[str, Any]
    spec: SweepSpec
    base_dir: str
    source: str

    @property
    def name(self) -> str:
        return str(self.base.get("name", "sweep"))

    @property
    def root_seed(self) -> int:
        return int(self.base.get("seed", 0))

    def digest(self) -> str:
        """Identity of the sweep (base scenario + spec): same file -> same results folder."""
        text = canonical_json({"base": self.base, "spec": self.spec.model_dump()})
        return hashlib.sha256(text.encode()).hexdigest()


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepFile:
    """Read a sweep file (a scenario plus a `sweep:` block) and validate every point up front."""
    p = Path(path)
    data, blocks = read_scenario_file(p, overrides)
    raw = blocks.get("sweep")
    if raw is None:
        raise InputError(f"{p}: no 'sweep:' block (a sweep file is a scenario plus sweep: {{axes: ..., replications: N}})")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise InputError(format_validation_error(err, str(p), prefix="sweep.")) from None
    sf = SweepFile(data, spec, str(p.parent.resolve()), str(p))
    validate_points(sf.base, expand(spec), sf.base_dir, sf.source)
    return sf


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """Parameter assignments: grid over `axes` x rows of `zip`, in a stable order."""
    grid_keys = list(spec.axes)
    grid = [dict(zip(grid_keys, combo, strict=True)) for combo in itertools.product(*spec.axes.values())] \
        if grid_keys else [{}]
    zipped = [dict(zip(spec.zip, row, strict=True)) for row in zip(*spec.zip.values(), strict=True)] \
        if spec.zip else [{}]
    return [{**g, **z} for g in grid for z in zipped]


def replication_seed(root_seed: int, replication: int) -> int:
    """The seed of replication r: the same at every point (common random numbers)."""
    state = np.random.SeedSequence(root_seed, spawn_key=(replication,)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def point_id(params: dict[str, Any]) -> str:
    """A stable id for a parameter assignment (independent of dict order and process)."""
    text = canonical_json(params)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_points(params_list: list[dict[str, Any]], replications: int, root_seed: int) -> list[Point]:
    seeds = [replication_seed(root_seed, r) for r in range(replications)]
    return [Point(point_id(p), p, r, seeds[r], root_seed) for p in params_list for r in range(replications)]


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(base))  # deep copy of plain YAML data
    for path, value in params.items():
        set_dotted(data, path, value)
    return data


def validate_points(base: dict[str, Any], params_list: list[dict[str, Any]], base_dir: str | Path | None,
                    source: str) -> None:
    """Validate every point's scenario up front; InputError names the sweep point on failure."""
    seen: set[str] = set()
    for params in params_list:
        try:
            scenario_from_dict(apply_params(base, params), source=source, base_dir=base_dir)
        except InputError as err:
            for path in params:
                if f"{path}: Extra inputs are not permitted" in str(err):
                    raise InputError(f"{source}: sweep axis {path!r} is not a scenario key "
                                     "(unknown parameter path)") from None
            where = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise InputError(f"{err}\n  (at sweep point {where})") from None
        pid = point_id(params)
        if pid in seen:
            raise InputError(f"{source}: sweep point {params} appears twice")
        seen.add(pid)


def param_cell(value: Any) -> Any:
    """A parameter value as a table cell: lists and mappings (a speculative block, per-position
    acceptances, a length distribution) as compact JSON text, so tables can group and compare them
    (null stays null: a missing value beside numbers or text)."""
    if isinstance(value, list | dict):
        return canonical_json(value, separators=(", ", ": "))
    return value


def display_cell(v: Any) -> str:
    """A swept value as a table cell: a list of KV tiers by their kinds ("HBM only" when empty)."""
    if isinstance(v, str) and v.startswith("["):
        try:
            items = json.loads(v)
        except ValueError:
            return v
        if isinstance(items, list) and all(isinstance(i, dict) and "kind" in i for i in items):
            return " + ".join(["HBM", *(str(i["kind"]) for i in items)]) if items else "HBM only"
    return str(v)


def canonical_json(value: Any, **kw: Any) -> str:
    """JSON text with mapping keys sorted (as text where a mapping mixes numbers and strings)."""
    try:
        return json.dumps(value, sort_keys=True, default=str, **kw)
    except TypeError:
        return json.dumps(_keys_as_text(value), sort_keys=True, default=str, **kw)


def _keys_as_text(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _keys_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys_as_text(v) for v in value]
    return value


def run_point(base: dict[str, Any], base_dir: str | None, point: Point) -> dict[str, Any]:
    """Run one point (in a worker process). Never raises: errors come back in the row."""
    from sim.runner import run  # imported here: cheap pickling of the function for workers

    row: dict[str, Any] = {"point_id": point.point_id, "replication": point.replication, "seed": point.seed,
                           "root_seed": point.root_seed, **{k: param_cell(v) for k, v in point.params.items()}}
    try:
        sc = scenario_from_dict(apply_params(base, point.params), base_dir=base_dir)
        res = run(sc, seed=point.seed)
        row.update(res.summary)
        row["error"] = ""
    except Exception as err:  # a failing point is data, not a crash of the sweep
        row["error"] = f"{type(err).__name__}: {err}"
        row["traceback"] = traceback.format_exc(limit=5)
    return row


def execute(base: dict[str, Any], base_dir: str | None, points: Iterable[Point], executor: Executor) -> Iterator[dict[str, Any]]:
    """Submit every point and yield rows as they complete (any concurrent.futures executor)."""
    futures: list[Future] = [executor.submit(run_point, base, base_dir, p) for p in points]
    for fut in as_completed(futures):
        yield fut.result()


def run_sweep(base: dict[str, Any], base_dir: str | None, points: list[Point], executor: Executor,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """Run points and return the tidy table, ordered by point then replication."""
    rows = []
    for row in execute(base, base_dir, points, executor):
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return tidy(rows, points)


def tidy(rows: list[dict[str, Any]], points: list[Point]) -> pd.DataFrame:
    """Rows in the points' order (stable whatever the completion order)."""
    order = {p.key: i for i, p in enumerate(points)}
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_o"] = [order.get(point_key(pid, r), math.inf) for pid, r in zip(df["point_id"], df["replication"], strict=True)]
    return df.sort_values("_o", kind="stable").drop(columns="_o").reset_index(drop=True)


def aggregate(df: pd.DataFrame, param_cols: list[str]) -> pd.DataFrame:
    """Per point: `<metric>_mean` and `<metric>_ci95` (half-width) for every numeric metric.

    No replication is dropped silently. An infinite value makes the mean infinite (a replication
    where no request met the SLO has an infinite $ per SLO-meeting token, and so does the point's
    mean), and the half-width is then NaN. A NaN value (a metric undefined in that replication,
    such as TTFT when nothing completed) is left out of the mean, and `<metric>_n` (present when
    this happens anywhere in the sweep) says over how many replications the mean was taken."""
    from scipy import stats  # slow to import; only sweeps need it
    # Failed rows carry no metrics: without them a column of True/False that held None is typed
    # again as bool (slo_met), so it is aggregated like the others.
    ok = (df[df["error"] == ""] if "error" in df else df).infer_objects()
    skip = set(param_cols) | {"replication", "seed", "root_seed"}
    metrics = [c for c in ok.columns if c not in skip and c != "point_id"
               and (pd.api.types.is_numeric_dtype(ok[c]) or pd.api.types.is_bool_dtype(ok[c]))]
    def t_ppf(n: int) -> float:
        return float(stats.t.ppf(0.975, n - 1)) if n > 1 else math.nan

    out = []
    for pid, g in ok.groupby("point_id", sort=False):
        rec: dict[str, Any] = {"point_id": pid, **{c: g[c].iloc[0] for c in param_cols}, "replications": len(g)}
        for c in metrics:
            x = g[c].astype(float).to_numpy()
            defined = x[~np.isnan(x)]
            rec[f"{c}_mean"] = float(defined.mean()) if len(defined) else math.nan
            rec[f"{c}_ci95"] = float(t_ppf(len(defined)) * defined.std(ddof=1) / math.sqrt(len(defined))) \
                if len(defined) > 1 and np.isfinite(defined).all() else math.nan
            rec[f"{c}_n"] = len(defined)
        out.append(rec)
    agg = pd.DataFrame(out)
    if agg.empty:
        return agg
    counts = [c for c in agg.columns if c.endswith("_n") and c[:-2] + "_mean" in agg]
    partial = [c for c in counts if (agg[c] < agg["replications"]).any()]
    return agg.drop(columns=[c for c in counts if c not in partial])


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean of b - a over the replications both have, its 95% half-width (Student t) and their
    number. Replication i runs with the same seed at every point (common random numbers), so the
    difference is measured on the same traffic and its interval is narrower than the two means'
    intervals together would suggest. The half-width is NaN below two pairs."""
    from scipy import stats

    keys = sorted(set(a) & set(b))
    d = np.array([b[k] - a[k] for k in keys], dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return math.nan, math.nan, 0
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return float(d.mean()), half, len(d)


PARETO_X = "output_tok_per_s_per_user_p50"
PARETO_Y = "total_tok_per_s_per_gpu"


@dataclass
class SweepResult:
    """A sweep's tables: rows (point x replication), the per-point aggregate, and the Pareto
    frontier of (tokens/s/user, tokens/s/GPU) means with each point's configuration label (the
    values of the axes that are not load knobs, so each configuration is one curve)."""

    rows: pd.DataFrame
    aggregate: pd.DataFrame
    pareto: pd.DataFrame
    params: list[str]
    config_params: list[str]

    @property
    def failed(self) -> pd.DataFrame:
        return self.rows[self.rows["error"] != ""] if "error" in self.rows else self.rows.iloc[0:0]


def analyse(rows: pd.DataFrame, spec: SweepSpec) -> SweepResult:
    """Aggregate a sweep's rows and find its Pareto frontier."""
    params = list(spec.axes) + list(spec.zip)
    agg = aggregate(rows, params)
    config = [c for c in params if c not in LOAD_KNOB_PATHS and c in agg and agg[c].nunique() > 1]
    if config and not agg.empty:
        agg = agg.assign(configuration=agg[config].astype(str).agg(" / ".join, axis=1))
    x, y = f"{PARETO_X}_mean", f"{PARETO_Y}_mean"
    front = pareto_frontier(agg, x, y) if not agg.empty and x in agg and y in agg else agg.iloc[0:0]
    return SweepResult(rows, agg, front, params, config)


def pareto_frontier(df: pd.DataFrame, x: str = PARETO_X, y: str = PARETO_Y) -> pd.DataFrame:
    """Rows not dominated in (x, y), both to maximise, sorted by x ascending."""
    d = df.dropna(subset=[x, y]).sort_values([x, y], ascending=[False, False], kind="stable")
    keep, best_y = [], -math.inf
    for idx, yv in zip(d.index, d[y], strict=True):
        if yv > best_y:
            keep.append(idx)
            best_y = yv
    return d.loc[keep].sort_values(x, kind="stable").reset_index(drop=True)


# ---- executors ------------------------------------------------------------------------------

class InlineExecutor(Executor):
    """Runs each task at submit time in this process (one worker, no pool, easy to debug)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(err)
        return fut


@contextmanager
def inline_executor() -> Iterator[Executor]:
    """`with inline_executor() as ex:` runs every point in this process."""
    yield InlineExecutor()


def _exit_with_parent(parent_pid: int) -> None:
    """In a pool worker: exit when the sweep's process is gone (killed with SIGKILL, it cannot
    stop its pool, and the workers would run on as orphans). A daemon thread checks twice a second
    whether the worker's parent is still `parent_pid`."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@contextmanager
def local_executor(workers: int) -> Iterator[Executor]:
    """`with local_executor(2) as ex:` runs points in a pool of `workers` processes."""
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def dask_executor(address: str | None, workers: int) -> Iterator[Executor]:
    """Dask distributed as a concurrent.futures executor: connect to a scheduler at `address`,
    or start a local cluster of `workers` single-threaded worker processes when address is None."""
    from distributed import Client, LocalCluster

    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout="15s")
        except (OSError, TimeoutError, ValueError) as err:
            raise InputError(f"--dask: cannot connect to a Dask scheduler at {address!r}: {err}") from None
    try:
        yield client.get_executor(pure=False)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
