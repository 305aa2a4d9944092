"""`plan`: capacity planning from a scenario file (definitions and stopping rules: sim/plan.py).

    run.py plan FILE [--rate R]        smallest replica count per candidate configuration that meets
                                       the SLO at load R (default: the scenario's load), and the cheapest
    run.py plan FILE --max-rate        highest load each candidate sustains within the SLO

Candidates come from the file's `plan: {candidates: [...]}` block (each a set of overrides such as
`{hardware.gpu: h200, serving.parallelism.tp: 2}`); without it the scenario itself is the only
candidate. Writes results/<name>/plan-<time>/ atomically: plan.csv/.parquet (one row per
candidate), evaluations.csv/.parquet (every simulation run), plan.json (the answer).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sim.metrics.registry import PLAN_TABLE, metric
from sim.plan import PlanResult, load_plan, plan
from simcli.common import RESULTS_DIR, add_execution_options, make_executor, parse_set
from simcli.output import (
    atomic_dir,
    check_out_dir,
    jsonable,
    make_console,
    show_progress,
    write_json,
    write_table,
)
from simcli.report_cmd import Progress, report_after


def cmd_plan(args: argparse.Namespace) -> int:
    updates = {k: v for k, v in (("replications", args.replications), ("max_replicas", args.max_replicas),
                                 ("rate", args.rate)) if v is not None}
    pf = load_plan(args.scenario, parse_set(args.set), updates)
    console = make_console()
    verbose = show_progress(args.quiet)

    def note(cand: int, knob: str, value: float, met: bool) -> None:
        if verbose:
            console.print(f"candidate {cand}: {knob}={value:g} -> {'meets' if met else 'misses'} the SLO")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out if args.out is not None else RESULTS_DIR / pf.scenario.name / f"plan-{stamp}"
    prior = check_out_dir(out, "plan", given=args.out is not None)   # before the search: a bad --out must not cost it
    with make_executor(args.workers, args.dask) as ex:
        result = plan(pf, ex, max_rate=args.max_rate, on_evaluation=note)
    with atomic_dir(out, "plan", replace=prior) as res:
        write_table(result.candidates, res.tmp / "plan")
        write_table(result.evaluations, res.tmp / "evaluations")
        # The candidates' overrides, scenario and its folder: what the report needs to simulate
        # the cheapest candidate again.
        write_json(res.tmp / "plan.json", jsonable({**result.answer(), "candidate_overrides": pf.spec.candidates or [{}],
                                                    "source": pf.source, "base": pf.base, "base_dir": pf.base_dir}))
    out = res.path
    if not args.quiet:          # before the report: a failing report must not hide the answer
        print_plan(console, pf.scenario.name, pf.spec.candidates or [{}], result, out)
    if not args.no_report:
        report_after(out, Progress(console, verbose, args.workers, args.dask))
        if not args.quiet:
            from rich.markup import escape

            console.print(f"report: {escape(str(out / 'report.html'))} (and report.md)")
    if args.quiet:
        print(out)
    return 0


def print_plan(console: Any, name: str, candidates: list[dict[str, Any]], result: PlanResult, out: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    knob = result.knob
    max_rate = result.mode == "max_load"
    title = (f"{name}: highest load per replica within the SLO ({knob.unit})" if max_rate else
             f"{name}: fewest replicas within the SLO at {knob.path}={result.load:g} {knob.unit}")
    answer = metric("max_load_per_replica" if max_rate else "min_replicas")
    cols = [metric(n) for n in PLAN_TABLE]
    t = Table(title=escape(title), header_style="bold")
    t.add_column("candidate", justify="right")
    t.add_column("configuration")
    t.add_column(escape(f"{answer.label} ({knob.unit})" if max_rate else answer.header), justify="right")
    for m in cols:
        t.add_column(escape(m.header), justify="right")
    for _, r in result.candidates.iterrows():
        short = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in candidates[int(r["candidate"])].items()) or "as is"
        value = r[answer.name]
        t.add_row(str(int(r["candidate"])), escape(short), "infeasible" if value is None or value != value else
                  answer.display(value), *(m.display(r[m.name]) for m in cols))
    console.print(t)
    if result.cheapest is not None:
        best = result.candidates.iloc[result.cheapest]
        console.print(f"cheapest within the SLO: candidate {result.cheapest} ({escape(str(best['overrides']))}) at "
                      f"${best['usd_per_m_output_tokens']:.3f} per million output tokens")
    else:
        console.print("no candidate meets the SLO within the search limits")
    console.print(f"stopping rules: {result.stopping_rules}")
    console.print(f"results: {escape(str(out))}")


def add_parser(sub: Any) -> None:
    s = sub.add_parser("plan", help="find the smallest/cheapest deployment within the SLO, or the highest load")
    s.add_argument("scenario", help="scenario YAML (optionally with a plan: block)")
    s.add_argument("--rate", type=float, default=None,
                   help="load to plan for, in the load knob's units (default: plan.rate or the scenario's load)")
    s.add_argument("--max-rate", action="store_true", help="find the highest load within the SLO instead")
    s.add_argument("--replications", type=int, default=None, help="replications per evaluation (default 3)")
    s.add_argument("--max-replicas", type=int, default=None, help="upper limit of the replica search (default 64)")
    s.add_argument("--out", type=Path, default=None, help="output folder (default: results/<name>/plan-<time>)")
    s.add_argument("--no-report", action="store_true", help="do not write report.html and report.md (nor simulate the "
                   "cheapest candidate again for them)")
    add_execution_options(s, "scenario")
    s.set_defaults(func=cmd_plan)
