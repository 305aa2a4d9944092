"""Fidelity benchmark: simulate every measured point in sim/data/measured_points.yaml (published
TensorRT-LLM max-throughput results across prompt and output lengths, and batch-1 decode steps from
min-latency reports) and print simulated vs measured.

    python bench/fidelity.py [--uncalibrated] [--profile PROFILE.yaml]

A throughput point runs as the benchmark did: an offline burst of fixed-length requests (1k/1k,
1k/8k, 8k/1k, 32k/1k, 1k/32k) on the same model, GPU, precision and tensor parallelism, with the
batch size and token budget trtllm-bench derives; output tokens/s per GPU over the makespan. A step
point is one decode step at batch 1; its measured and simulated values are tokens/s per user
(1 / step time). Points the simulator cannot express yet are listed as skipped, with the reason.

To make a wrong point understandable, each row also shows the mean batch the simulation reached
and the step-time breakdown of a decode step at that batch and the benchmark's mean context
(prompt + half the output): compute and memory time (the step takes the larger), all-reduce
communication and fixed overheads (per iteration, per sequence, per layer), in milliseconds, and
which side binds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.calibrate import Measurement, error_table, reference_points, scenario_data  # noqa: E402
from sim.errors import InputError  # noqa: E402
from sim.perf import RooflineStepModel, StepShape  # noqa: E402
from sim.runner import run, step_model_for  # noqa: E402
from sim.scenario import scenario_from_dict  # noqa: E402


def batch_and_breakdown(m: Measurement, perf: dict) -> str:
    """Mean batch reached, and the breakdown of a decode step there (ms)."""
    sc = scenario_from_dict(scenario_data(m, perf), source=f"measurement {m.id}")
    step = m.kind == "step"
    batch = float(m.decode_seqs) if step else run(sc).summary["batch_size_mean"]
    model = step_model_for(sc)
    if not isinstance(model, RooflineStepModel):
        return f"{batch:6.0f}"
    b = max(1, int(round(batch)))
    ctx = m.context_tokens if step else m.input_tokens + m.output_tokens / 2
    br = model.breakdown(StepShape(b, b * ctx))
    binds = "compute" if br.compute_s >= br.memory_s else "memory"
    return (f"{batch:6.0f} {br.compute_s * 1e3:8.2f} {br.memory_s * 1e3:8.2f} {br.comm_s * 1e3:6.2f} "
            f"{br.overhead_s * 1e3:6.2f}  {binds}")

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
    print(f"{'point':30s} {'GPU':9s} {'TP':>2s} {'weights/compute':>15s} {'measured':>9s} {'simulated':>9s} "
          f"{'error':>7s} {'batch':>6s} {'cmp ms':>8s} {'mem ms':>8s} {'comm':>6s} {'ovhd':>6s}  binds")
    by_id = {m.id: m for m in ms}
    errors = []
    for _, r in table.iterrows():
        m = by_id[r["id"]]
        measured, simulated = shown(m, r["measured"]), shown(m, r["predicted"])
        errors.append(simulated / measured - 1.0)
        print(f"{r['id']:30s} {r['gpu']:9s} {r['tp']:>2d} {r['weights'] + '/' + r['compute']:>15s} "
              f"{measured:9,.0f} {simulated:9,.0f} {errors[-1]:+7.1%} "
              f"{batch_and_breakdown(m, perf)}")
    abs_err = [abs(e) for e in errors]
    print(f"\nmedian absolute error {statistics.median(abs_err):.1%}; max absolute error {max(abs_err):.1%} "
          f"({len(table)} points)")
    print(f"\nskipped ({len(skipped)}), not expressible yet:")
    for s in skipped:
        print(f"  {s['id']:34s} measured {s['measured']:>7,} : {s['reason']}")


if __name__ == "__main__":
    main()
