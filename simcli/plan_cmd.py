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
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from sim.errors import InputError
from sim.plan import PlanSpec, Search, cheapest, load_knob, max_load, meets, min_replicas, summary_row
from sim.scenario import format_validation_error, read_yaml, scenario_from_dict, set_dotted
from sim.sweep import apply_params, execute, make_points
from simcli.output import atomic_dir, fmt, jsonable, make_console, show_progress, write_json, write_table
from simcli.run_cmd import RESULTS_DIR, parse_set, unique
from simcli.sweep_cmd import make_executor

STOPPING_RULES = (
    "meets the SLO = every replication reports slo_met; min replicas: 1, 2, 4, ... then bisection; "
    "max load: double/halve to bracket, then bisect until the bracket is within rate_tolerance "
    "(integer knobs: 1 apart) or max_evaluations"
)


def load_plan(path: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], PlanSpec, str]:
    p = Path(path)
    data = read_yaml(p)
    if not isinstance(data, dict):
        raise InputError(f"{p}: the file must hold a mapping of scenario keys")
    data = dict(data)
    data.pop("sweep", None)
    try:
        spec = PlanSpec.model_validate(data.pop("plan", None) or {})
    except ValidationError as err:
        raise InputError(format_validation_error(err, str(p), prefix="plan.")) from None
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return data, spec, str(p.parent.resolve())


def cmd_plan(args: argparse.Namespace) -> int:
    from rich.table import Table

    base, spec, base_dir = load_plan(args.scenario, parse_set(args.set))
    source = args.scenario
    sc = scenario_from_dict(base, source=source, base_dir=base_dir)
    updates = {k: v for k, v in (("replications", args.replications), ("max_replicas", args.max_replicas),
                                 ("rate", args.rate)) if v is not None}
    try:
        spec = PlanSpec.model_validate({**spec.model_dump(), **updates})
    except ValidationError as err:
        raise InputError(format_validation_error(err, "command line", prefix="--")) from None
    candidates = spec.candidates or [{}]
    scenarios = []
    for i, cand in enumerate(candidates):
        try:
            scenarios.append(scenario_from_dict(apply_params(base, cand), source=source, base_dir=base_dir))
        except InputError as err:
            raise InputError(f"{err}\n  (in plan.candidates[{i}])") from None
    knob = load_knob(sc)
    rate = spec.rate if spec.rate is not None else knob.value
    console = make_console()
    verbose = show_progress(args.quiet)
    evaluations: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []

    with make_executor(args.workers, args.dask) as ex:
        def evaluate(cand_i: int, params: dict[str, Any], label: str, value: float):
            pts = make_points([params], spec.replications, sc.seed)
            rows = list(execute(base, base_dir, pts, ex))
            met = meets(rows)
            for r in rows:
                evaluations.append({"candidate": cand_i, "search": label, "value": value, "met": met,
                                    **{k: v for k, v in r.items() if k != "traceback"}})
            if verbose:
                console.print(f"candidate {cand_i}: {label}={value:g} -> {'meets' if met else 'misses'} the SLO")
            return rows

        for i, cand in enumerate(candidates):
            if args.max_rate:
                search = max_load(lambda v, i=i, cand=cand: evaluate(i, {**cand, knob.path: v}, knob.path, v),
                                  start=knob.value, integer=knob.integer, rel_tol=spec.rate_tolerance,
                                  max_evaluations=spec.max_evaluations)
                row = _row(i, cand, search)
                replicas = scenarios[i].serving.replicas
                row.update({"max_load": search.answer, "max_load_per_replica":
                            None if search.answer is None else search.answer / replicas, "replicas": replicas})
            else:
                search = min_replicas(lambda n, i=i, cand=cand: evaluate(
                    i, {**cand, knob.path: rate, "serving.replicas": n}, "serving.replicas", n), spec.max_replicas)
                row = _row(i, cand, search)
                row["min_replicas"] = search.answer
            table.append(row)

    plan_df = pd.DataFrame(table)
    best = cheapest(plan_df)
    answer = {"mode": "max_load" if args.max_rate else "min_replicas", "load_knob": knob.path,
              "load_unit": knob.unit, "load": None if args.max_rate else rate, "replications": spec.replications,
              "stopping_rules": STOPPING_RULES, "cheapest_candidate": None if best is None else int(best["candidate"]),
              "candidates": jsonable(plan_df.to_dict(orient="records"))}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out if args.out is not None else unique(RESULTS_DIR / sc.name / f"plan-{stamp}")
    with atomic_dir(out) as tmp:
        write_table(plan_df, tmp / "plan")
        write_table(pd.DataFrame(evaluations), tmp / "evaluations")
        write_json(tmp / "plan.json", answer)
    if args.quiet:
        print(out)
        return 0
    title = (f"{sc.name}: highest load per replica within the SLO ({knob.unit})" if args.max_rate else
             f"{sc.name}: fewest replicas within the SLO at {knob.path}={rate:g} {knob.unit}")
    t = Table(title=title, header_style="bold")
    key = "max_load_per_replica" if args.max_rate else "min_replicas"
    for col in ("candidate", "configuration", "max load/replica" if args.max_rate else "min replicas", "GPUs", "$/M out tok", "$/GPU-h", "TTFT p99 (s)",
                "TPOT p99 (ms)", "SLO attain.", "GPU busy"):
        t.add_column(col, justify="left" if col == "configuration" else "right")
    for r in table:
        short = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in candidates[r["candidate"]].items()) or "as is"
        t.add_row(str(r["candidate"]), short, "infeasible" if r[key] is None else fmt(r[key]),
                  fmt(r["gpus"], 0), fmt(r["usd_per_m_output_tokens"]), fmt(r["usd_per_gpu_h"], 2),
                  fmt(r["ttft_s_p99"]), fmt(r["tpot_s_p99"] * 1000, 1), fmt(r["slo_attainment"]),
                  fmt(r["gpu_busy_fraction"]))
    console.print(t)
    if best is not None:
        console.print(f"cheapest within the SLO: candidate {int(best['candidate'])} ({best['overrides']}) at "
                      f"${best['usd_per_m_output_tokens']:.3f} per million output tokens")
    else:
        console.print("no candidate meets the SLO within the search limits")
    console.print(f"stopping rules: {STOPPING_RULES}")
    console.print(f"results: {out}")
    return 0


def _row(i: int, cand: dict[str, Any], search: Search) -> dict[str, Any]:
    rows = search.rows_at(search.answer) if search.answer is not None else (search.evaluations[-1][2]
                                                                            if search.evaluations else [])
    row = summary_row(i, cand, rows)
    row["feasible"] = search.answer is not None
    row["evaluations"] = len(search.evaluations)
    return row


def add_parser(sub) -> None:
    s = sub.add_parser("plan", help="find the smallest/cheapest deployment within the SLO, or the highest load")
    s.add_argument("scenario", help="scenario YAML (optionally with a plan: block)")
    s.add_argument("--rate", type=float, default=None,
                   help="load to plan for, in the load knob's units (default: plan.rate or the scenario's load)")
    s.add_argument("--max-rate", action="store_true", help="find the highest load within the SLO instead")
    s.add_argument("--replications", type=int, default=None, help="replications per evaluation (default 3)")
    s.add_argument("--max-replicas", type=int, default=None, help="upper limit of the replica search (default 64)")
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPU count)")
    s.add_argument("--dask", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Dask distributed: a scheduler address, or no value for a local cluster")
    s.add_argument("--out", type=Path, default=None, help="output folder (default: results/<name>/plan-<time>)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key")
    s.add_argument("--quiet", action="store_true", help="no progress lines and no table")
    s.set_defaults(func=cmd_plan)
