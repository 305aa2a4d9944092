"""Property tests (hypothesis): whatever the configuration, load and measurement window,

* no request is lost: every drawn arrival becomes a request that ends completed or rejected (the
  drain is long enough), and tokens sampled = tokens asked for by completed requests;
* KV blocks are never over capacity or negative, and all are returned at the end;
* each replica's iterations are ordered in time and never overlap;
* the summary's invariants hold (the runner checks them on every run: levels within bounds,
  goodput within throughput, the two token accountings equal);
* decode runs advanced many steps per event give the same summary as one event per step.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import base_dict, tiny_kv_gpu
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sim.metrics.invariants import violations
from sim.runner import build, execute
from sim.scenario import scenario_from_dict
from sim.workload import open_loop_requests, rng_streams


@st.composite
def scenarios(draw, max_duration_s: float = 40, max_output: int = 800, max_rate: float = 40):
    kv_tokens = draw(st.integers(1200, 6000))
    max_in = draw(st.integers(16, 1000))
    max_out = draw(st.integers(1, max_output))
    seqs = draw(st.integers(1, 48))
    duration_s = draw(st.floats(5, max_duration_s))
    d = base_dict(
        duration_s=duration_s,
        warmup_s=draw(st.sampled_from([0.0, 0.1 * duration_s, 0.5 * duration_s])),
        window=draw(st.sampled_from([None, "arrivals", "makespan"])),
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
        workload={"arrivals": {"kind": "gamma", "rate_per_s": draw(st.floats(0.5, max_rate)),
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
    # No request lost: every arrival drawn for this seed became a request, and each one ended.
    drawn = open_loop_requests(sc, rng_streams(seed))
    np.testing.assert_array_equal(np.sort(req["arrival_s"].to_numpy()), drawn.arrival_s)
    assert req["request_id"].is_unique
    assert set(req["status"]) <= {"completed", "rejected"}, "drain must finish every accepted request"
    done = req[req.status == "completed"]
    assert (done["e2e_s"] >= done["ttft_s"] - 1e-12).all()
    assert (done["ttft_s"] >= done["queue_s"] - 1e-12).all()
    assert (req.loc[req.status == "rejected", "reject_reason"] != "").all()
    # Output tokens produced = output tokens asked for by completed requests.
    assert it["output_tokens"].sum() == done["output_tokens"].sum()
    # KV within [0, capacity] at every event; all blocks returned at the end.
    cap = sim.memory.kv_blocks
    assert (it["kv_blocks_peak"] >= 0).all() and (it["kv_blocks_peak"] <= cap).all()
    span = it["t_end_s"] - it["t_start_s"]
    assert (it["kv_block_s"] >= -1e-12).all() and (it["kv_block_s"] <= it["kv_blocks_peak"] * span * (1 + 1e-9)).all()
    for rep in sim.replicas:
        assert rep.kv.used_blocks == 0 and not rep.scheduler.busy
    # Time monotone and iterations of one replica never overlap.
    for _, g in it.groupby("replica"):
        t0, t1 = g["t_start_s"].to_numpy(), g["t_end_s"].to_numpy()
        assert (t1 >= t0).all()
        assert (t0[1:] >= t1[:-1] - 1e-9).all()
    assert res.summary["preemptions"] <= 50 * len(req), "preemption thrash"
    s = res.summary
    assert violations(s, sc.serving.batching.max_num_seqs, int(req["output_tokens_in_window"].sum())) == []
    # Goodput is the SLO-meeting part of throughput, counted request by request.
    assert s["goodput_output_tokens"] == req.loc[req["met_slo"], "output_tokens_in_window"].sum() <= s["output_tokens"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_duration_s=12, max_output=150, max_rate=12))
def test_jumps_and_steps_give_the_same_summary(case):
    d, seed = case
    sc = scenario_from_dict(d)
    fast = execute(build(sc, seed)).summary
    ref = execute(build(sc, seed, allow_jumps=False)).summary
    for k, v in ref.items():
        if k in ("wall_s", "sim_requests_per_wall_s"):
            continue
        if isinstance(v, str | bool):
            assert fast[k] == v, k
        else:
            assert fast[k] == pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True), k
