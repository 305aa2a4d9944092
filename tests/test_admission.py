"""Admission policies (sim/engine/admission.py): guaranteed-no-evict never preempts, optimistic
admission does under the same overload, both stay exact in jump and step mode, and the
reservations balance."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import base_dict

from sim.engine.admission import GuaranteedNoEvict
from sim.engine.kv_cache import KvCache
from sim.engine.request import Request
from sim.runner import build, execute
from sim.scenario import scenario_from_dict


def overload(admission: str, chunked: bool = True, preemption: str = "recompute") -> dict:
    """400 requests of 2,000-token prompts and 500-3,000-token outputs at once on half an H100's
    memory: far more KV than fits."""
    return base_dict(duration_s=1.0, serving={
        "precision": {"weights": "bf16", "kv_cache": "bf16"}, "replicas": 1,
        "batching": {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "admission": admission,
                     "chunked_prefill": chunked, "preemption": preemption},
        "kv_cache": {"gpu_memory_fraction": 0.5}},
        workload={"arrivals": {"kind": "offline", "requests": 400}, "input_tokens": {"kind": "fixed", "value": 2000},
                  "output_tokens": {"kind": "uniform", "low": 500, "high": 3000}})


@pytest.mark.parametrize("chunked", [True, False])
def test_guaranteed_no_evict_never_preempts_and_optimistic_does(chunked):
    fast = {}
    for admission in ("optimistic", "no_evict"):
        sc = scenario_from_dict(overload(admission, chunked))
        res, ref = execute(build(sc, 1)), execute(build(sc, 1, allow_jumps=False))
        s = res.summary
        assert s["requests_completed"] == 400
        assert np.allclose(res.requests["e2e_s"].to_numpy(float), ref.requests["e2e_s"].to_numpy(float),
                           rtol=1e-9, atol=1e-9)
        if admission == "no_evict":
            assert (res.iterations["recompute_tokens"] == 0).all()
        fast[admission] = s
    assert fast["no_evict"]["preemptions"] == 0
    assert fast["optimistic"]["preemptions"] > 100
    # Reserving whole outputs keeps fewer requests in the cache at once.
    assert fast["no_evict"]["kv_occupancy_mean"] < fast["optimistic"]["kv_occupancy_mean"]


def test_no_evict_reservations_balance():
    kv = KvCache(100, 16)
    pol = GuaranteedNoEvict(kv)
    a, b = Request(0, 0.0, 1000, 600), Request(1, 0.0, 500, 100)   # 100 and 38 blocks at their ends
    assert pol.final_blocks(a) == 100 and pol.allows(a)
    pol.admitted(a)
    assert not pol.allows(b)                      # 100 + 38 > 100: waits for a to finish
    pol.left(a)
    assert pol.allows(b) and pol.committed_blocks == 0


def test_admission_defaults_to_optimistic_and_unknown_policies_are_refused():
    sc = scenario_from_dict(base_dict())
    assert sc.serving.batching.admission == "optimistic"
    from sim.errors import InputError
    with pytest.raises(InputError, match="admission"):
        scenario_from_dict(base_dict(serving={"batching": {"admission": "fifo"}}))


def test_calibration_measurements_carry_their_admission(tmp_path):
    """The bundled TensorRT-LLM throughput points run with the trtllm engine defaults and chunked
    context (as trtllm-bench does); a user's CSV may give an engine or an admission policy per row,
    and a wrong value names the line."""
    from sim.calibrate import read_measurements_csv, reference_points

    ms, _, _ = reference_points()
    bench = [m for m in ms if m.kind == "throughput"]
    assert {m.engine for m in bench} == {"trtllm"} and {m.chunked_prefill for m in bench} == {True}
    head = ("id,kind,model,gpu,tp,weights,kv_cache,compute,decode_seqs,context_tokens,prefill_tokens,step_time_s,"
            "input_tokens,output_tokens,requests,output_tok_per_s_per_gpu,admission\n")
    row = "a,throughput,llama-3.1-8b,h100-sxm,1,bf16,bf16,bf16,,,,,1000,1000,100,5000,"
    (tmp_path / "m.csv").write_text(head + row + "no_evict\n" + row.replace("a,", "b,", 1) + "\n")
    assert [m.admission for m in read_measurements_csv(tmp_path / "m.csv")] == ["no_evict", None]
    (tmp_path / "bad.csv").write_text(head + row + "fifo\n")
    from sim.errors import InputError
    with pytest.raises(InputError, match="line 2: column 'admission'"):
        read_measurements_csv(tmp_path / "bad.csv")


# ---- whole prompts mixed with decodes (TensorRT-LLM without chunked context) ------------------------

def test_mixed_iterations_add_whole_prompts_beside_the_decodes():
    from sim.engine.scheduler import BatchLimits, BatchScheduler

    lim = BatchLimits(max_num_seqs=8, max_num_batched_tokens=64, chunked_prefill=False, max_waiting=100,
                      preemption="recompute", max_context_tokens=10_000, mixed_prefill=True)
    s = BatchScheduler(KvCache(1000, 16), lim)
    a = Request(0, 0.0, 30, 5)
    s.enqueue(a, 0.0)
    plan = s.schedule(0.0)
    assert plan.chunks == [(a, 30)] and not plan.decode
    s.finish_iteration(plan, 1.0)                  # a is decoding now
    b, c = Request(1, 0.0, 60, 5), Request(2, 0.0, 20, 5)
    for r in (b, c):
        s.enqueue(r, 1.0)
    plan = s.schedule(1.0)
    # 63 tokens left beside a's decode: b's 60-token prompt fits whole; c waits (FCFS, budget spent).
    assert plan.decode and plan.chunks == [(b, 60)]
    assert s.reject_reason(Request(3, 0.0, 65, 5)) == "prompt_exceeds_token_budget"


def test_engine_presets_set_defaults_that_stay_overridable():
    from sim.errors import InputError

    def batching(**serving):
        return scenario_from_dict(base_dict(serving=serving)).serving.batching

    t = batching(engine="trtllm")
    assert (t.chunked_prefill, t.whole_prompts, t.admission) == (False, "mixed", "no_evict")
    v = batching(engine="vllm")
    assert (v.chunked_prefill, v.admission) == (True, "optimistic")
    g = batching(engine="sglang")
    assert (g.chunked_prefill, g.admission) == (True, "conservative")
    over = batching(engine="trtllm", batching={"admission": "optimistic", "chunked_prefill": True})
    assert (over.chunked_prefill, over.admission) == (True, "optimistic")
    with pytest.raises(InputError, match="serving.engine"):
        scenario_from_dict(base_dict(serving={"engine": "tgi"}))


@pytest.mark.parametrize("admission", ["optimistic", "no_evict"])
def test_mixed_whole_prompts_stay_exact(admission):
    """Poisson traffic with long-tailed prompts, some above the budget (rejected), under KV
    pressure: jump mode equals step mode request by request."""
    d = base_dict(duration_s=40.0, serving={
        "engine": "trtllm", "precision": {"weights": "bf16", "kv_cache": "bf16"},
        "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 4096, "admission": admission},
        "kv_cache": {"gpu_memory_fraction": 0.3}},
        workload={"arrivals": {"kind": "poisson", "rate_per_s": 10.0},
                  "input_tokens": {"kind": "lognormal", "mean": 1500, "cv": 1.0},
                  "output_tokens": {"kind": "lognormal", "mean": 400, "cv": 1.0}})
    sc = scenario_from_dict(d)
    res, ref = execute(build(sc, 1)), execute(build(sc, 1, allow_jumps=False))
    req, rref = res.requests, ref.requests
    assert (req["reject_reason"] == "prompt_exceeds_token_budget").sum() > 0
    assert np.allclose(req["e2e_s"].to_numpy(float), rref["e2e_s"].to_numpy(float), rtol=1e-9, atol=1e-9,
                       equal_nan=True)
    assert res.summary["requests_completed"] == ref.summary["requests_completed"] > 100


# ---- SGLang's conservative admission -------------------------------------------------------------

def test_conservative_ratio_decays_resets_and_follows_retractions():
    from sim.engine.admission import Conservative

    outs = [(300, 100, 400), (50, 150, 200)]        # (to generate, generated, output) per running request
    pol = Conservative(KvCache(1000, 16), lambda: outs)
    assert pol.ratio == 0.7
    pol.decoded(100)
    assert pol.ratio == pytest.approx(0.7 - 100 * (0.7 - 0.098) / 600)
    pol.decoded(10_000)
    assert pol.ratio == pytest.approx(0.098)                       # the floor: 0.7 x 0.14
    pol.preempted()                                                 # (250 decoded + 20 x 2) / 600
    assert pol.ratio == pytest.approx((100 + 150 + 40) / 600)
    pol.idle()
    assert pol.ratio == 0.7
    # Admission: prompt + min(output, 4,096) < free tokens - ratio x the running requests' remaining.
    pol.begin_round()
    free = 1000 * 16
    reserved = 0.7 * (300 + 50)
    fits = Request(0, 0.0, int(free - reserved) - 401, 400)
    assert pol.allows(fits)
    assert not pol.allows(Request(1, 0.0, int(free - reserved) - 399, 400))
    pol.admitted(fits)                    # its expected output counts from now on, its prompt as it is allocated
    pol.kv.allocate(pol.kv.blocks_for(fits.input_tokens))
    assert not pol.allows(Request(2, 0.0, 1, 400))


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_engines_stay_exact_under_kv_pressure(engine):
    d = base_dict(duration_s=30.0, serving={
        "engine": engine, "precision": {"weights": "bf16", "kv_cache": "bf16"},
        "batching": {"max_num_seqs": 128, "max_num_batched_tokens": 8192}, "kv_cache": {"gpu_memory_fraction": 0.3}},
        workload={"arrivals": {"kind": "poisson", "rate_per_s": 12.0},
                  "input_tokens": {"kind": "lognormal", "mean": 1500, "cv": 1.0},
                  "output_tokens": {"kind": "lognormal", "mean": 400, "cv": 1.0}})
    sc = scenario_from_dict(d)
    res, ref = execute(build(sc, 1)), execute(build(sc, 1, allow_jumps=False))
    assert np.allclose(res.requests["e2e_s"].to_numpy(float), ref.requests["e2e_s"].to_numpy(float),
                       rtol=1e-9, atol=1e-9, equal_nan=True)
    s = res.summary
    if engine == "vllm":
        assert s["preemptions"] > 100
    else:                       # reserving (all of, or a share of) the outputs avoids almost every preemption
        assert s["preemptions"] <= 5
