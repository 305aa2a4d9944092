"""Cross-checks against queueing theory.

M/D/1: one replica that serves one request at a time (max_num_seqs = 1) with fixed lengths has a
deterministic service time D (its prefill plus its decode steps, from the step-time model), and
Poisson arrivals; the mean wait in queue must match Pollaczek-Khinchine, Wq = rho D / (2 (1 - rho)).

Little's law: the engine's time-weighted mean batch (from its own iteration records) must equal
completion rate x mean time a request spends admitted (admit -> last token).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import base_dict, step_model, step_s

from sim.perf import Chunk
from sim.runner import run
from sim.scenario import scenario_from_dict

INP, OUT = 200, 4


def md1_scenario(rho: float, duration_s: float) -> tuple[dict, float]:
    d = base_dict(duration_s=duration_s, warmup_s=0.1 * duration_s)
    d["serving"]["batching"] = {"max_num_seqs": 1, "max_num_batched_tokens": 4096}
    d["workload"]["input_tokens"] = {"kind": "fixed", "value": INP}
    d["workload"]["output_tokens"] = {"kind": "fixed", "value": OUT}
    step = step_model(scenario_from_dict(d))
    service_s = step_s(step, 0, 0, [Chunk(0, INP, True)]) + sum(step_s(step, 1, INP + j) for j in range(1, OUT))
    d["workload"]["arrivals"] = {"kind": "poisson", "rate_per_s": rho / service_s}
    return d, service_s


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait_matches_pollaczek_khinchine(rho):
    d0, service_s = md1_scenario(rho, 1.0)
    lam = rho / service_s
    duration_s = 6000 / lam  # about 6,000 requests per replication
    d, _ = md1_scenario(rho, duration_s)
    sc = scenario_from_dict(d)
    waits, e2e = [], []
    for seed in range(12):
        res = run(sc, seed=seed)
        win = res.requests[res.requests.in_window & (res.requests.status == "completed")]
        waits.append(win["queue_s"].mean())
        # Every request is served in exactly D once admitted.
        np.testing.assert_allclose(win["e2e_s"] - win["queue_s"], service_s, rtol=1e-9)
        e2e.append(win["e2e_s"].mean())
    pk = rho * service_s / (2 * (1 - rho))
    m, se = np.mean(waits), np.std(waits, ddof=1) / np.sqrt(len(waits))
    # 99.9% two-sided t interval with 11 degrees of freedom: t = 4.437.
    assert abs(m - pk) <= 4.437 * se, f"mean wait {m:.5f} s vs P-K {pk:.5f} s (se {se:.5f})"
    assert abs(m - pk) / pk < 0.08
    assert np.mean(e2e) == pytest.approx(pk + service_s, rel=0.05)


def test_littles_law_on_running_set():
    d = base_dict(duration_s=1200.0, warmup_s=100.0)
    d["serving"]["batching"] = {"max_num_seqs": 256, "max_num_batched_tokens": 16384}
    d["workload"] = {"arrivals": {"kind": "poisson", "rate_per_s": 8.0},
                     "input_tokens": {"kind": "lognormal", "mean": 800, "cv": 0.8},
                     "output_tokens": {"kind": "lognormal", "mean": 300, "cv": 0.8}}
    res = run(scenario_from_dict(d), seed=4)
    req = res.requests
    # Requests are "in the batch" from admission to their last token.
    admit = req["arrival_s"] + req["queue_s"]
    w0, w1 = 100.0, 1200.0
    overlap = (np.minimum(req["finish_s"], w1) - np.maximum(admit, w0)).clip(lower=0)
    little_l = overlap.sum() / (w1 - w0)   # sum of residence inside the window / window = lambda W
    assert res.summary["batch_size_mean"] == pytest.approx(little_l, rel=0.01)
    assert 5 < little_l < 200  # a real batch formed

