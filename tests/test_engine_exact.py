"""Exact cases: a lone request's latency is the sum of its step times; closed-form decode jumps
give the same per-request results as simulating every step."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import base_dict, step_model, step_s

from sim.perf import Chunk, LinearPath, steps_within
from sim.runner import build, execute, run
from sim.scenario import scenario_from_dict


def lone(inp: int, out: int, **over) -> dict:
    d = base_dict(**{"duration_s": 10.0, **over})
    d["workload"] = {"arrivals": {"kind": "piecewise", "repeat": False,
                                  "segments": [{"duration_s": 1.0, "rate_per_s": 0.0},
                                               {"duration_s": 1e-3, "rate_per_s": 0.0}]},
                     "input_tokens": {"kind": "fixed", "value": inp},
                     "output_tokens": {"kind": "fixed", "value": out}}
    return d


def run_one(d: dict, inp: int, out: int, arrival_s: float = 1.0):
    """Simulate exactly one request arriving at arrival_s."""
    from sim.traffic import open_loop_source
    from sim.workload import OpenLoopRequests

    sc = scenario_from_dict(d)
    sim = build(sc)
    reqs = OpenLoopRequests(np.array([arrival_s]), np.array([inp]), np.array([out]))
    sim.env.process(open_loop_source(sim.env, sim.cluster.submit, reqs, sim.requests))
    return sc, execute(sim)


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("inp,out,budget", [(500, 50, 4096), (3000, 7, 1024), (1, 1, 64), (777, 2, 100)])
def test_lone_request_latency_is_sum_of_step_times(tp, inp, out, budget):
    d = lone(inp, out, serving={"parallelism": {"tp": tp},
                                "batching": {"max_num_seqs": 8, "max_num_batched_tokens": budget}})
    sc, res = run_one(d, inp, out)
    step = step_model(sc)
    # Chunked prefill: ceil(inp / budget) chunks, the last one samples token 1.
    t = 0.0
    done = 0
    while done < inp:
        new = min(budget, inp - done)
        t += step_s(step, 0, 0, [Chunk(done, new, done + new == inp)])
        done += new
    ttft = t
    # Then out - 1 decode steps; at decode step j the KV holds inp + j tokens.
    for j in range(1, out):
        t += step_s(step, 1, inp + j)
    row = res.requests.iloc[0]
    assert row["status"] == "completed"
    assert row["ttft_s"] == pytest.approx(ttft, rel=1e-12, abs=1e-12)
    assert row["e2e_s"] == pytest.approx(t, rel=1e-12, abs=1e-12)
    if out > 1:
        assert row["tpot_s"] == pytest.approx((t - ttft) / (out - 1), rel=1e-9)
    assert row["queue_s"] == 0.0


@pytest.mark.parametrize("inp,out", [(500, 50), (3000, 7), (777, 2), (10, 1)])
def test_a_decode_pool_request_arrives_with_its_kv_and_only_decodes(inp, out):
    """serving.role decode: the request brings its prompt's KV and first token; it joins the batch at
    once (loading KV is no forward pass), so its latency here is the out - 1 decode steps, KV holding
    inp + j tokens at step j; no prompt is processed, and only those tokens count as this pool's."""
    d = lone(inp, out, serving={"role": "decode", "batching": {"max_num_seqs": 8, "max_num_batched_tokens": 64}})
    sc, res = run_one(d, inp, out)
    step = step_model(sc)
    t = sum(step_s(step, 1, inp + j) for j in range(1, out))
    row = res.requests.iloc[0]
    assert row["status"] == "completed" and row["ttft_s"] == 0.0 and row["queue_s"] == 0.0
    assert row["e2e_s"] == pytest.approx(t, rel=1e-12, abs=1e-12)
    if out > 1:
        assert row["tpot_s"] == pytest.approx(t / (out - 1), rel=1e-9)
    assert row["sampled_tokens"] == out - 1
    assert int(res.iterations["prompt_tokens"].sum()) == 0
    assert int(res.iterations["output_tokens"].sum()) == out - 1


def test_lone_request_without_chunked_prefill_is_one_prefill_iteration():
    inp, out = 5000, 20
    d = lone(inp, out, serving={"batching": {"max_num_seqs": 8, "max_num_batched_tokens": 1024,
                                             "chunked_prefill": False}})
    sc, res = run_one(d, inp, out)
    step = step_model(sc)
    ttft = step_s(step, 0, 0, [Chunk(0, inp, True)])  # a lone prompt above the budget runs alone
    e2e = ttft + sum(step_s(step, 1, inp + j) for j in range(1, out))
    row = res.requests.iloc[0]
    assert row["ttft_s"] == pytest.approx(ttft, rel=1e-12)
    assert row["e2e_s"] == pytest.approx(e2e, rel=1e-12)


def test_frontend_overhead_adds_to_ttft_and_e2e():
    base = lone(300, 10)
    _, a = run_one(base, 300, 10)
    over = lone(300, 10, serving={"frontend": {"tokenize_s": 0.01, "tokenize_s_per_1k_tokens": 0.02,
                                               "schedule_s": 0.003, "detokenize_s": 0.001}})
    _, b = run_one(over, 300, 10)
    extra = 0.01 + 0.02 * 0.3 + 0.003 + 0.001
    assert b.requests["ttft_s"].iloc[0] == pytest.approx(a.requests["ttft_s"].iloc[0] + extra)
    assert b.requests["e2e_s"].iloc[0] == pytest.approx(a.requests["e2e_s"].iloc[0] + extra)
    assert b.requests["tpot_s"].iloc[0] == pytest.approx(a.requests["tpot_s"].iloc[0])


CASES = {
    "chunked": {},
    "no_chunking": {"serving": {"batching": {"chunked_prefill": False, "max_num_batched_tokens": 8192}}},
    "tight_kv_recompute": {"serving": {"kv_cache": {"gpu_memory_fraction": 0.26}}},
    "tight_kv_swap": {"serving": {"kv_cache": {"gpu_memory_fraction": 0.26},
                                  "batching": {"preemption": "swap"}}},
    "moe_tp2": {"model": "mixtral-8x7b", "serving": {"parallelism": {"tp": 2}}},
    "sliding_fp8": {"model": "gpt-oss-120b", "hardware": {"gpu": "h200"},
                    "serving": {"precision": {"weights": "fp8", "kv_cache": "fp8"}}},
    # an 8,192-token window that most contexts stay below: decode runs cross its knee
    "window_below_knee": {"model": "llama-4-maverick", "hardware": {"gpu": "b200"},
                          "serving": {"precision": {"weights": "fp4", "kv_cache": "fp8", "compute": "fp4"},
                                      "parallelism": {"tp": 4}}},
    "pipeline_pp2": {"serving": {"parallelism": {"tp": 1, "pp": 2}}},
    "tight_kv_decode_pool": {"serving": {"role": "decode", "kv_cache": {"gpu_memory_fraction": 0.225}}},
    "tight_kv_decode_pool_swap": {"serving": {"role": "decode", "kv_cache": {"gpu_memory_fraction": 0.225},
                                              "batching": {"preemption": "swap"}}},
    "decode_pool_eagle": {"serving": {"role": "decode"},
                          "speculative": {"method": "eagle", "k": 3, "acceptance": {"rate": 0.7}}},
    "tight_kv_decode_pool_eagle": {"serving": {"role": "decode", "kv_cache": {"gpu_memory_fraction": 0.235}},
                                   "speculative": {"method": "eagle", "k": 2, "acceptance": {"rate": 0.6}}},
    "decode_pool_trtllm": {"serving": {"role": "decode", "engine": "trtllm",
                                       "batching": {"max_num_batched_tokens": 1024}}},
    "tight_kv_pipeline_pp4": {"serving": {"parallelism": {"tp": 1, "pp": 4},
                                          "kv_cache": {"gpu_memory_fraction": 0.075}}},
}


def mixed_case_scenario(case: str, **top):
    """CASES[case] on 2 replicas under bursty traffic with varied lengths (top: duration_s, ...)."""
    d = base_dict(**{"duration_s": 120.0, **top}, **CASES[case])
    d["serving"] = {**d["serving"], "replicas": 2, "router": "least_kv_load"}
    d["workload"] = {"arrivals": {"kind": "gamma", "rate_per_s": 6.0, "cv": 2.0},
                     "input_tokens": {"kind": "lognormal", "mean": 1500, "cv": 1.0},
                     "output_tokens": {"kind": "lognormal", "mean": 200, "cv": 1.0}}
    return scenario_from_dict(d)


@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_jumps_equal_step_by_step(case):
    sc = mixed_case_scenario(case)
    fast = execute(build(sc, 3))
    ref = execute(build(sc, 3, allow_jumps=False))
    assert len(fast.iterations) < len(ref.iterations)  # the jumps did something
    for col in ("ttft_s", "e2e_s", "queue_s", "tpot_s"):
        np.testing.assert_allclose(fast.requests[col], ref.requests[col], rtol=1e-9, atol=1e-9)
    assert (fast.requests["status"] == ref.requests["status"]).all()
    assert (fast.requests["preemptions"] == ref.requests["preemptions"]).all()
    assert fast.iterations["output_tokens"].sum() == ref.iterations["output_tokens"].sum()
    if case.startswith("tight"):
        assert fast.summary["preemptions"] > 0, "the tight-KV case must exercise preemption"
    if case.startswith("decode_pool"):     # a decode pool never refuses a prompt for the token budget
        assert fast.summary["requests_rejected"] == 0


def test_decode_run_matches_per_step_times():
    sc = scenario_from_dict(base_dict())
    step = step_model(sc)
    c = step.decode_run(37)
    for first in (0, 1234, 50_000, 2_000_000):
        path = LinearPath(float(first), 37.0)
        brute = sum(step_s(step, 37, first + 37 * j) for j in range(300))
        assert c.run_s(path, 300) == pytest.approx(brute, rel=1e-12)
        total = c.run_s(path, 300)
        assert steps_within(c, path, 300, total) == 300
        assert steps_within(c, path, 300, total * (1 - 1e-9)) == 299
        for k in (0, 1, 120, 299):
            assert steps_within(c, path, 300, c.run_s(path, k)) == k
            assert steps_within(c, path, 300, c.run_s(path, k + 1) * (1 - 1e-12)) == k
        pieces = c.segments(path, 300)
        assert sum(a * (hi - lo) + b * path.total(lo, hi) for lo, hi, a, b in pieces) == pytest.approx(brute, rel=1e-12)


def test_one_output_token_finishes_at_prefill():
    d = base_dict(workload={"output_tokens": {"kind": "fixed", "value": 1}})
    res = run(scenario_from_dict(d))
    done = res.requests[res.requests.status == "completed"]
    assert len(done) > 0
    assert np.allclose(done["ttft_s"], done["e2e_s"])
    assert done["tpot_s"].isna().all()
    assert math.isclose(res.iterations["output_tokens"].sum(), len(done))
