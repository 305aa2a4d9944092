"""Mutation check: break one formula at a time and show that the test suite notices.

    python bench/mutations.py [pytest args...]     (default: the metric, cost, router and engine tests)

Copies the project (without .git) to a temporary folder, applies each mutation there alone, runs
pytest, and prints whether a test failed ("caught"). The mutations are the ones the first code
review found the suite blind to: a queue length of zero, halved KV occupancy and busy fraction,
least_kv_load routed as least_outstanding, free swap transfers, goodput counting every request, and
decode runs' KV block-seconds forgetting the blocks held before the run; and, since the fidelity
issue, chip power ignoring the utilization model and small GEMMs running at full rate; and, since
the KV hierarchy, a tier evicting its newest chunks, free tier transfers, cached input priced as
uncached, and shared prefix chunks released twice.
Exit status 1 if any mutation goes unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_metrics.py", "tests/test_cost.py", "tests/test_router.py", "tests/test_scheduler.py",
         "tests/test_queueing.py", "tests/test_power.py", "tests/test_efficiency.py", "tests/test_kv_tiers.py"]
#: name -> (file, original text, mutated text)
MUTATIONS = {
    "queue length = 0": ("sim/metrics/summary.py", '"queue_len_mean": level_integral(lv, "waiting", window) / replica_s,',
                         '"queue_len_mean": 0.0,'),
    "KV occupancy halved": ("sim/metrics/summary.py", "/ replica_s / kv_blocks),", "/ replica_s / kv_blocks) / 2,"),
    "busy fraction halved": ("sim/metrics/summary.py", '"gpu_busy_fraction": busy,',
                             '"gpu_busy_fraction": busy / 2,'),
    "least_kv_load routes as least_outstanding": ("sim/cluster.py", '"least_kv_load": pick_least_kv_load,',
                                                  '"least_kv_load": pick_least_outstanding,'),
    "swap transfers free (allocator)": ("sim/engine/kv_cache.py",
                                        "return kv_tokens * self.swap_bytes_per_token / self.host_link_bytes_per_s",
                                        "return 0.0"),
    "swap transfers free (replica)": ("sim/engine/replica.py", "transfer_s = plan.swap_s + plan.load_wait_s",
                                      "transfer_s = 0.0"),
    "power by busy fraction whatever the model says": ("sim/cost.py",
                                                       'return s["gpu_busy_fraction"] if sc.cost.power_model == "busy" else s["gpu_utilization"]',
                                                       'return s["gpu_busy_fraction"]'),
    "small GEMMs at full rate": ("sim/perf/efficiency.py", "    return saturating_share(tokens, half_tokens)",
                                 "    return 1.0"),
    "decode runs hold no blocks from before": ("sim/engine/kv_integral.py", "total = held * run_s",
                                               "total = 0.0 * run_s"),
    "goodput counts every request": ("sim/metrics/summary.py",
                                     'good_tokens = int(req.loc[req["met_slo"], "output_tokens_in_window"].sum())',
                                     'good_tokens = int(req["output_tokens_in_window"].sum())'),
    # the KV hierarchy (issue 12)
    "tier evicts its most recent chunks": ("sim/engine/kv_tiers.py",
                                           "gone = [pop(False)[0] for _ in range(min(over, len(self.lru)))]",
                                           "gone = [pop(True)[0] for _ in range(min(over, len(self.lru)))]"),
    "decode runs evict into a write-on-evict tier": ("sim/engine/scheduler.py",
                                                     "n = ds.safe_steps(kv.free_blocks - tiers.hbm.cached_free_blocks, n)",
                                                     "pass"),
    "decode runs go past a finished load": ("sim/engine/replica.py", "                    if sched.loading:",
                                            "                    if False:"),
    "tier link transfers are free": ("sim/engine/kv_tiers.py", "busy = self.latency_s + nbytes / self.bytes_per_s",
                              "busy = 0.0"),
    "cached input priced as uncached": ("sim/cost.py",
                                        '"cached_input": ratio.cached_input, "output": ratio.output}',
                                        '"cached_input": ratio.input, "output": ratio.output}'),
    "shared chunks cost their blocks twice": ("sim/engine/scheduler.py",
                                              "        own = blocks - len(r.pinned) * hbm.chunk_blocks",
                                              "        own = blocks"),
}


def main() -> int:
    args = sys.argv[1:] or TESTS
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "project"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", ".venv*", "results", "__pycache__",
                                                                   ".hypothesis", ".pytest_cache"))
        print(f"{'mutation':45s} result")
        for name, (rel, old, new) in MUTATIONS.items():
            path = copy / rel
            src = path.read_text(encoding="utf-8")
            if old not in src:
                print(f"{name:45s} NOT APPLIED: the original text is gone from {rel}; update this script")
                missed += 1
                continue
            path.write_text(src.replace(old, new), encoding="utf-8")
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args],
                               cwd=copy, capture_output=True, text=True)
            path.write_text(src, encoding="utf-8")
            failed = [line[len("FAILED "):] for line in r.stdout.splitlines() if line.startswith("FAILED ")]
            caught = r.returncode != 0 and bool(failed)
            missed += not caught
            print(f"{name:45s} {'caught by ' + failed[0].split(' - ')[0] if caught else 'NOT CAUGHT'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
