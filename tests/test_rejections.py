"""Requests that cannot be served are rejected with a reason and counted, never dropped."""

from __future__ import annotations

from conftest import base_dict, tiny_kv_gpu

from sim.runner import run
from sim.scenario import scenario_from_dict


def test_queue_full_rejections_are_counted():
    d = base_dict(duration_s=60.0, serving={"batching": {"max_num_seqs": 2, "max_num_batched_tokens": 64,
                                                         "max_waiting": 5}},
                  workload={"arrivals": {"kind": "poisson", "rate_per_s": 50}})
    res = run(scenario_from_dict(d))
    req = res.requests
    rej = req[req.status == "rejected"]
    assert len(rej) > 0 and (rej["reject_reason"] == "queue_full").all()
    assert res.summary["requests_rejected"] == len(rej[rej.in_window])
    assert res.summary["requests_arrived"] == res.summary["requests_completed"] + res.summary["requests_rejected"]
    assert res.summary["slo_attainment"] < 1


def test_context_and_capacity_rejections():
    d = base_dict(hardware={"gpu": tiny_kv_gpu(3000)},
                  serving={"kv_cache": {"activation_reserve_gb": 0, "gpu_memory_fraction": 1.0}},
                  workload={"input_tokens": {"kind": "uniform", "low": 100, "high": 6000},
                            "output_tokens": {"kind": "fixed", "value": 10}})
    req = run(scenario_from_dict(d)).requests
    too_big = req["input_tokens"] + 10 - 1 > 3000
    assert (req.loc[too_big, "reject_reason"] == "exceeds_kv_capacity").all()
    assert (req.loc[~too_big, "status"] == "completed").all()
    d = base_dict(model="mixtral-8x7b", hardware={"gpu": "h200"},
                  workload={"input_tokens": {"kind": "fixed", "value": 32000},
                            "output_tokens": {"kind": "fixed", "value": 1000}})
    req = run(scenario_from_dict(d)).requests
    assert (req["reject_reason"] == "context_too_long").all()


def test_offline_burst_larger_than_the_queue_bound_is_served_whole():
    # 5,000 requests at t = 0 on one replica whose online queue holds 4,096 (the default): a batch
    # job is handed to the engine whole, so none is lost as queue_full.
    d = base_dict(duration_s=1.0, drain_timeout_s=1e6,
                  workload={"arrivals": {"kind": "offline", "requests": 5000},
                            "input_tokens": {"kind": "fixed", "value": 100},
                            "output_tokens": {"kind": "fixed", "value": 10}})
    res = run(scenario_from_dict(d))
    assert (res.requests["status"] == "completed").all()
    assert len(res.requests) == 5000
    # The bound still applies to online arrivals (see test_queue_full_rejections_are_counted).


def test_a_request_sglang_admission_could_never_admit_is_rejected_on_arrival():
    # SGLang admits only when prompt + output < free tokens (strict): a request needing exactly
    # the whole cache would wait forever in an empty replica; it is refused as too large instead
    d = base_dict(hardware={"gpu": tiny_kv_gpu(3000)},
                  serving={"engine": "sglang",
                           "kv_cache": {"activation_reserve_gb": 0, "gpu_memory_fraction": 1.0, "block_tokens": 1}})
    sc = scenario_from_dict(d)
    cap = sc.memory_plan().kv_capacity_tokens
    d["workload"] = {"arrivals": {"kind": "poisson", "rate_per_s": 1.0},
                     "input_tokens": {"kind": "fixed", "value": cap - 50},
                     "output_tokens": {"kind": "fixed", "value": 50}}
    req = run(scenario_from_dict(d)).requests
    assert len(req) > 0 and (req["reject_reason"] == "exceeds_kv_capacity").all()
    d["workload"]["input_tokens"]["value"] = cap - 51          # one token of room: served
    req = run(scenario_from_dict(d)).requests
    assert (req["status"] == "completed").all()
