"""Power follows the binding resource's utilization (sim/power.py): summed exactly over decode runs,
never above the busy fraction, lower than busy x TDP at light load, and switchable back."""

from __future__ import annotations

import pytest
from conftest import step_model
from test_engine_exact import lone, run_one

from sim.perf import Chunk, StepShape

GPU = {"gpu": "h100-sxm", "price_usd_per_gpu_h": 2.0,
       "overrides": {"idle_w": 100.0, "tdp_w": 700.0, "all_in_kw": 1.5}}


def test_utilization_of_one_request_is_the_sum_of_its_steps():
    """One request: its prefill and every decode step's utilization-seconds, summed step by step,
    equal what the run records (decode runs summed in closed form after the simulation)."""
    inp, out = 2000, 300
    d = lone(inp, out, hardware=GPU, serving={"batching": {"max_num_batched_tokens": 4096}})
    sc, res = run_one(d, inp, out)
    s = step_model(sc)
    by_hand = s.utilization_s(StepShape(0, 0, 1, (Chunk(0, inp, True),)))
    by_hand += sum(s.utilization_s(StepShape(1, inp + j)) for j in range(1, out))   # KV holds token j
    assert res.iterations["util_s"].sum() == pytest.approx(by_hand, rel=1e-9)
    summ = res.summary
    assert summ["gpu_utilization"] == pytest.approx(by_hand / 10.0, rel=1e-9)
    # Batch-1 decode spends time in fixed costs the chip does not work through at full rate.
    assert summ["gpu_utilization"] < summ["gpu_busy_fraction"]
    chip = 100 + 600 * summ["gpu_utilization"]
    assert summ["chip_power_w_per_gpu"] == pytest.approx(chip, rel=1e-12)
    assert summ["power_w_per_gpu"] == pytest.approx(chip + 800, rel=1e-12)
    assert summ["joules_per_output_token"] == pytest.approx((chip + 800) * 1.2 * 10.0 / out, rel=1e-12)


def test_busy_power_model_restores_busy_times_tdp():
    d = lone(2000, 300, hardware=GPU, cost={"power_model": "busy"})
    _, res = run_one(d, 2000, 300)
    s = res.summary
    assert s["chip_power_w_per_gpu"] == pytest.approx(100 + 600 * s["gpu_busy_fraction"], rel=1e-12)


@pytest.mark.parametrize("batch", [1, 8, 64, 512])
def test_a_step_never_works_longer_than_it_lasts(batch):
    """utilization_s <= iteration_s for decode steps and mixed iterations, and a large decode batch
    of a memory-bound step is fully utilized only when nothing fixed is added."""
    d = lone(10, 10, perf={"per_seq_overhead_s": 1e-5, "iteration_overhead_s": 1e-3, "layer_overhead_s": 5e-6,
                           "gemm_half_tokens": 64.0, "hbm_half_bytes_per_layer": 1e7})
    from sim.scenario import scenario_from_dict
    s = step_model(scenario_from_dict(d))
    for shape in (StepShape(batch, batch * 1500.0), StepShape(batch, batch * 300.0, 1, (Chunk(100, 700, True),))):
        assert 0 < s.utilization_s(shape) < s.iteration_s(shape)
    bare = step_model(scenario_from_dict(lone(10, 10, perf={
        "per_seq_overhead_s": 0.0, "iteration_overhead_s": 0.0, "layer_overhead_s": 0.0, "moe_layer_overhead_s": 0.0,
        "gemm_half_tokens": 0.0, "hbm_half_bytes_per_layer": 0.0})))
    shape = StepShape(batch, batch * 1500.0)
    assert bare.utilization_s(shape) == pytest.approx(bare.iteration_s(shape), rel=1e-12)


def test_jump_and_step_mode_record_the_same_utilization():
    from conftest import base_dict

    from sim.runner import build, execute
    from sim.scenario import scenario_from_dict

    sc = scenario_from_dict(base_dict(duration_s=20.0, workload={
        "arrivals": {"kind": "poisson", "rate_per_s": 3.0},
        "input_tokens": {"kind": "uniform", "low": 100, "high": 900},
        "output_tokens": {"kind": "uniform", "low": 20, "high": 300}}))
    jump, step = execute(build(sc, 3)).summary, execute(build(sc, 3, allow_jumps=False)).summary
    assert jump["gpu_utilization"] == pytest.approx(step["gpu_utilization"], rel=1e-9)
    assert 0 < jump["gpu_utilization"] < jump["gpu_busy_fraction"]


def test_slower_attention_kernels_lengthen_a_step_without_adding_power():
    """The shape inefficiencies (here attention_efficiency) make an iteration longer but leave its
    utilization-seconds alone, so a slower kernel never reads as a busier chip."""
    from sim.scenario import scenario_from_dict

    fast = step_model(scenario_from_dict(lone(10, 10, perf={"attention_efficiency": 0.5})))
    slow = step_model(scenario_from_dict(lone(10, 10, perf={"attention_efficiency": 0.05})))
    shape = StepShape(4, 4 * 500.0, 1, (Chunk(30_000, 2048, False),))
    assert slow.iteration_s(shape) > fast.iteration_s(shape)
    assert slow.utilization_s(shape) == pytest.approx(fast.utilization_s(shape), rel=1e-12)
