"""`report`: write report.html (one file, figures embedded) and report.md (figures in
report_figures/) into a results folder; `run` calls it at its end unless --no-report."""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.errors import InputError
from simcli.output import REPORT_FIGURE_DIR, REPORT_HTML, REPORT_MD, atomic_path, write_text


def write_report(folder: Path) -> Path:
    """Build the report of the results folder and write it there, each file atomically; returns
    the HTML page's path."""
    from sim.report.content import read_run_folder, run_report  # matplotlib: slow to import
    from sim.report.render import pngs, render_html, render_markdown

    if not folder.is_dir():
        raise InputError(f"report: {folder}: no such results folder")
    if (folder / "sweep.json").is_file() or (folder / "plan.json").is_file():
        raise InputError(f"report: {folder}: sweep and plan folders are not reported yet; give a run's folder "
                         "(results/<scenario>/<run-id>)")
    report = run_report(read_run_folder(folder))
    images = pngs(report)
    for name, png in images.items():
        with atomic_path(folder / REPORT_FIGURE_DIR / name) as tmp:
            tmp.write_bytes(png)
    write_text(folder / REPORT_MD, render_markdown(report, REPORT_FIGURE_DIR))
    html = folder / REPORT_HTML
    write_text(html, render_html(report, images))
    return html


def cmd_report(args: argparse.Namespace) -> int:
    html = write_report(args.results)
    print(html)
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="write report.html and report.md into a run's results folder")
    r.add_argument("results", type=Path, help="a run's results folder (results/<scenario>/<run-id>)")
    r.set_defaults(func=cmd_report)
