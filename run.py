"""Command-line interface of the token factory simulator (thin: parse, call sim, write, print).

    python run.py SCENARIO.yaml [--seed N] [--out DIR] [--set key=value ...] [--quiet]
    python run.py run SCENARIO.yaml ...          (same thing)

Writes results/<scenario>/<run-id>/ (or --out DIR) atomically: everything is written to a
temporary folder beside the target and renamed into place at the end, so an interrupted or failed
run leaves nothing half-written. Bad input prints one message per problem and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

RESULTS_DIR = Path("results")
SUBCOMMANDS = ("run",)


def _parse_set(items: list[str]) -> dict[str, Any]:
    from sim.errors import InputError

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description="Simulate an LLM inference deployment from a scenario file.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one scenario and write its results")
    r.add_argument("scenario", help="scenario YAML file")
    r.add_argument("--seed", type=int, default=None, help="root seed (default: the scenario's)")
    r.add_argument("--out", type=Path, default=None, help="output folder (default: results/<scenario>/<run-id>)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set duration_s=60 (repeatable)")
    r.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    return p


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if hasattr(v, "item"):
        return _jsonable(v.item())
    return v


def write_results(result, out_dir: Path, scenario_path: str) -> Path:
    """Write a run's files into out_dir atomically (temp folder + rename)."""
    from sim import __version__

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        sc = result.scenario
        (tmp / "scenario.resolved.yaml").write_text(
            yaml.safe_dump(sc.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        meta = {"scenario": sc.name, "scenario_file": scenario_path, "seed": result.seed, "version": __version__,
                "created_utc": datetime.now(UTC).isoformat(timespec="seconds"), "wall_s": result.wall_s}
        (tmp / "run.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        summary = {k: _jsonable(v) for k, v in result.summary.items()}
        summary["seed"] = result.seed
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        result.requests.to_parquet(tmp / "requests.parquet", index=False)
        result.iterations.to_parquet(tmp / "iterations.parquet", index=False)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _run_id(seed: int) -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-seed{seed}"


def _unique(path: Path) -> Path:
    cand, i = path, 1
    while cand.exists():
        cand = path.with_name(f"{path.name}-{i}")
        i += 1
    return cand


def _fmt(v: float, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    return f"{v:,.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"


def print_summary(result, out_dir: Path, console) -> None:
    from rich.table import Table

    s = result.summary
    sc = result.scenario
    t = Table(title=f"{sc.name}: {sc.serving.replicas} x {sc.serving.parallelism.tp} {sc.hardware.gpu.name} "
                    f"serving {sc.model.name} (window {s['window_s']:.0f} s, seed {result.seed})",
              show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("unit")
    rows = [
        ("requests arrived / completed / rejected", f"{s['requests_arrived']:,} / {s['requests_completed']:,} / "
                                                    f"{s['requests_rejected']:,}", "requests"),
        ("TTFT p50 / p90 / p99", " / ".join(_fmt(s[f"ttft_s_{p}"]) for p in ("p50", "p90", "p99")), "s"),
        ("TPOT p50 / p90 / p99", " / ".join(_fmt(s[f"tpot_s_{p}"] * 1000, 1) for p in ("p50", "p90", "p99")), "ms"),
        ("E2E latency p50 / p99", " / ".join(_fmt(s[f"e2e_s_{p}"]) for p in ("p50", "p99")), "s"),
        ("throughput output / total", f"{_fmt(s['output_tok_per_s'])} / {_fmt(s['total_tok_per_s'])}", "tokens/s"),
        ("throughput per GPU output / total", f"{_fmt(s['output_tok_per_s_per_gpu'])} / "
                                               f"{_fmt(s['total_tok_per_s_per_gpu'])}", "tokens/s/GPU"),
        ("speed per user (1/TPOT, p50)", _fmt(s["output_tok_per_s_per_user_p50"], 1), "tokens/s"),
        ("GPU busy fraction", _fmt(s["gpu_busy_fraction"]), "fraction"),
        ("mean batch / queue / KV occupancy", f"{_fmt(s['batch_size_mean'], 1)} / {_fmt(s['queue_len_mean'], 2)} / "
                                              f"{_fmt(s['kv_occupancy_mean'])}", "seqs / requests / fraction"),
        (f"SLO (TTFT<={sc.slo.ttft_s}s, TPOT<={sc.slo.tpot_s}s) attainment", _fmt(s["slo_attainment"]), "fraction"),
        (f"SLO met at p{sc.slo.percentile:g}", _fmt(s["slo_met"]), ""),
        ("price", _fmt(s["price_usd_per_gpu_h"]), "$/GPU-hour"),
        ("cost per million output tokens", _fmt(s["usd_per_m_output_tokens"]), "$/M tokens"),
        ("cost per million total tokens", _fmt(s["usd_per_m_total_tokens"]), "$/M tokens"),
        ("cost per million SLO-meeting output tokens", _fmt(s["usd_per_m_slo_output_tokens"]), "$/M tokens"),
        ("energy per output token", _fmt(s["joules_per_output_token"]), "J/token"),
        ("simulation speed", _fmt(s["sim_requests_per_wall_s"], 0), "requests/wall-s"),
    ]
    for row in rows:
        t.add_row(*row)
    console.print(t)
    console.print(f"results: {out_dir}")


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sim.runner import build, execute
    from sim.scenario import load_scenario

    sc = load_scenario(args.scenario, overrides=_parse_set(args.set))
    seed = sc.seed if args.seed is None else args.seed
    if seed < 0:
        from sim.errors import InputError
        raise InputError(f"--seed: must be >= 0, got {seed}")
    console = Console(stderr=False)
    sim = build(sc, seed)
    show = not args.quiet and console.is_terminal and not os.environ.get("CI")
    if show:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.percentage:>3.0f}% of simulated duration"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as prog:
            task = prog.add_task("sim", total=sc.duration_s)
            result = execute(sim, progress=lambda t: prog.update(task, completed=min(t, sc.duration_s)))
    else:
        result = execute(sim)
    out_dir = args.out if args.out is not None else _unique(RESULTS_DIR / sc.name / _run_id(seed))
    write_results(result, out_dir, args.scenario)
    if args.quiet:
        print(out_dir)
    else:
        print_summary(result, out_dir, console)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    from sim.errors import InputError

    try:
        return {"run": cmd_run}[args.command](args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
