"""`calibrate`: fit the step-time parameters to measurements and write a perf profile.

    run.py calibrate MEASUREMENTS.csv [--params a,b,...] [--out PROFILE.yaml]
    run.py calibrate --reference [--out PROFILE.yaml]     refit to the bundled published points

A scenario uses the profile with ``perf: {profile: PROFILE.yaml}``. The CSV format is in
docs/model-assumptions.md ("Calibrating to your own measurements").
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path

import yaml

from sim.calibrate import (
    DEFAULT_PARAMS,
    check_params,
    fit,
    max_evaluations,
    profile,
    read_measurements_csv,
    reference_points,
)
from sim.errors import InputError
from simcli.common import RESULTS_DIR, make_executor, progress_bar
from simcli.output import (
    check_out_file,
    check_writable,
    make_console,
    nearest_existing,
    show_progress,
    write_new_text,
    write_text,
)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    if args.reference == (args.measurements is not None):
        raise InputError("calibrate: give either a MEASUREMENTS.csv file or --reference")
    params = tuple(p.strip() for p in args.params.split(",") if p.strip()) if args.params is not None else DEFAULT_PARAMS
    check_params(params)
    if args.workers < 1:
        raise InputError(f"--workers: must be >= 1, got {args.workers}")
    if args.reference:
        ms, _, header = reference_points()
        source = f"bundled measured points: {header.get('source', '')}"
    else:
        ms = read_measurements_csv(args.measurements)
        source = str(args.measurements)
    if args.out is not None:
        check_profile_out(args.out)
    else:
        check_writable(nearest_existing(RESULTS_DIR / "calibration"), f"results folder {RESULTS_DIR / 'calibration'}")
    console = make_console()
    if not args.quiet:
        console.print(f"fitting {escape(', '.join(params))} to {len(ms)} measurements ...")
    # Least squares stops when it converges, usually far before the cap: the ETA is an upper bound.
    cap = max_evaluations(len(params))
    # Only simulated throughputs go to the pool: never more processes than they are.
    workers = min(args.workers, sum(m.kind == "throughput" for m in ms)) or 1
    with progress_bar(console, "calibrating", f"model evaluations (at most {cap:,}; usually far fewer)", cap,
                      show_progress(args.quiet)) as update, make_executor(workers, None) as ex:
        f = fit(ms, params, progress=update, executor=ex if workers > 1 else None)
    prof = profile(f, source)
    prof["created_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    body = yaml.safe_dump(prof, sort_keys=False)
    if args.out is not None:
        out = args.out
        if _is_ours_or_absent(out):
            write_text(out, _header(out.name) + body)
        else:       # a file appeared there during the fit: never replace it
            out = write_new_text(out, _header(out.name) + body)
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = RESULTS_DIR / "calibration" / f"profile-{stamp}.yaml"
        # Never replaces another calibration's profile (two can finish within the same second).
        out = write_new_text(out, _header(out.name) + body)
    if args.quiet:
        print(out)
        return 0
    t = Table(title=f"calibration: {len(ms)} measurements, rms log error {f.rms_log_error:.3f}", header_style="bold")
    for c in ("measurement", "kind", "measured", "predicted", "unit", "error"):
        t.add_column(c, justify="left" if c in ("measurement", "kind", "unit") else "right")
    for _, r in f.table.iterrows():
        if r["kind"] == "step":
            unit, cells = "ms per iteration", (f"{r['measured'] * 1e3:,.3f}", f"{r['predicted'] * 1e3:,.3f}")
        else:
            unit, cells = "output tokens/s/GPU", (f"{r['measured']:,.1f}", f"{r['predicted']:,.1f}")
        t.add_row(escape(str(r["id"])), escape(str(r["kind"])), *cells, unit, f"{r['error']:+.1%}")
    console.print(t)
    for k, v in f.params.items():
        console.print(f"  {k} = {v:.6g}")
    for note in f.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    console.print(f"profile: {escape(str(out))}")
    return 0


HEADER = "# Perf profile written by 'run.py calibrate'."


def _header(file_name: str) -> str:
    return f"{HEADER} Use it in a scenario with\n#   perf: {{profile: {file_name}}}\n"


def _is_ours_or_absent(path: Path) -> bool:
    """No file at `path`, or a profile this command wrote (the only kind --out may replace)."""
    if not path.exists():
        return True
    if not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().startswith(HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def check_profile_out(path: Path) -> None:
    """An --out profile may replace only a profile this command wrote."""
    check_out_file(path, "profile")
    if not _is_ours_or_absent(path):
        raise InputError(f"--out {path}: exists and is not a profile written by 'run.py calibrate'; "
                         "it is left untouched: name a new file, or remove it yourself")


def add_parser(sub) -> None:
    c = sub.add_parser("calibrate", help="fit step-time parameters to measurements; write a perf profile")
    c.add_argument("measurements", nargs="?", default=None, help="measurements CSV (step times or throughput)")
    c.add_argument("--reference", action="store_true", help="fit to the bundled published measurements instead")
    c.add_argument("--params", default=None, help=f"comma-separated parameters to fit (default: {','.join(DEFAULT_PARAMS)})")
    c.add_argument("--out", type=Path, default=None, help="profile file (default: results/calibration/profile-<time>.yaml)")
    c.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes that simulate the measurements of each evaluation (default: CPU count)")
    c.add_argument("--quiet", action="store_true", help="print only the profile path")
    c.set_defaults(func=cmd_calibrate)
