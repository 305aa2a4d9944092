"""`sweep`: run every point x replication of a sweep file, resumably, and write tidy tables.

Output folder (default results/<name>/sweep-<digest>, the digest identifying base scenario + sweep
block, so re-running the same file resumes in the same folder):

    sweep.json          manifest: digest, spec, point count
    points/<id>-r<k>.json   one finished point x replication, written atomically as it completes
    sweep.parquet/.csv      row per point x replication: parameters, seeds, every summary metric, error
    aggregate.parquet/.csv  row per point: <metric>_mean and <metric>_ci95 (95% half-width)
    pareto.parquet/.csv, pareto.png   non-dominated points in (tokens/s/user, tokens/s/GPU), with $/M

Resuming: finished points (files under points/) are skipped; failed ones are retried. A killed
sweep loses at most the points in flight, and never duplicates one (one file per point key).
Exit status 1 when any point failed (its error is in the tables), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from sim.errors import InputError
from sim.sweep import (
    PARETO_X,
    PARETO_Y,
    Point,
    SweepFile,
    aggregate,
    dask_executor,
    execute,
    expand,
    inline_executor,
    load_sweep,
    local_executor,
    make_points,
    pareto_frontier,
    point_key,
    tidy,
)
from simcli.output import fmt, make_console, save_figure, show_progress, write_json, write_table
from simcli.run_cmd import RESULTS_DIR, parse_set

_SPECIAL = {"inf": float("inf"), "-inf": float("-inf")}


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """Undo jsonable(): "inf"/"-inf" back to floats, null back to NaN."""
    return {k: (_SPECIAL.get(v, v) if isinstance(v, str) else float("nan") if v is None else v)
            for k, v in row.items()}


LOAD_KEYS = ("clients", "rate_per_s", "mean_rate_per_s", "rate_scale")


class PointStore:
    """Finished points as one JSON file each under <out>/points/ (atomic writes)."""

    @staticmethod
    def check(out: Path, sweep: SweepFile, fresh: bool) -> None:
        """Refuse (before anything is written) a folder that holds another sweep's results."""
        manifest = out / "sweep.json"
        if manifest.exists() and not fresh:
            try:
                old = json.loads(manifest.read_text(encoding="utf-8")).get("digest")
            except (OSError, json.JSONDecodeError):
                old = None
            if old != sweep.digest():
                raise InputError(f"--out {out}: holds results of a different sweep; use --fresh to start over "
                                 "or choose another folder")

    def __init__(self, out: Path, sweep: SweepFile, points: list[Point], fresh: bool) -> None:
        self.check(out, sweep, fresh)
        self.out = out
        self.dir = out / "points"
        manifest = out / "sweep.json"
        digest = sweep.digest()
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(manifest, {"name": sweep.name, "source": sweep.source, "digest": digest,
                              "spec": sweep.spec.model_dump(), "points": len(points),
                              "created_utc": datetime.now(UTC).isoformat(timespec="seconds")})

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def finished(self, points: list[Point]) -> dict[str, dict[str, Any]]:
        """Rows of points that finished without error (corrupt or failed files count as not done)."""
        done = {}
        for p in points:
            f = self.path(p.key)
            if not f.exists():
                continue
            try:
                row = _decode(json.loads(f.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                continue
            if row.get("error") == "":
                done[p.key] = row
        return done

    def save(self, row: dict[str, Any]) -> None:
        write_json(self.path(point_key(row["point_id"], row["replication"])), row)

    def rows(self, points: list[Point]) -> list[dict[str, Any]]:
        out = []
        for p in points:
            f = self.path(p.key)
            if f.exists():
                out.append(_decode(json.loads(f.read_text(encoding="utf-8"))))
        return out


def make_executor(workers: int, dask: str | None) -> AbstractContextManager:
    if workers < 1:
        raise InputError(f"--workers: must be >= 1, got {workers}")
    if dask is not None:
        return dask_executor(None if dask == "local" else dask, workers)
    return inline_executor() if workers == 1 else local_executor(workers)


def _rows_frame(rows: list[dict[str, Any]], points: list[Point]) -> pd.DataFrame:
    df = tidy(rows, points)
    if "traceback" in df:
        df = df.drop(columns="traceback")
    if "error" in df:
        df["error"] = df["error"].fillna("")
    return df


def write_outputs(out: Path, sweep: SweepFile, df: pd.DataFrame) -> pd.DataFrame:
    """sweep, aggregate and Pareto tables (+ chart); returns the aggregate (one row per point)."""
    from sim import report  # matplotlib: slow to import, only needed here
    params = list(sweep.spec.axes) + list(sweep.spec.zip)
    write_table(df, out / "sweep")
    agg = aggregate(df, params)
    write_table(agg, out / "aggregate")
    x, y = f"{PARETO_X}_mean", f"{PARETO_Y}_mean"
    if agg.empty or x not in agg or y not in agg:
        return agg
    front = pareto_frontier(agg, x, y)
    write_table(front, out / "pareto")
    # One curve per configuration: the values of every axis that is not a load knob.
    config = [c for c in params if not c.endswith(LOAD_KEYS) and agg[c].nunique() > 1]
    plot = agg.assign(configuration=agg[config].astype(str).agg(" / ".join, axis=1)) if config else agg
    fig = report.pareto_figure(plot, front, x, y, "usd_per_m_total_tokens_mean",
                               f"{sweep.name}: throughput per GPU vs speed per user",
                               group="configuration" if config else None)
    save_figure(fig, out / "pareto.png")
    report.close(fig)
    return agg


def print_sweep(console, sweep: SweepFile, agg: pd.DataFrame, out: Path, ran: int, skipped: int,
                failed: int) -> None:
    from rich.table import Table

    params = list(sweep.spec.axes) + list(sweep.spec.zip)
    t = Table(title=f"{sweep.name}: {len(agg)} points x {sweep.spec.replications} replications "
                    f"(mean ± 95% CI)", header_style="bold")
    for c in params:
        t.add_column(c.rsplit(".", 1)[-1])
    cols = [("ttft_s_p99", "TTFT p99 (s)", 3), ("tpot_s_p50", "TPOT p50 (ms)", 1),
            ("total_tok_per_s_per_gpu", "tok/s/GPU", 0), ("slo_attainment", "SLO attain.", 3),
            ("usd_per_m_output_tokens", "$/M out tok", 3)]
    for _, head, _ in cols:
        t.add_column(head, justify="right")
    for _, r in agg.head(40).iterrows():
        cells = [str(r[c]) for c in params]
        for key, _, digits in cols:
            scale = 1000.0 if key == "tpot_s_p50" else 1.0
            m, ci = r.get(f"{key}_mean"), r.get(f"{key}_ci95")
            cells.append(fmt(m * scale, digits) + ("" if ci is None or pd.isna(ci) else f" ± {fmt(ci * scale, digits)}"))
        t.add_row(*cells)
    console.print(t)
    if len(agg) > 40:
        console.print(f"... {len(agg) - 40} more points in aggregate.csv")
    console.print(f"points run now: {ran}, resumed from earlier runs: {skipped}, failed: {failed}")
    console.print(f"results: {out}")


@contextmanager
def _progress(console, total: int, show: bool) -> Iterator[Callable[[], None]]:
    """Yield a function that advances a progress bar with ETA (a no-op when not shown)."""
    if not show:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("points"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as prog:
        task = prog.add_task("sweep", total=total)
        yield lambda: prog.advance(task)


def cmd_sweep(args: argparse.Namespace, after_row: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run a sweep. `after_row` is called after each point is persisted (tests simulate crashes with it)."""
    sweep = load_sweep(args.sweep_file, parse_set(args.set))
    points = make_points(expand(sweep.spec), sweep.spec.replications, sweep.root_seed)
    out = args.out if args.out is not None else RESULTS_DIR / sweep.name / f"sweep-{sweep.digest()[:12]}"
    PointStore.check(out, sweep, args.fresh)
    console = make_console()
    failed = 0

    def handle(row: dict[str, Any]) -> None:
        nonlocal failed
        store.save(row)
        failed += row["error"] != ""
        if after_row is not None:
            after_row(row)

    with make_executor(args.workers, args.dask) as ex:
        store = PointStore(out, sweep, points, fresh=args.fresh)
        done = store.finished(points)
        todo = [p for p in points if p.key not in done]
        with _progress(console, len(todo), show_progress(args.quiet) and bool(todo)) as advance:
            for row in execute(sweep.base, sweep.base_dir, todo, ex):
                handle(row)
                advance()
    df = _rows_frame(store.rows(points), points)
    agg = write_outputs(out, sweep, df)
    if args.quiet:
        print(out)
    else:
        print_sweep(console, sweep, agg, out, len(todo), len(done), failed)
    errors = df[df["error"] != ""] if "error" in df else df.iloc[0:0]
    for _, r in errors.head(5).iterrows():
        console.print(f"[red]point {r['point_id']} replication {r['replication']} failed:[/red] {r['error']}")
    return 1 if len(errors) else 0


def add_parser(sub) -> None:
    s = sub.add_parser("sweep", help="run a grid of scenario variants with replications (resumable)")
    s.add_argument("sweep_file", help="scenario YAML with a sweep: block")
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPU count)")
    s.add_argument("--dask", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Dask distributed: a scheduler address (tcp://host:8786), or no value for a local cluster")
    s.add_argument("--out", type=Path, default=None, help="output folder (default: results/<name>/sweep-<digest>)")
    s.add_argument("--fresh", action="store_true", help="discard finished points in the output folder")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base scenario key")
    s.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    s.set_defaults(func=cmd_sweep)
