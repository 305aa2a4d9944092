"""Property tests (hypothesis): whatever the configuration and load,

* no request is lost: every generated request ends completed, rejected or in flight, and with a
  drain long enough, none is left in flight;
* KV blocks are never over capacity or negative, and all are returned at the end;
* each replica's iterations are ordered in time and never overlap;
* utilization-like levels stay within [0, 1].
"""

from __future__ import annotations

import numpy as np
from conftest import base_dict, tiny_kv_gpu
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sim.runner import build, execute
from sim.scenario import scenario_from_dict


@st.composite
def scenarios(draw):
    kv_tokens = draw(st.integers(1200, 6000))
    max_in = draw(st.integers(16, 1000))
    max_out = draw(st.integers(1, 800))
    seqs = draw(st.integers(1, 48))
    d = base_dict(
        duration_s=draw(st.floats(5, 40)),
        hardware={"gpu": tiny_kv_gpu(kv_tokens)},
        serving={
            "replicas": draw(st.integers(1, 3)),
            "router": draw(st.sampled_from(["round_robin", "least_outstanding", "least_kv_load"])),
            "batching": {"max_num_seqs": seqs,
                         "max_num_batched_tokens": draw(st.integers(max(seqs, 16), 2048)),
                         "chunked_prefill": draw(st.booleans()),
                         "preemption": draw(st.sampled_from(["recompute", "swap"])),
                         "max_waiting": draw(st.integers(1, 200))},
            "kv_cache": {"activation_reserve_gb": 0.0, "gpu_memory_fraction": 1.0,
                         "block_tokens": draw(st.sampled_from([1, 8, 16, 32]))},
        },
        workload={"arrivals": {"kind": "gamma", "rate_per_s": draw(st.floats(0.5, 40)),
                               "cv": draw(st.floats(0.3, 4))},
                  "input_tokens": {"kind": "uniform", "low": 1, "high": max_in},
                  "output_tokens": {"kind": "uniform", "low": 1, "high": max_out}},
    )
    return d, draw(st.integers(0, 2**31))


# Found by hypothesis: a request swapped out mid-prefill and swapped back in was taken for "no
# progress" and preempted again, forever (swap thrash until the drain deadline).
SWAP_MID_PREFILL = (base_dict(
    duration_s=5.0, hardware={"gpu": tiny_kv_gpu(1430)},
    serving={"replicas": 2, "router": "round_robin",
             "batching": {"max_num_seqs": 7, "max_num_batched_tokens": 16, "chunked_prefill": True,
                          "preemption": "swap", "max_waiting": 100},
             "kv_cache": {"activation_reserve_gb": 0.0, "gpu_memory_fraction": 1.0, "block_tokens": 1}},
    workload={"arrivals": {"kind": "gamma", "rate_per_s": 25.3375, "cv": 1.4724},
              "input_tokens": {"kind": "uniform", "low": 1, "high": 999},
              "output_tokens": {"kind": "uniform", "low": 1, "high": 191}}), 597)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
@example(SWAP_MID_PREFILL)
def test_invariants(case):
    d, seed = case
    sc = scenario_from_dict(d)
    sim = build(sc, seed)
    res = execute(sim)
    req, it = res.requests, res.iterations
    # No request lost.
    assert len(req) == len(sim.requests)
    assert req["request_id"].is_unique
    counts = req["status"].value_counts()
    assert counts.sum() == len(req)
    assert counts.get("in_flight", 0) == 0, "drain must finish every accepted request"
    done = req[req.status == "completed"]
    assert (done["e2e_s"] >= done["ttft_s"] - 1e-12).all()
    assert (done["ttft_s"] >= done["queue_s"] - 1e-12).all()
    assert (req.loc[req.status == "rejected", "reject_reason"] != "").all()
    # Output tokens produced = output tokens asked for by completed requests.
    assert it["output_tokens"].sum() == done["output_tokens"].sum()
    # KV within [0, capacity] at every iteration; all blocks returned at the end.
    cap = sim.memory.kv_blocks
    assert (it["kv_blocks_used"] >= 0).all() and (it["kv_blocks_used"] <= cap).all()
    for rep in sim.replicas:
        assert rep.kv.used_blocks == 0 and not rep.scheduler.busy
    # Time monotone and iterations of one replica never overlap.
    for _, g in it.groupby("replica"):
        t0, t1 = g["t_start_s"].to_numpy(), g["t_end_s"].to_numpy()
        assert (t1 >= t0).all()
        assert (t0[1:] >= t1[:-1] - 1e-9).all()
    assert res.summary["preemptions"] <= 50 * len(req), "preemption thrash"
    s = res.summary
    for k in ("gpu_busy_fraction", "kv_occupancy_mean"):
        assert 0.0 <= s[k] <= 1.0 + 1e-9, (k, s[k])
    if not np.isnan(s["slo_attainment"]):
        assert 0.0 <= s["slo_attainment"] <= 1.0
