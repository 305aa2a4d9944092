"""`run`: simulate one scenario, write results/<scenario>/<run-id>/ atomically, print a summary."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from sim.errors import InputError
from sim.kv_hierarchy import TierParams, resolve_tiers
from sim.metrics.registry import RUN_TABLE, SPEC_TABLE, kv_table, row_cells
from sim.runner import Result
from sim.scenario import KvTier, Scenario
from simcli.common import RESULTS_DIR, parse_set, progress_bar
from simcli.output import FolderId, atomic_dir, check_out_dir, make_console, show_progress, write_json
from simcli.report_cmd import Progress, report_after


def resolved_scenario(sc: Scenario, seed: int, tiers: list[TierParams] | None = None) -> dict[str, Any]:
    """The scenario as run: catalog specs filled in, KV tiers with their defaults (`tiers`, when
    the caller resolved them already), and the seed actually used (scenario.resolved.yaml;
    simulating it again gives the same results)."""
    resolved = {**sc.model_dump(mode="json"), "seed": seed}
    tiers = resolve_tiers(sc) if tiers is None else tiers
    if tiers:       # the tiers as run: their defaults filled in (and where each came from, in run.json)
        resolved["serving"]["kv_cache"]["tiers"] = [{k: getattr(t, k) for k in KvTier.model_fields} for t in tiers]
    return resolved


def write_results(result: Result, out_dir: Path, scenario_path: str, seed: int, *,
                  replace: FolderId | None = None) -> Path:
    """Write a run's files into out_dir atomically (temporary folder + rename); returns the folder
    they went to (see `output.atomic_dir`: a taken name gets a suffix, unless `replace` identifies
    the earlier run there that may be replaced)."""
    from sim import __version__

    with atomic_dir(out_dir, "run", replace=replace) as res:
        tmp = res.tmp
        sc = result.scenario
        tiers = resolve_tiers(sc)
        (tmp / "scenario.resolved.yaml").write_text(yaml.safe_dump(resolved_scenario(sc, seed, tiers),
                                                                   sort_keys=False), encoding="utf-8")
        meta = {"scenario": sc.name, "scenario_file": scenario_path, "seed": result.seed, "version": __version__,
                "created_utc": datetime.now(UTC).isoformat(timespec="seconds"), "wall_s": result.wall_s}
        if tiers:
            meta["kv_tier_sources"] = {t.kind: dict(t.sources) for t in tiers}
        write_json(tmp / "run.json", meta)
        write_json(tmp / "summary.json", {**result.summary, "seed": result.seed})
        result.requests.to_parquet(tmp / "requests.parquet", index=False)
        result.iterations.to_parquet(tmp / "iterations.parquet", index=False)
        result.levels.to_parquet(tmp / "levels.parquet", index=False)
        result.replicas.to_parquet(tmp / "replicas.parquet", index=False)
    return res.path


def run_id(seed: int) -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-seed{seed}"


def print_summary(result: Result, out_dir: Path, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    s = result.summary
    sc = result.scenario
    t = Table(title=escape(f"{sc.name}: {sc.serving.replicas} x {sc.serving.parallelism.gpus} {sc.hardware.gpu.name} "
                           f"serving {sc.model.name} ({s['window']} window {s['window_start_s']:,.0f}-"
                           f"{s['window_end_s']:,.0f} s, seed {result.seed})"),
              show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("unit")
    targets = f"TTFT <= {sc.slo.ttft_s:g} s, TPOT <= {sc.slo.tpot_s:g} s"
    context = {"slo_attainment": f" ({targets})", "slo_met": f" (p{sc.slo.percentile:g} of each within: {targets})"}
    rows = RUN_TABLE + (SPEC_TABLE if sc.speculative is not None else ()) + \
        (kv_table(s) if "tier_hbm_prefix_gb_mean" in s else ())
    for label, names in rows:
        if names[0].startswith("spec_speedup") and names[0] not in s:
            continue                       # only with --compare-no-spec
        if names[0] == "spec_cost_ratio" and names[0] not in s:
            continue
        values, unit = row_cells(s, names)
        t.add_row(label + context.get(names[0], ""), values, unit)
    console.print(t)
    if "spec_speedup_tpot" in s:
        console.print(comparison_table(s))
    if s.get("step_table_extrapolated"):
        console.print(f"[yellow]warning:[/yellow] the measured step table was extrapolated: "
                      f"{escape(s['step_table_extrapolation'])}")
    console.print(f"results: {escape(str(out_dir))}")


def comparison_table(s: dict[str, Any]) -> Any:
    """The run with speculation beside the same scenario and seed without it."""
    from rich.table import Table

    from sim.metrics.registry import metric
    from sim.speculation import COMPARED

    t = Table(title="with vs without speculative decoding (same seed)", header_style="bold")
    for col, justify in (("metric", "left"), ("with", "right"), ("without", "right"), ("unit", "left")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name in COMPARED:
        m = metric(name)
        t.add_row(m.label, m.display(s.get(name)), m.display(s.get(f"no_spec_{name}")), m.unit)
    return t


def cmd_run(args: argparse.Namespace) -> int:
    from sim.runner import build, execute, without_speculation
    from sim.scenario import load_scenario
    from sim.speculation import comparison

    sc = load_scenario(args.scenario, overrides=parse_set(args.set))
    seed = sc.seed if args.seed is None else args.seed
    if seed < 0:
        raise InputError(f"--seed: must be >= 0, got {seed}")
    if args.compare_no_spec and sc.speculative is None:
        raise InputError(f"--compare-no-spec: scenario {sc.name!r} has no speculative: block to compare against")
    out_dir = args.out if args.out is not None else RESULTS_DIR / sc.name / run_id(seed)
    prior = check_out_dir(out_dir, "run", given=args.out is not None)   # before simulating: a bad --out must not cost the run
    console = make_console()
    sim = build(sc, seed)
    with progress_bar(console, "simulating", "s of simulated arrivals", sc.duration_s,
                      show_progress(args.quiet)) as update:
        result = execute(sim, progress=update if show_progress(args.quiet) else None)
    if args.compare_no_spec:
        # The same scenario and seed without the speculative block: the same arrivals and lengths
        # (closed-loop clients keep their lengths, but come back sooner when answers come faster).
        with progress_bar(console, "simulating without speculation", "s of simulated arrivals", sc.duration_s,
                          show_progress(args.quiet)) as update:
            plain = execute(build(without_speculation(sc), seed), progress=update if show_progress(args.quiet) else None)
        result.summary.update(comparison(result.summary, plain.summary))
    out_dir = write_results(result, out_dir, args.scenario, seed, replace=prior)
    if not args.no_report:
        report_after(out_dir, Progress(console, show_progress(args.quiet)))
    if args.quiet:
        print(out_dir)
    else:
        print_summary(result, out_dir, console)
        if not args.no_report:
            console.print(f"report: {out_dir / 'report.html'} (and report.md)")
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="run one scenario and write its results")
    r.add_argument("scenario", help="scenario YAML file")
    r.add_argument("--seed", type=int, default=None, help="root seed (default: the scenario's)")
    r.add_argument("--out", type=Path, default=None, help="output folder (default: results/<scenario>/<run-id>); an existing one is replaced only if it "
                   "holds an earlier run")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set duration_s=60 (repeatable)")
    r.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    r.add_argument("--no-report", action="store_true", help="do not write report.html and report.md (nor simulate "
                   "the report's sensitivity variations)")
    r.add_argument("--compare-no-spec", action="store_true",
                   help="also run the scenario without its speculative: block (same seed) and report "
                        "the effective speedup")
    r.set_defaults(func=cmd_run)
