"""Speed benchmark: simulate 100,000 requests (Azure-conversation lengths) across 8 replicas of
Llama-3.1-8B on H100 and print wall time, simulated requests per wall second and peak memory.

    python bench/speed.py [--requests 100000] [--rate 60] [--no-jumps] [--speculative] [--dep72] [--mooncake]

Arrivals are Poisson at --rate requests/s; prompt and output lengths are resampled from the
bundled Azure LLM inference 2023 conversation trace. Single process, single core.
`--speculative` adds EAGLE-style speculative decoding (k = 3 drafts, per-token acceptance 0.7,
each request's accepted lengths drawn from its own stream). `--dep72` instead simulates one 72-GPU
DEP replica of DeepSeek-R1 in FP4 on a GB300 NVL72 rack (72 attention ranks sharing EP72 experts
with 32 redundant slots, two-batch overlap), Poisson at --rate (default 100/s here) with the same
trace lengths. `--mooncake` replays the bundled Mooncake conversation trace (12,031 requests over an
hour, prompts of 12,035 tokens on average) with prefix reuse over HBM, host DRAM and NVMe, as
scenarios/mooncake_prefix_tiers_h200.yaml does (Llama-3.1-70B FP8, four TP2 replicas on one H200
node); --requests and --rate do not apply to it. `--mooncake --no-prefix` replays the same trace on
the same cluster with prefix caching and the tiers off: the engine's own cost on these long
prompts, to compare the prefix bookkeeping against.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from sim.runner import build, execute  # noqa: E402
from sim.scenario import load_scenario, scenario_from_dict  # noqa: E402

TRACE = "bundled:AzureLLMInferenceTrace_conv.csv"


SPECULATIVE = {"method": "eagle", "k": 3, "acceptance": {"rate": 0.7}}


def scenario(requests: int, rate_per_s: float, speculative: bool = False) -> dict:
    return {
        **({"speculative": SPECULATIVE} if speculative else {}),
        "name": "bench-speed",
        "seed": 1,
        "duration_s": requests / rate_per_s,
        "warmup_s": 0,
        "model": "llama-3.1-8b",
        "hardware": {"gpu": "h100-sxm"},
        "serving": {"precision": {"weights": "bf16", "kv_cache": "bf16"}, "replicas": 8,
                    "batching": {"max_num_seqs": 256, "max_num_batched_tokens": 8192},
                    "router": "least_outstanding"},
        "workload": {
            "arrivals": {"kind": "poisson", "rate_per_s": rate_per_s},
            "input_tokens": {"kind": "empirical", "path": TRACE, "column": "ContextTokens"},
            "output_tokens": {"kind": "empirical", "path": TRACE, "column": "GeneratedTokens"},
        },
    }


def dep72_scenario(requests: int, rate_per_s: float) -> dict:
    d = scenario(requests, rate_per_s)
    d.update({"name": "bench-speed-dep72", "model": "deepseek-r1", "hardware": {"gpu": "gb300"}})
    d["serving"] = {"precision": {"weights": "fp4", "kv_cache": "fp8", "compute": "fp4"}, "replicas": 1,
                    "parallelism": {"tp": 1, "dp_attention": 72, "ep": 72, "redundant_experts": 32,
                                    "two_batch_overlap": True},
                    "batching": {"max_num_seqs": 128, "max_num_batched_tokens": 2048}}
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=None, help="arrival rate, requests/s (60; 100 with --dep72)")
    ap.add_argument("--no-jumps", action="store_true", help="one event per decode step (reference mode)")
    ap.add_argument("--speculative", action="store_true", help="EAGLE speculative decoding, k = 3, acceptance 0.7")
    ap.add_argument("--dep72", action="store_true", help="one DEP72 replica of DeepSeek-R1 on a GB300 NVL72 rack")
    ap.add_argument("--mooncake", action="store_true",
                    help="the Mooncake conversation trace with prefix reuse over HBM, host DRAM and NVMe")
    ap.add_argument("--no-prefix", action="store_true", help="with --mooncake: prefix caching and the tiers off")
    args = ap.parse_args()
    if args.no_prefix and not args.mooncake:
        ap.error("--no-prefix applies to --mooncake only")
    if args.mooncake:
        path = Path(__file__).resolve().parents[1] / "scenarios" / "mooncake_prefix_tiers_h200.yaml"
        if args.no_prefix:
            d = yaml.safe_load(path.read_text())
            d["serving"]["kv_cache"] = {}
            sc = scenario_from_dict(d)
        else:
            sc = load_scenario(path)
    elif args.dep72:
        sc = scenario_from_dict(dep72_scenario(args.requests, args.rate or 100.0))
    else:
        sc = scenario_from_dict(scenario(args.requests, args.rate or 60.0, args.speculative))
    t0 = time.perf_counter()
    sim = build(sc, allow_jumps=not args.no_jumps)
    t_built = time.perf_counter()
    res = execute(sim)
    wall = time.perf_counter() - t0
    n = len(res.requests)
    s = res.summary
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    events = len(res.iterations)
    print(f"requests simulated        {n:,}")
    print(f"simulated time            {res.sim_end_s:,.0f} s")
    print(f"output tokens simulated   {int(res.requests['output_tokens'].sum()):,}")
    print(f"iteration records         {events:,} ({res.iterations['steps'].sum():,} decode/mixed steps)")
    print(f"wall time (build + run)   {wall:.2f} s")
    print(f"simulated requests/wall-s {n / wall:,.0f} ({n / (wall - (t_built - t0)):,.0f} without the build, "
          f"{t_built - t0:.2f} s: reading the trace, drawing the workload)")
    if "prefix_hit_rate" in s:
        print(f"prefix hits               {s['prefix_hit_rate']:.3f} of prompt tokens (HBM {s['prefix_hit_rate_hbm']:.3f})")
    print(f"peak memory (max RSS)     {peak_mb:,.0f} MB")
    print(f"GPU busy fraction         {s['gpu_busy_fraction']:.3f}; mean batch {s['batch_size_mean']:.1f} seqs")


if __name__ == "__main__":
    main()
