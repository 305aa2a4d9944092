"""Fidelity benchmark: simulate every measured point in sim/data/measured_points.yaml (published
TensorRT-LLM max-throughput results across prompt and output lengths, and batch-1 decode steps from
min-latency reports) and print simulated vs measured.

    python bench/fidelity.py [--uncalibrated] [--profile PROFILE.yaml]

A throughput point runs as the benchmark did: an offline burst of fixed-length requests (1k/1k,
1k/8k, 8k/1k, 32k/1k, 1k/32k) on the same model, GPU, precision and layout (TP, or DEP: attention
ranks plus expert parallelism), with the batch size and token budget trtllm-bench derives (per
attention rank); output tokens/s per GPU over the makespan. A step
point is one decode step at batch 1; its measured and simulated values are tokens/s per user
(1 / step time). Points the simulator cannot express yet are listed as skipped, with the reason.
Then the scenario checks (measured_points.yaml, scenario_checks): decode pools of disaggregated
deployments simulated from scenario files, not fitted (`--skip-scenarios` leaves them out).

To make a wrong point understandable, each row also shows the mean batch the simulation reached
(per attention rank for DEP layouts) and the step-time breakdown of a decode step at that batch and
the benchmark's mean context (prompt + half the output; sim/perf/split.py): compute and memory time
(the step takes the larger), communication (all-reduce plus expert all-to-all) and fixed overheads
(per iteration, per sequence, per layer), in milliseconds, and which side binds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.calibrate import Measurement, error_table, reference_points, scenario_data  # noqa: E402
from sim.errors import InputError  # noqa: E402
from sim.perf.split import decode_step_split  # noqa: E402
from sim.runner import ranked_pricing_for, run, step_model_for  # noqa: E402
from sim.scenario import load_scenario, scenario_from_dict  # noqa: E402


def batch_and_breakdown(m: Measurement, perf: dict) -> str:
    """Mean batch reached (per attention rank), and the breakdown of a decode step there (ms)."""
    sc = scenario_from_dict(scenario_data(m, perf), source=f"measurement {m.id}")
    ranks = sc.serving.parallelism.dp_attention
    step = m.kind == "step"
    batch = float(m.decode_seqs) if step else run(sc).summary["batch_size_mean"] / ranks
    model = step_model_for(sc)
    ctx = m.context_tokens if step else m.input_tokens + m.output_tokens / 2
    split = decode_step_split(model, ranked_pricing_for(sc, model), ranks, batch, ctx)
    if split["step_ms"] != split["step_ms"]:          # a measured table: no terms
        return f"{batch:6.0f}"
    binds = "compute" if split["step_compute_ms"] >= split["step_memory_ms"] else "memory"
    comm = split["step_allreduce_ms"] + split["step_all_to_all_ms"]
    return (f"{batch:6.0f} {split['step_compute_ms']:8.2f} {split['step_memory_ms']:8.2f} {comm:6.2f} "
            f"{split['step_overhead_ms']:6.2f}  {binds}")


def layout(m: Measurement) -> str:
    """TP2, DEP4 (attention ranks with experts split over them), ..."""
    dp = int(m.config.get("dp_attention", 1))
    return f"DEP{dp}" if dp > 1 and int(m.config["tp"]) == 1 else f"TP{m.config['tp']}" + (f"xDP{dp}" if dp > 1 else "")


#: The step-time parameters before calibration (the roofline's first-guess defaults).
UNCALIBRATED = {"hbm_bw_efficiency": 0.80, "compute_efficiency": 0.55, "iteration_overhead_s": 1.5e-3,
                "per_seq_overhead_s": 0.0, "gemm_half_tokens": 0.0, "hbm_half_bytes_per_layer": 0.0,
                "layer_overhead_s": 0.0, "moe_layer_overhead_s": 0.0, "attention_efficiency": 0.0,
                "comm_efficiency": 0.70, "collective_latency_s": 8e-6}


def shown(m: Measurement, value: float) -> float:
    """Throughput as is; a step time as tokens/s per user."""
    return 1.0 / value if m.kind == "step" else value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--uncalibrated", action="store_true", help="use the pre-calibration first-guess parameters")
    which.add_argument("--profile", type=Path, default=None, help="a perf profile from 'run.py calibrate'")
    ap.add_argument("--skip-scenarios", action="store_true", help="leave out the scenario checks (about 30 s)")
    args = ap.parse_args()
    perf: dict = {}
    label = "calibrated defaults (sim/data/calibration.yaml)"
    if args.uncalibrated:
        perf, label = UNCALIBRATED, "uncalibrated first-guess parameters"
    elif args.profile:
        # Loaded as a scenario loads it (perf: {profile: FILE}), with the same checks and messages.
        perf, label = {"profile": str(args.profile.resolve())}, f"profile {args.profile}"
    ms, skipped, header = reference_points()
    try:
        table = error_table(ms, perf)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"source: {header['source']}")
    print(f"unit: {header['unit']} (offline bursts; ISL/OSL in the point id, 1k/1k when none), tokens/s per user "
          f"for batch-1 steps; parameters: {label}\n")
    print(f"{'point':30s} {'GPU':9s} {'layout':>6s} {'weights/compute':>15s} {'measured':>9s} {'simulated':>9s} "
          f"{'error':>7s} {'batch':>6s} {'cmp ms':>8s} {'mem ms':>8s} {'comm':>6s} {'ovhd':>6s}  binds")
    by_id = {m.id: m for m in ms}
    errors = []
    for _, r in table.iterrows():
        m = by_id[r["id"]]
        measured, simulated = shown(m, r["measured"]), shown(m, r["predicted"])
        errors.append(simulated / measured - 1.0)
        print(f"{r['id']:30s} {r['gpu']:9s} {layout(m):>6s} {r['weights'] + '/' + r['compute']:>15s} "
              f"{measured:9,.0f} {simulated:9,.0f} {errors[-1]:+7.1%} "
              f"{batch_and_breakdown(m, perf)}")
    abs_err = [abs(e) for e in errors]
    print(f"\nmedian absolute error {statistics.median(abs_err):.1%}; max absolute error {max(abs_err):.1%} "
          f"({len(table)} points)")
    if skipped:
        print(f"\nskipped ({len(skipped)}), not expressible yet:")
        for s in skipped:
            print(f"  {s['id']:34s} measured {s['measured']:>7,} : {s['reason']}")
    checks = header.get("scenario_checks") or []
    if checks and not args.skip_scenarios and not perf:     # the scenarios run with the calibrated defaults
        print("\nscenario checks (not fitted; decode pools of disaggregated deployments, their unpublished "
              "conditions assumed in each file), output tokens/s per GPU:")
        for c in checks:
            summary = run(load_scenario(ROOT / c["scenario"])).summary
            sim_v = summary["output_tok_per_s_per_gpu"]
            print(f"  {c['id']:36s} measured {c['measured']:>7,} simulated {sim_v:>7,.0f} {sim_v / c['measured'] - 1:+7.1%}"
                  f"  ({c['scenario']})")


if __name__ == "__main__":
    main()
