"""Every summary metric pinned on a real run against a value computed independently: by hand from
the step-time model, from the run's own request table, or from Little's law."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import base_dict, step_model, step_s
from test_engine_exact import lone, run_one

from sim.errors import InputError
from sim.metrics.invariants import violations
from sim.perf import Chunk
from sim.runner import build, execute, run
from sim.scenario import scenario_from_dict


def lone_timeline(sc, inp: int, out: int, arrival_s: float, budget: int) -> tuple[list[float], list[float]]:
    """Start and end of each iteration of a lone request, from the step-time model alone."""
    step = step_model(sc)
    t, done, spans = arrival_s, 0, []
    while done < inp:                          # chunked prefill; the last chunk samples token 1
        new = min(budget, inp - done)
        dt = step_s(step, 0, 0, [Chunk(done, new, done + new == inp)])
        spans.append((t, t + dt))
        t += dt
        done += new
    for j in range(1, out):                    # decode step j: KV holds inp + j tokens
        dt = step_s(step, 1, inp + j)
        spans.append((t, t + dt))
        t += dt
    return [a for a, _ in spans], [b for _, b in spans]


def test_lone_request_levels_by_hand():
    """One request of 1,000 + 200 tokens in a 10 s window, 16-token blocks, 4,096-token budget."""
    inp, out = 1000, 200
    d = lone(inp, out)
    sc, res = run_one(d, inp, out, arrival_s=1.0)
    s = res.summary
    starts, ends = lone_timeline(sc, inp, out, 1.0, 4096)
    busy_s = ends[-1] - starts[0]
    assert s["gpu_busy_fraction"] == pytest.approx(busy_s / 10.0, rel=1e-12)
    assert s["batch_size_mean"] == pytest.approx(busy_s / 10.0, rel=1e-12)     # one sequence while busy
    assert s["running_mean"] == pytest.approx(busy_s / 10.0, rel=1e-12)
    assert s["queue_len_mean"] == 0.0
    # KV: the prefill iteration holds ceil(1000/16) = 63 blocks; decode step j holds ceil((1000+j)/16).
    held = [math.ceil(inp / 16)] + [math.ceil((inp + j) / 16) for j in range(1, out)]
    block_s = sum(h * (b - a) for h, a, b in zip(held, starts, ends, strict=True))
    assert s["kv_occupancy_mean"] == pytest.approx(block_s / 10.0 / s["kv_blocks_per_replica"], rel=1e-9)
    assert s["output_tokens"] == out and s["input_tokens"] == inp


def test_tokens_count_when_sampled_and_goodput_counts_them_per_request():
    """A request still decoding when the window ends contributes exactly its tokens sampled before
    the end, to throughput and (it meets the SLO) to goodput."""
    inp, out = 500, 400
    d = lone(inp, out, duration_s=3.0, slo={"ttft_s": 5.0, "tpot_s": 1.0})
    d["drain_timeout_s"] = 100.0
    sc, res = run_one(d, inp, out, arrival_s=1.0)
    _, ends = lone_timeline(sc, inp, out, 1.0, 4096)
    assert ends[0] < 3.0 < ends[-1], "the request must straddle the window's end"
    before_end = sum(t < 3.0 for t in ends)   # one token per iteration, sampled at its end
    row = res.requests.iloc[0]
    assert row["output_tokens_in_window"] == before_end
    assert res.summary["output_tokens"] == before_end
    assert row["met_slo"] and res.summary["goodput_output_tokens"] == before_end
    assert res.summary["goodput_output_tok_per_s"] == pytest.approx(before_end / 3.0)
    assert res.summary["usd_per_m_slo_output_tokens"] == pytest.approx(res.summary["usd_per_m_output_tokens"])


def test_queue_length_is_littles_law_on_the_request_table():
    """With no preemption a request waits exactly from arrival to admission, so the mean queue is
    the summed waiting time inside the window over (window x replicas)."""
    d = base_dict(duration_s=300.0, warmup_s=30.0, serving={"replicas": 2},
                  workload={"arrivals": {"kind": "poisson", "rate_per_s": 8},
                            "input_tokens": {"kind": "lognormal", "mean": 1500, "cv": 1},
                            "output_tokens": {"kind": "lognormal", "mean": 300, "cv": 1}})
    d["serving"]["batching"] = {"max_num_seqs": 16, "max_num_batched_tokens": 2048}
    res = run(scenario_from_dict(d), seed=3)
    req, s = res.requests, res.summary
    assert s["preemptions"] == 0 and req["queue_s"].max() > 0.5, "the queue must form"
    admit = (req["arrival_s"] + req["queue_s"]).fillna(np.inf)
    waiting = (np.minimum(admit, 300.0) - np.maximum(req["arrival_s"], 30.0)).clip(lower=0)
    assert s["queue_len_mean"] == pytest.approx(waiting.sum() / 270.0 / 2, rel=1e-9)
    running = (np.minimum(req["finish_s"].fillna(np.inf), 300.0) - np.maximum(admit, 30.0)).clip(lower=0)
    assert s["running_mean"] == pytest.approx(running.sum() / 270.0 / 2, rel=1e-9)


def test_goodput_is_the_slo_meeting_part_of_throughput():
    d = base_dict(duration_s=120.0, warmup_s=10.0, slo={"ttft_s": 0.3, "tpot_s": 0.015},
                  workload={"arrivals": {"kind": "poisson", "rate_per_s": 6},
                            "input_tokens": {"kind": "lognormal", "mean": 1500, "cv": 1.2},
                            "output_tokens": {"kind": "lognormal", "mean": 300, "cv": 1}})
    res = run(scenario_from_dict(d), seed=5)
    req, s = res.requests, res.summary
    assert 0.1 < s["slo_attainment"] < 0.95, "some requests must miss the SLO"
    assert req["output_tokens_in_window"].sum() == s["output_tokens"]
    good = req.loc[req["met_slo"], "output_tokens_in_window"].sum()
    assert s["goodput_output_tokens"] == good < s["output_tokens"]
    assert s["goodput_output_tok_per_s"] == pytest.approx(good / 110.0)
    win = req[req["in_window"]]
    assert s["goodput_req_per_s"] == pytest.approx(win["met_slo"].sum() / 110.0)
    assert s["usd_per_m_slo_output_tokens"] == pytest.approx(s["usd_per_m_output_tokens"] * s["output_tokens"] / good)


def test_offline_window_is_the_makespan():
    """2,000 requests of 1k/1k at t = 0 on one H100: the figures describe the whole run, whatever
    duration_s says (the review's example: about $0.087 per million output tokens)."""
    d = base_dict(duration_s=1.0, drain_timeout_s=1e6,
                  workload={"arrivals": {"kind": "offline", "requests": 2000},
                            "input_tokens": {"kind": "fixed", "value": 1000},
                            "output_tokens": {"kind": "fixed", "value": 1000}},
                  serving={"batching": {"max_num_seqs": 256, "max_num_batched_tokens": 8192}})
    res = run(scenario_from_dict(d))
    req, s = res.requests, res.summary
    makespan = req["finish_s"].max()
    assert s["window"] == "makespan" and s["window_s"] == pytest.approx(makespan)
    assert s["output_tokens"] == 2_000_000 and s["requests_arrived"] == 2000
    assert s["output_tok_per_s_per_gpu"] == pytest.approx(s["output_tok_per_s_per_gpu_makespan"])
    assert s["usd_per_m_output_tokens"] == pytest.approx(1.78 * makespan / 3600 / 2.0, rel=1e-9)
    assert s["gpu_busy_fraction"] == pytest.approx(1.0)
    assert s["goodput_output_tokens"] <= s["output_tokens"]
    assert s["usd_per_m_slo_output_tokens"] >= s["usd_per_m_output_tokens"]
    # The same run measured over [0, duration_s) instead, when asked for explicitly.
    d["window"] = "arrivals"
    d["duration_s"] = 60.0
    part = run(scenario_from_dict(d)).summary
    assert part["window_s"] == 60.0 and part["output_tokens"] < s["output_tokens"]


def test_makespan_window_for_online_traffic():
    d = base_dict(duration_s=30.0, warmup_s=5.0, window="makespan")
    res = run(scenario_from_dict(d))
    s, req = res.summary, res.requests
    assert s["window_start_s"] == 5.0 and s["window_end_s"] == pytest.approx(req["finish_s"].max())
    assert s["output_tokens"] == req["output_tokens_in_window"].sum()


def test_warmup_with_offline_arrivals_is_refused():
    d = base_dict(warmup_s=5.0, workload={"arrivals": {"kind": "offline", "requests": 10}})
    with pytest.raises(InputError, match=r"warmup_s \(5.0\) must be 0 with offline arrivals"):
        scenario_from_dict(d)


@pytest.mark.parametrize("case", ["chunked", "tight_kv_swap", "sliding_fp8"])
def test_every_summary_figure_is_the_same_with_and_without_decode_jumps(case):
    from test_engine_exact import mixed_case_scenario

    _assert_same_summaries(mixed_case_scenario(case, duration_s=90.0, warmup_s=15.0))


@pytest.mark.parametrize("window", ["makespan", "arrivals"])
def test_runs_cut_off_by_the_drain_timeout_count_the_same_in_both_modes(window):
    """Requests still decoding when the simulation stops: their steps before the end count, in
    jump mode as in step mode (a decode run in progress at the end used to go unrecorded)."""
    sc = scenario_from_dict(base_dict(duration_s=1.0, drain_timeout_s=3.0, window=window, workload={
        "arrivals": {"kind": "offline", "requests": 60},
        "input_tokens": {"kind": "fixed", "value": 200}, "output_tokens": {"kind": "fixed", "value": 3000}}))
    fast = _assert_same_summaries(sc)
    assert fast.summary["requests_in_flight"] == 60 and fast.summary["output_tokens"] > 0


def _assert_same_summaries(sc):
    fast = execute(build(sc, 3))
    ref = execute(build(sc, 3, allow_jumps=False))
    assert len(fast.iterations) < len(ref.iterations) / 3
    for k, v in ref.summary.items():
        if k in ("wall_s", "sim_requests_per_wall_s"):
            continue
        if isinstance(v, str | bool):
            assert fast.summary[k] == v, k
        else:
            assert fast.summary[k] == pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True), k
    return fast


def test_invariant_checks_catch_each_broken_figure():
    s = {"requests_arrived": 10, "requests_completed": 8, "requests_rejected": 1, "requests_in_flight": 1,
         "gpu_busy_fraction": 0.5, "kv_occupancy_mean": 0.2, "batch_size_mean": 3.0, "queue_len_mean": 0.1,
         "running_mean": 3.0, "slo_attainment": 0.9, "goodput_output_tokens": 90, "output_tokens": 100,
         "usd_per_m_slo_output_tokens": 2.0, "usd_per_m_output_tokens": 1.8}
    assert violations(s, 8, 100) == []
    for key, bad in [("gpu_busy_fraction", 1.2), ("kv_occupancy_mean", -0.1), ("batch_size_mean", 9.0),
                     ("queue_len_mean", -1.0), ("slo_attainment", 1.5), ("goodput_output_tokens", 101),
                     ("usd_per_m_slo_output_tokens", 1.0), ("requests_completed", 7)]:
        broken = violations({**s, key: bad}, 8, 100)
        needle = {"goodput_output_tokens": "goodput", "usd_per_m_slo_output_tokens": "$/M SLO",
                  "requests_completed": "requests arrived"}.get(key, key)
        assert len(broken) == 1 and needle in broken[0], (key, broken)
    assert violations(s, 8, 99) == ["output tokens in the window: 100 by iteration, 99 by request"]


def test_packed_logs_give_back_their_rows_and_typed_columns():
    from sim.metrics import LevelLog, LevelRecord

    log = LevelLog()
    log.add(0.25, 1, 3, 7)
    log.add(1.5, 0, 0, 2)
    assert len(log) == 2
    assert log.rows() == [LevelRecord(0.25, 1, 3, 7), LevelRecord(1.5, 0, 0, 2)]
    cols = log.columns()
    assert list(cols) == list(LevelRecord._fields)
    assert cols["t_s"].dtype == np.float64 and cols["waiting"].dtype == np.int64
    assert cols["running"].tolist() == [7, 2]
    assert LevelLog().columns()["t_s"].shape == (0,)


@pytest.mark.parametrize("jumps", [True, False])
def test_a_window_ending_with_the_simulation_counts_its_tokens(jumps):
    """drain_timeout_s = 0: the window's end is the simulation's end, an event that never runs;
    requests still in flight count the tokens they sampled before it, and the iteration and request
    tables agree (the invariant that failed before)."""
    d = base_dict(duration_s=30.0, warmup_s=3.0, drain_timeout_s=0.0, workload={
        "arrivals": {"kind": "poisson", "rate_per_s": 6.0},
        "input_tokens": {"kind": "uniform", "low": 100, "high": 900},
        "output_tokens": {"kind": "uniform", "low": 50, "high": 600}})
    res = execute(build(scenario_from_dict(d), allow_jumps=jumps))
    s = res.summary
    assert s["requests_in_flight"] > 0
    assert s["output_tokens"] == int(res.requests["output_tokens_in_window"].sum()) > 0


def test_latency_percentiles_when_nothing_finished_or_no_request_has_a_tpot():
    """A window where nothing finished has unbounded TTFT and TPOT (never 0, which would read as
    fast); finished requests of one output token have no TPOT (NaN) and the TPOT target constrains
    nothing."""
    slo = {"ttft_s": 5.0, "tpot_s": 0.001}
    d = lone(1000, 1, slo=slo)
    _, res = run_one(d, 1000, 1)
    s = res.summary
    assert s["requests_completed"] == 1
    assert math.isnan(s["tpot_s_at_slo_percentile"]) and s["ttft_s_at_slo_percentile"] < 5.0
    assert s["slo_met"] is True
    d = lone(1000, 500, duration_s=3.0, slo=slo)
    d["drain_timeout_s"] = 0.01
    _, res = run_one(d, 1000, 500, arrival_s=2.9)
    s = res.summary
    assert s["requests_completed"] == 0 and s["requests_arrived"] == 1
    assert s["ttft_s_at_slo_percentile"] == math.inf and s["tpot_s_at_slo_percentile"] == math.inf
    assert s["slo_met"] is False
