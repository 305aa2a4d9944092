"""Sweep benchmark: points per minute on local worker processes (default 2).

    python bench/sweep.py [--workers 2] [--points 24] [--dask]

Each point is a 10-minute simulated window of Llama-3.1-8B on 4 x H100 at a different arrival
rate (Poisson, lognormal chat lengths, about 6,000-30,000 requests per point). Prints wall time,
points per minute, and simulated requests per wall second across the pool.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.sweep import SweepSpec, dask_executor, execute, expand, local_executor, make_points  # noqa: E402

BASE = {
    "name": "bench-sweep", "seed": 1, "duration_s": 600.0, "warmup_s": 60.0,
    "model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm"},
    "serving": {"replicas": 4, "batching": {"max_num_seqs": 256, "max_num_batched_tokens": 8192}},
    "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 10.0},
                 "input_tokens": {"kind": "lognormal", "mean": 1100, "cv": 0.9},
                 "output_tokens": {"kind": "lognormal", "mean": 220, "cv": 1.0}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--points", type=int, default=24)
    ap.add_argument("--dask", action="store_true", help="use a local Dask cluster instead of a process pool")
    args = ap.parse_args()
    rates = [10.0 + 40.0 * i / max(1, args.points - 1) for i in range(args.points)]
    points = make_points(expand(SweepSpec(axes={"workload.arrivals.rate_per_s": rates})), 1, root_seed=1)
    t0 = time.perf_counter()
    ctx = dask_executor(None, args.workers) if args.dask else local_executor(args.workers)
    with ctx as ex:
        t_ready = time.perf_counter()
        rows = list(execute(BASE, None, points, ex))
    wall = time.perf_counter() - t0
    run_wall = time.perf_counter() - t_ready
    errors = [r for r in rows if r["error"]]
    requests = sum(int(r.get("requests_arrived", 0)) for r in rows)
    print(f"executor                    {'dask local cluster' if args.dask else 'process pool'}, {args.workers} workers")
    print(f"points                      {len(rows)} ({len(errors)} failed)")
    print(f"wall time                   {wall:.1f} s ({wall - run_wall:.1f} s starting workers)")
    print(f"points per minute           {len(rows) / wall * 60:.1f}")
    print(f"simulated requests/wall-s   {requests / run_wall:,.0f} (window requests, all workers)")


if __name__ == "__main__":
    main()
