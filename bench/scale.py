"""Scale benchmark: one million requests through the CLI's own path (build, simulate, write every
result file), as the hostile-input report measured it: Poisson at 300 requests/s for 3,333 s,
lognormal prompts (mean 1,100, cv 0.9) and outputs (mean 220, cv 1.0), 64 replicas of
Llama-3.1-8B on H100.

    python bench/scale.py [--requests 1000000] [--out DIR]

Prints wall time for the simulation and for writing the results, simulated requests per wall
second, peak memory and the size of the result files. Single process.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.runner import build, execute  # noqa: E402
from sim.scenario import scenario_from_dict  # noqa: E402
from simcli.run_cmd import write_results  # noqa: E402

RATE_PER_S = 300.0


def scenario(requests: int) -> dict:
    return {
        "name": "scale-1m",
        "seed": 1,
        "duration_s": requests / RATE_PER_S,
        "warmup_s": 0,
        "model": "llama-3.1-8b",
        "hardware": {"gpu": "h100-sxm"},
        "serving": {"replicas": 64},
        "workload": {
            "arrivals": {"kind": "poisson", "rate_per_s": RATE_PER_S},
            "input_tokens": {"kind": "lognormal", "mean": 1100, "cv": 0.9},
            "output_tokens": {"kind": "lognormal", "mean": 220, "cv": 1.0},
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=None, help="result folder (default: a temporary one, removed)")
    args = ap.parse_args()
    sc = scenario_from_dict(scenario(args.requests))
    t0 = time.perf_counter()
    res = execute(build(sc))
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = write_results(res, args.out or Path(tmp) / "run", "bench/scale.py", sc.seed)
        t2 = time.perf_counter()
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    n = len(res.requests)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"requests simulated        {n:,}")
    print(f"wall time, simulation     {t1 - t0:.1f} s")
    print(f"wall time, writing        {t2 - t1:.1f} s")
    print(f"simulated requests/wall-s {n / (t1 - t0):,.0f}")
    print(f"peak memory (max RSS)     {peak_mb:,.0f} MB")
    print(f"result files              {size_mb:,.0f} MB")


if __name__ == "__main__":
    main()
