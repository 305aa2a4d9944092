"""`run`: simulate one scenario, write results/<scenario>/<run-id>/ atomically, print a summary."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from sim.errors import InputError
from simcli.output import atomic_dir, fmt, make_console, show_progress, write_json

RESULTS_DIR = Path("results")


def parse_set(items: list[str]) -> dict[str, Any]:
    """--set key=value pairs; values are parsed as YAML (numbers, lists, strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set: expected key=value, got {item!r}")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise InputError(f"--set {key}: cannot parse value {raw!r}") from None
    return out


def write_results(result, out_dir: Path, scenario_path: str) -> Path:
    """Write a run's files into out_dir atomically (temporary folder + rename)."""
    from sim import __version__

    with atomic_dir(out_dir) as tmp:
        sc = result.scenario
        (tmp / "scenario.resolved.yaml").write_text(
            yaml.safe_dump(sc.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        meta = {"scenario": sc.name, "scenario_file": scenario_path, "seed": result.seed, "version": __version__,
                "created_utc": datetime.now(UTC).isoformat(timespec="seconds"), "wall_s": result.wall_s}
        write_json(tmp / "run.json", meta)
        write_json(tmp / "summary.json", {**result.summary, "seed": result.seed})
        result.requests.to_parquet(tmp / "requests.parquet", index=False)
        result.iterations.to_parquet(tmp / "iterations.parquet", index=False)
        result.levels.to_parquet(tmp / "levels.parquet", index=False)
        result.replicas.to_parquet(tmp / "replicas.parquet", index=False)
    return out_dir


def run_id(seed: int) -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-seed{seed}"


def unique(path: Path) -> Path:
    """`path`, or `stem-1.suffix`, `stem-2.suffix`, ... if it exists."""
    cand, i = path, 1
    while cand.exists():
        cand = path.with_name(f"{path.stem}-{i}{path.suffix}")
        i += 1
    return cand


def print_summary(result, out_dir: Path, console) -> None:
    from rich.table import Table

    s = result.summary
    sc = result.scenario
    t = Table(title=f"{sc.name}: {sc.serving.replicas} x {sc.serving.parallelism.tp} {sc.hardware.gpu.name} "
                    f"serving {sc.model.name} ({s['window']} window {s['window_start_s']:,.0f}-{s['window_end_s']:,.0f} s, "
                    f"seed {result.seed})",
              show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("unit")
    rows = [
        ("requests arrived / completed / rejected", f"{s['requests_arrived']:,} / {s['requests_completed']:,} / "
                                                    f"{s['requests_rejected']:,}", "requests"),
        ("TTFT p50 / p90 / p99", " / ".join(fmt(s[f"ttft_s_{p}"]) for p in ("p50", "p90", "p99")), "s"),
        ("TPOT p50 / p90 / p99", " / ".join(fmt(s[f"tpot_s_{p}"] * 1000, 1) for p in ("p50", "p90", "p99")), "ms"),
        ("E2E latency p50 / p99", " / ".join(fmt(s[f"e2e_s_{p}"]) for p in ("p50", "p99")), "s"),
        ("throughput output / total", f"{fmt(s['output_tok_per_s'])} / {fmt(s['total_tok_per_s'])}", "tokens/s"),
        ("throughput per GPU output / total", f"{fmt(s['output_tok_per_s_per_gpu'])} / "
                                               f"{fmt(s['total_tok_per_s_per_gpu'])}", "tokens/s/GPU"),
        ("speed per user (1/TPOT, p50)", fmt(s["output_tok_per_s_per_user_p50"], 1), "tokens/s"),
        ("GPU busy fraction", fmt(s["gpu_busy_fraction"]), "fraction"),
        ("mean batch / queue / KV occupancy", f"{fmt(s['batch_size_mean'], 1)} / {fmt(s['queue_len_mean'], 2)} / "
                                              f"{fmt(s['kv_occupancy_mean'])}", "seqs / requests / fraction"),
        (f"SLO (TTFT<={sc.slo.ttft_s}s, TPOT<={sc.slo.tpot_s}s) attainment", fmt(s["slo_attainment"]), "fraction"),
        (f"SLO met at p{sc.slo.percentile:g}", fmt(s["slo_met"]), ""),
        ("price", fmt(s["price_usd_per_gpu_h"]), "$/GPU-hour"),
        ("cost per million output tokens", fmt(s["usd_per_m_output_tokens"]), "$/M tokens"),
        ("cost per million total tokens", fmt(s["usd_per_m_total_tokens"]), "$/M tokens"),
        ("cost per million SLO-meeting output tokens", fmt(s["usd_per_m_slo_output_tokens"]), "$/M tokens"),
        ("energy per output token", fmt(s["joules_per_output_token"]), "J/token"),
        ("simulation speed", fmt(s["sim_requests_per_wall_s"], 0), "requests/wall-s"),
    ]
    for row in rows:
        t.add_row(*row)
    console.print(t)
    if s.get("step_table_extrapolated"):
        console.print(f"[yellow]warning:[/yellow] the measured step table was extrapolated: {s['step_table_extrapolation']}")
    console.print(f"results: {out_dir}")


def cmd_run(args: argparse.Namespace) -> int:
    from sim.runner import build, execute
    from sim.scenario import load_scenario

    sc = load_scenario(args.scenario, overrides=parse_set(args.set))
    seed = sc.seed if args.seed is None else args.seed
    if seed < 0:
        raise InputError(f"--seed: must be >= 0, got {seed}")
    console = make_console()
    sim = build(sc, seed)
    if show_progress(args.quiet):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.percentage:>3.0f}% of simulated duration"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as prog:
            task = prog.add_task("sim", total=sc.duration_s)
            result = execute(sim, progress=lambda t: prog.update(task, completed=min(t, sc.duration_s)))
    else:
        result = execute(sim)
    out_dir = args.out if args.out is not None else unique(RESULTS_DIR / sc.name / run_id(seed))
    write_results(result, out_dir, args.scenario)
    if args.quiet:
        print(out_dir)
    else:
        print_summary(result, out_dir, console)
    return 0




def add_parser(sub) -> None:
    r = sub.add_parser("run", help="run one scenario and write its results")
    r.add_argument("scenario", help="scenario YAML file")
    r.add_argument("--seed", type=int, default=None, help="root seed (default: the scenario's)")
    r.add_argument("--out", type=Path, default=None, help="output folder (default: results/<scenario>/<run-id>)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set duration_s=60 (repeatable)")
    r.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    r.set_defaults(func=cmd_run)
