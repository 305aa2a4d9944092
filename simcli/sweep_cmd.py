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
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from sim.errors import InputError
from sim.metrics.registry import KV_SWEEP_KEYS, SWEEP_TABLE, metric
from sim.perf.split import SPLIT_KEYS
from sim.sweep import (
    PARETO_X,
    PARETO_Y,
    Point,
    SweepFile,
    SweepResult,
    analyse,
    display_cell,
    execute,
    expand,
    load_sweep,
    make_points,
    param_cell,
    point_key,
    tidy,
)
from simcli.common import RESULTS_DIR, add_execution_options, make_executor, parse_set, progress_bar
from simcli.output import (
    MARKER,
    check_out_dir,
    jsonable,
    make_console,
    save_figure,
    show_progress,
    write_json,
    write_table,
    write_text,
)
from simcli.report_cmd import Progress, report_after

_SPECIAL = {"inf": float("inf"), "-inf": float("-inf")}


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """Undo jsonable(): "inf"/"-inf" back to floats, null back to NaN."""
    return {k: (_SPECIAL.get(v, v) if isinstance(v, str) else float("nan") if v is None else v)
            for k, v in row.items()}



#: The name of a stored point: `<point id>-r<replication>.json` (sim.sweep.point_key, point_id:
#: 12 hex digits).
POINT_FILE = re.compile(r"^[0-9a-f]{12}-r\d+\.json$")


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
        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):
            raise InputError(f"--out {out}: points is not a folder of this program's point files")
        if fresh and self.dir.exists():
            for f in self.dir.iterdir():      # only point files: nothing else in there is ours
                if POINT_FILE.match(f.name) and f.is_file():
                    f.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(out / MARKER, "sweep\n")
        # base and base_dir: what the report needs to simulate the recommended point again.
        write_json(manifest, {"name": sweep.name, "source": sweep.source, "digest": digest,
                              "spec": sweep.spec.model_dump(), "points": len(points), "base": sweep.base,
                              "base_dir": sweep.base_dir,
                              "created_utc": datetime.now(UTC).isoformat(timespec="seconds")})

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def load(self, p: Point) -> dict[str, Any] | None:
        """The stored row of `p`, or None when there is none or it is not `p`'s row: unreadable,
        not a JSON object, or naming another point, replication, seed or parameters."""
        try:
            data = json.loads(self.path(p.key).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        row = _decode(data)
        # The identity as it reads back after storage (jsonable, then _decode), so None/inf compare.
        ident = _decode(jsonable({"point_id": p.point_id, "replication": p.replication, "seed": p.seed,
                                  "root_seed": p.root_seed, **{k: param_cell(v) for k, v in p.params.items()}}))
        if any(k not in row or not _same(row[k], v) for k, v in ident.items()) or not isinstance(row.get("error"), str):
            return None
        return row

    def finished(self, points: list[Point]) -> dict[str, dict[str, Any]]:
        """Rows of points that finished without error and hold every metric the tables need; any
        other stored file (corrupt, incomplete, failed, another point's) counts as not done."""
        done = {}
        for p in points:
            row = self.load(p)
            if row is not None and row["error"] == "" and all(_is_number(row.get(m)) for m in REQUIRED_METRICS):
                done[p.key] = row
        return done

    def save(self, row: dict[str, Any]) -> None:
        write_json(self.path(point_key(row["point_id"], row["replication"])), row)

    def rows(self, points: list[Point]) -> list[dict[str, Any]]:
        return [row for row in map(self.load, points) if row is not None]


#: Metrics a finished point's stored row must hold (the sweep, aggregate and Pareto tables use them).
REQUIRED_METRICS: tuple[str, ...] = (*SWEEP_TABLE, PARETO_X, PARETO_Y, "usd_per_m_total_tokens", "requests_arrived")


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _rows_frame(rows: list[dict[str, Any]], points: list[Point]) -> pd.DataFrame:
    df = tidy(rows, points)
    if "traceback" in df:
        df = df.drop(columns="traceback")
    if "error" in df:
        df["error"] = df["error"].fillna("")
    return df


def write_outputs(out: Path, sweep: SweepFile, result: SweepResult) -> None:
    """sweep, aggregate and Pareto tables, and the Pareto chart."""
    from sim.report.figures import pareto_figure  # matplotlib: slow to import, only needed here

    write_table(result.rows, out / "sweep")
    write_table(result.aggregate, out / "aggregate")
    if result.pareto.empty:
        return
    write_table(result.pareto, out / "pareto")
    fig = pareto_figure(result.aggregate, result.pareto, f"{PARETO_X}_mean", f"{PARETO_Y}_mean",
                               "usd_per_m_total_tokens_mean", f"{sweep.name}: throughput per GPU vs speed per user",
                               group="configuration" if result.config_params else None)
    save_figure(fig, out / "pareto.png")


def print_sweep(console: Any, sweep: SweepFile, result: SweepResult, out: Path, ran: int, skipped: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    agg = result.aggregate
    t = Table(title=escape(f"{sweep.name}: {len(agg)} points x {sweep.spec.replications} replications "
                           f"(mean ± 95% CI)"), header_style="bold")
    for c in result.params:
        t.add_column(escape(c.rsplit(".", 1)[-1]))
    cols = [metric(name) for name in SWEEP_TABLE]
    for m in cols:
        t.add_column(escape(m.header), justify="right")
    for _, r in agg.head(40).iterrows():
        cells = [escape(display_cell(r[c])) for c in result.params]
        for m in cols:
            mean, ci = r.get(f"{m.name}_mean"), r.get(f"{m.name}_ci95")
            cells.append(m.display(mean) + ("" if ci is None or pd.isna(ci) else f" ± {m.display(ci)}"))
        t.add_row(*cells)
    console.print(t)
    if len(agg) > 40:
        console.print(f"... {len(agg) - 40} more points in aggregate.csv")
    if any(c.startswith(SPLIT_AXES) for c in result.params):
        console.print(step_split_table(agg, result.params))
    if any(c.startswith(KV_AXES) for c in result.params):
        console.print(figures_table(agg, result.params, KV_SWEEP_KEYS,
                                    "the KV hierarchy: prefix hits, where TTFT goes, and what each token class costs"))
    console.print(f"points run now: {ran}, resumed from earlier runs: {skipped}, failed: {len(result.failed)}")
    console.print(f"results: {escape(str(out))}")


#: Axes that change where a step's time goes: a sweep over them also prints the step split.
SPLIT_AXES = ("serving.parallelism.", "hardware.gpu", "serving.precision.")


#: Axes that change the KV hierarchy: a sweep over them also prints its figures.
KV_AXES = ("serving.kv_cache.",)


def step_split_table(agg: pd.DataFrame, params: list[str]) -> Any:
    """Why the points differ: a decode step at each point's mean batch, in its parts (sim/perf/split.py)."""
    return figures_table(agg, params, SPLIT_KEYS, "decode step at the mean batch, in its parts (ms; the step takes "
                         "the larger of compute and memory, plus the rest)")


def figures_table(agg: pd.DataFrame, params: list[str], keys: tuple[str, ...], title: str) -> Any:
    """Each point's means of `keys` (those the points have), one row per point."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=title, header_style="bold")
    for c in params:
        t.add_column(escape(c.rsplit(".", 1)[-1]))
    cols = [metric(name) for name in keys if f"{name}_mean" in agg]
    for m in cols:
        t.add_column(escape(m.header), justify="right")
    for _, r in agg.head(40).iterrows():
        t.add_row(*[escape(display_cell(r[c])) for c in params], *[m.display(r.get(f"{m.name}_mean")) for m in cols])
    return t


def cmd_sweep(args: argparse.Namespace, after_row: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run a sweep. `after_row` is called after each point is persisted (tests simulate crashes with it)."""
    sweep = load_sweep(args.sweep_file, parse_set(args.set))
    points = make_points(expand(sweep.spec), sweep.spec.replications, sweep.root_seed)
    out = args.out if args.out is not None else RESULTS_DIR / sweep.name / f"sweep-{sweep.digest()[:12]}"
    check_out_dir(out, "sweep", given=args.out is not None, replaced_whole=False)
    PointStore.check(out, sweep, args.fresh)
    console = make_console()

    def handle(row: dict[str, Any]) -> None:
        store.save(row)
        if after_row is not None:
            after_row(row)

    with make_executor(args.workers, args.dask) as ex:
        store = PointStore(out, sweep, points, fresh=args.fresh)
        done = store.finished(points)
        todo = [p for p in points if p.key not in done]
        with progress_bar(console, "sweep", "points", len(todo), show_progress(args.quiet) and bool(todo)) as update:
            for i, row in enumerate(execute(sweep.base, sweep.base_dir, todo, ex), 1):
                handle(row)
                update(i)
    result = analyse(_rows_frame(store.rows(points), points), sweep.spec)
    write_outputs(out, sweep, result)
    from rich.markup import escape

    if not args.quiet:          # before the report: a failing report must not hide the table
        print_sweep(console, sweep, result, out, len(todo), len(done))
    if not args.no_report and not result.aggregate.empty:
        report_after(out, Progress(console, show_progress(args.quiet), args.workers, args.dask))
        if not args.quiet:
            console.print(f"report: {escape(str(out / 'report.html'))} (and report.md)")
    if args.quiet:
        print(out)

    for _, r in result.failed.head(5).iterrows():
        console.print(f"[red]point {r['point_id']} replication {r['replication']} failed:[/red] {escape(r['error'])}")
    return 1 if len(result.failed) else 0


def add_parser(sub: Any) -> None:
    s = sub.add_parser("sweep", help="run a grid of scenario variants with replications (resumable)")
    s.add_argument("sweep_file", help="scenario YAML with a sweep: block")
    s.add_argument("--out", type=Path, default=None, help="output folder (default: results/<name>/sweep-<digest>); an existing one must hold this "
                   "sweep's earlier points")
    s.add_argument("--fresh", action="store_true", help="discard finished points in the output folder")
    s.add_argument("--no-report", action="store_true", help="do not write report.html and report.md (nor simulate the "
                   "recommended point again for them)")
    add_execution_options(s, "base scenario")
    s.set_defaults(func=cmd_sweep)
