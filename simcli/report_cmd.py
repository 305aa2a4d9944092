"""`report`: write report.html (one file, figures embedded) and report.md (figures in
report_figures/) into a run's, sweep's or plan's results folder; `run`, `sweep` and `plan` call it
at their end unless --no-report.

What the report needs beyond the folder's tables is simulated here, from the scenario the folder
records: a run's sensitivity table (sensitivity.parquet, sim/sensitivity.py), and for a sweep or a
plan the recommended configuration's run (representative/, replication 0 again with every table)
and its sensitivity. Each is computed once and kept; a representative run is simulated again only
when the recommendation changed (a resumed sweep with more points).
"""

from __future__ import annotations

import argparse
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pandas as pd

from sim.errors import InputError, SimulationFailed, one_line
from simcli.common import make_executor, progress_bar
from simcli.output import (
    REPORT_FIGURE_DIR,
    REPORT_HTML,
    REPORT_MD,
    SENSITIVITY_TABLE,
    atomic_path,
    check_out_dir,
    make_console,
    show_progress,
    write_table,
    write_text,
)


class Progress:
    """Where the report's extra simulations show their progress (a bar on a terminal, else nothing)."""

    def __init__(self, console: Any = None, show: bool = False, workers: int | None = None,
                 dask: str | None = None) -> None:
        self.console = console if console is not None else make_console()
        self.show = show
        self.workers = workers if workers is not None else min(os.cpu_count() or 1, 6)
        self.dask = dask

    def executor(self, jobs: int) -> AbstractContextManager:
        return make_executor(max(1, min(self.workers, jobs)) if self.dask is None else self.workers, self.dask)

    def warn(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]warning:[/yellow] {escape(text)}")


def write_report(folder: Path, progress: Progress | None = None) -> Path:
    """Build the report of the results folder and write it there, each file atomically; returns
    the HTML page's path."""
    from sim.report import REPRESENTATIVE_DIR
    from sim.report.content import read_run_folder, run_report  # matplotlib: slow to import
    from sim.report.study import read_study_folder, study_report

    progress = progress or Progress()
    if not folder.is_dir():
        raise InputError(f"report: {folder}: no such results folder")
    if (folder / "sweep.json").is_file() or (folder / "plan.json").is_file():
        study = read_study_folder(folder)
        ensure_representative(folder, study, progress)
        rep = folder / REPRESENTATIVE_DIR      # as it is now: kept, simulated again, or absent
        study.representative = read_run_folder(rep) if (rep / "summary.json").is_file() else None
        report = study_report(study)
    else:
        read_run_folder(folder)                  # a clear message for a folder that is not a run's
        ensure_sensitivity(folder, progress)
        report = run_report(read_run_folder(folder))
    return write_pages(folder, report)


def write_pages(folder: Path, report: Any) -> Path:
    from sim.report.render import pngs, render_html, render_markdown

    images = pngs(report)
    for name, png in images.items():
        with atomic_path(folder / REPORT_FIGURE_DIR / name) as tmp:
            tmp.write_bytes(png)
    write_text(folder / REPORT_MD, render_markdown(report, REPORT_FIGURE_DIR))
    html = folder / REPORT_HTML
    write_text(html, render_html(report, images))
    return html


def _run_scenario(folder: Path) -> tuple[dict[str, Any], str, int, dict[str, Any]]:
    """(scenario data as run, the folder its relative paths are read from, seed, summary)."""
    from sim.report.content import read_run_folder

    run = read_run_folder(folder)
    seed = run.meta.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError(f"{folder / 'run.json'}: seed: expected the run's integer seed, got {seed!r}")
    base_dir = str(Path(str(run.meta.get("scenario_file", "."))).parent.resolve())
    return run.scenario, base_dir, seed, run.summary


def ensure_sensitivity(folder: Path, progress: Progress) -> None:
    """Compute and keep the run's sensitivity table unless the folder has it; a scenario that can
    no longer be simulated (a trace moved away) leaves it out with a warning."""
    from sim.sensitivity import run_sensitivity, variations

    if (folder / SENSITIVITY_TABLE).is_file():
        try:
            pd.read_parquet(folder / SENSITIVITY_TABLE)
            return
        except (OSError, ValueError) as err:
            progress.warn(f"{folder / SENSITIVITY_TABLE}: cannot be read ({one_line(err)}); computing it again")
    data, base_dir, seed, summary = _run_scenario(folder)
    try:
        n = len(variations(data, {}, base_dir))
        with progress.executor(n) as ex, progress_bar(progress.console, "sensitivity", "simulations", n,
                                                      progress.show and n > 0) as update:
            table = run_sensitivity(data, base_dir, {}, seed, summary, ex, on_row=update)
    except InputError as err:
        progress.warn(f"{folder}: no sensitivity in the report: the scenario cannot be simulated again: {err}")
        return
    write_table(table, folder / SENSITIVITY_TABLE.removesuffix(".parquet"))


def ensure_representative(folder: Path, study: Any, progress: Progress) -> None:
    """Simulate the recommended (or, when none meets the SLO, the closest) configuration of a
    sweep's or plan's folder into representative/, unless it is there already."""
    from sim.report import REPRESENTATIVE_DIR
    from sim.runner import build, execute
    from sim.scenario import scenario_from_dict
    from sim.sweep import apply_params
    from simcli.run_cmd import resolved_scenario, write_results

    if study.base is None:
        progress.warn(f"{folder}: written before reports of sweeps and plans (no scenario recorded): the report "
                      "has no representative run and no sensitivity; run the command again to get them")
        return
    c = study.configs
    row = c.loc[study.recommended] if study.recommended is not None else study.closest()
    if pd.isna(row.get("seed0")):
        progress.warn(f"{folder}: {row['label']} has no finished replication 0 to simulate again: the report has no "
                      "representative run")
        return
    seed = int(row["seed0"])
    sc = scenario_from_dict(apply_params(study.base, row["params"]), base_dir=study.base_dir,
                            source=f"{folder}: the scenario its manifest records, with {row['label']}")
    rep = folder / REPRESENTATIVE_DIR
    if _same_run(rep, resolved_scenario(sc, seed)):
        ensure_sensitivity(rep, progress)
        return
    prior = check_out_dir(rep, "run", given=True, named=f"{rep} (where the report keeps the recommended "
                                                        "configuration's run)")
    try:
        with progress_bar(progress.console, "simulating the recommended configuration", "s of simulated arrivals",
                          sc.duration_s, progress.show) as update:
            result = execute(build(sc, seed), progress=update if progress.show else None)
    except Exception as err:
        raise SimulationFailed(f"report: the recommended configuration ({row['label']}) failed when simulated "
                               f"again: {type(err).__name__}: {one_line(err)}") from None
    write_results(result, rep, str(study.manifest.get("source", folder)), seed, replace=prior)
    ensure_sensitivity(rep, progress)


def _same_run(rep: Path, resolved: dict[str, Any]) -> bool:
    """Whether representative/ holds a complete, readable run of exactly this scenario and seed
    (anything else, an unreadable or half-deleted run included, is simulated again)."""
    from sim.report.content import read_run_folder

    try:
        return read_run_folder(rep).scenario == resolved
    except InputError:
        return False


def report_after(folder: Path, progress: Progress) -> Path:
    """The report at the end of run, sweep or plan: a failure must not cost the results, which are
    in place; the error says where they are (exit status 1)."""
    try:
        return write_report(folder, progress)
    except Exception as err:     # a report bug must not cost finished results
        raise SimulationFailed(f"the results are in {folder}, but their report could not be written: "
                               f"{type(err).__name__}: {one_line(err)}") from None


def cmd_report(args: argparse.Namespace) -> int:
    html = write_report(args.results, Progress(show=show_progress(False)))
    print(html)
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="write report.html and report.md into a run's, sweep's or plan's results folder")
    r.add_argument("results", type=Path, help="a results folder: results/<scenario>/<run-id>, .../sweep-<digest> "
                                              "or .../plan-<time>")
    r.set_defaults(func=cmd_report)
