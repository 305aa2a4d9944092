"""Speculative decoding and MTP: acceptance sampling, the speculative decode set, exactness of
jumps against step-by-step simulation, the step-time model's verification and draft costs, the
published batch-size behaviour, metrics, determinism and bad input."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import base_dict, step_model
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine.request import Request
from sim.engine.spec_decode_set import SpecDecodeSet
from sim.errors import InputError
from sim.perf import DraftWork, StepShape
from sim.runner import build, execute, without_speculation
from sim.scenario import scenario_from_dict
from sim.speculation import (
    AcceptanceSampler,
    Speculative,
    _thresholds,
    _tokens_per_step,
    comparison,
    mean_tokens_geometric,
    rate_for_mean_length,
    survival,
)

ROOT = Path(__file__).resolve().parents[1]
EAGLE = {"method": "eagle", "k": 3, "acceptance": {"rate": 0.7}}


def spec(**over) -> Speculative:
    return Speculative.model_validate({**EAGLE, **over})


def varied(spec_block: dict | None, **over) -> dict:
    """A short mixed-load scenario with varied lengths, speculative if spec_block is given."""
    d = base_dict(**{"duration_s": 90.0, **over})
    d["workload"] = {"arrivals": {"kind": "gamma", "rate_per_s": 5.0, "cv": 2.0},
                     "input_tokens": {"kind": "lognormal", "mean": 1200, "cv": 1.0},
                     "output_tokens": {"kind": "lognormal", "mean": 200, "cv": 1.0}}
    if spec_block is not None:
        d["speculative"] = spec_block
    return d


# ---- acceptance -----------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha,k", [(0.0, 3), (0.5, 1), (0.7, 3), (0.85, 5), (1.0, 4)])
def test_mean_tokens_per_step_matches_the_closed_form(alpha, k):
    s = AcceptanceSampler(spec(k=k, acceptance={"rate": alpha}), root_seed=5)
    expected = (1 - alpha ** (k + 1)) / (1 - alpha) if alpha < 1 else k + 1.0
    assert s.mean_tokens == pytest.approx(expected, rel=1e-12)
    # Draws of many requests: tokens per step has variance <= k^2 / 4, so with n steps the mean is
    # within 5 standard errors of the expectation except with probability < 1e-6.
    steps = np.concatenate([np.diff(s.cumulative_tokens(rid, 2000)) for rid in range(100)])
    tol = 5 * (k / 2) / math.sqrt(len(steps)) + 1e-12
    assert steps.min() >= 1 and steps.max() <= k + 1
    assert abs(steps.mean() - expected) <= tol


def test_per_position_acceptance_gives_the_chain_expectation():
    a = [0.9, 0.6, 0.3]
    s = AcceptanceSampler(spec(acceptance={"per_position": a}), root_seed=1)
    expected = 1 + 0.9 + 0.9 * 0.6 + 0.9 * 0.6 * 0.3
    assert s.mean_tokens == pytest.approx(expected)
    steps = np.concatenate([np.diff(s.cumulative_tokens(rid, 3000)) for rid in range(100)])
    assert abs(steps.mean() - expected) <= 5 * 1.5 / math.sqrt(len(steps))
    # The share of steps that accepted at least i drafts is S_i = a_1 ... a_i.
    for i, s_i in enumerate(np.cumprod(a), 1):
        assert abs((steps >= i + 1).mean() - s_i) <= 5 * 0.5 / math.sqrt(len(steps))


def test_mean_accepted_length_table_forms():
    full = spec(acceptance={"mean_accepted_length": {1: 1.8, 2: 2.4, 3: 2.8}})
    np.testing.assert_allclose(survival(full.acceptance, 3), [0.8, 0.6, 0.4])
    sparse = spec(k=2, acceptance={"mean_accepted_length": {2: 1.89, 4: 2.08}})
    alpha = rate_for_mean_length(1.89, 2)
    assert mean_tokens_geometric(alpha, 2) == pytest.approx(1.89, abs=1e-9)
    np.testing.assert_allclose(survival(sparse.acceptance, 2), [alpha, alpha ** 2])


def test_each_request_has_its_own_stream():
    s = AcceptanceSampler(spec(), root_seed=3)
    a = s.cumulative_tokens(7, 2000)            # beyond its block row (256 steps): its own stream too
    assert len(a) > 257
    s.cumulative_tokens(8, 2000)                # another request in between changes nothing
    fresh = AcceptanceSampler(spec(), root_seed=3)
    for rid in range(0, 64 * 70, 64):           # other blocks drawn, and block 0 dropped and redrawn
        fresh.cumulative_tokens(rid + 5, 50)
    np.testing.assert_array_equal(a, fresh.cumulative_tokens(7, 2000))
    # a short output's draws are the start of a long one's (the block row, then its own stream)
    np.testing.assert_array_equal(s.cumulative_tokens(7, 20)[:10], a[:10])
    np.testing.assert_array_equal(a, s.cumulative_tokens(7, 2000))
    assert not np.array_equal(a[:50], s.cumulative_tokens(9, 500)[:50])
    assert not np.array_equal(a[:50], AcceptanceSampler(spec(), root_seed=4).cumulative_tokens(7, 500)[:50])


@pytest.mark.parametrize("s_i", [[0.7, 0.49, 0.343], [1.0, 1.0, 0.5, 0.0], list(np.linspace(0.99, 0.05, 20))])
def test_tokens_per_step_counts_the_thresholds_a_draw_is_below(s_i):
    # one comparison pass per threshold (small k) or a search (large k): the same count
    thresholds = _thresholds(np.array(s_i))
    u32 = np.random.default_rng(5).integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    want = 1 + sum((u32.astype(np.uint64) < t).astype(np.int64) for t in thresholds)
    got = _tokens_per_step(u32, thresholds)
    np.testing.assert_array_equal(got, want)
    assert got.mean() == pytest.approx(1 + sum(s_i), abs=0.02)
    if s_i[0] == 1.0:                      # S = 1 always accepts, S = 0 never
        assert (got >= 3).all() and (got <= 4).all()


@pytest.mark.parametrize("alpha,c", [(0.7, 5.0), (0.85, 1.0), (0.6, 50.0)])
def test_per_request_spread_keeps_the_per_draft_mean_and_spreads_requests(alpha, c):
    s = AcceptanceSampler(spec(acceptance={"rate": alpha}, per_request_concentration=c), root_seed=2)
    rates = np.array([s.request_survival(rid)[0] for rid in range(4000)])       # each request's a_1
    assert rates.std() > 0.03
    draws = [np.diff(s.cumulative_tokens(rid, 1500)) for rid in range(400)]
    per_request = np.array([d.mean() for d in draws])
    flat = AcceptanceSampler(spec(acceptance={"rate": alpha}), root_seed=2)
    flat_means = np.array([np.diff(flat.cumulative_tokens(rid, 1500)).mean() for rid in range(400)])
    assert per_request.std() > 2 * flat_means.std()
    # Total tokens over total steps of requests of equal length stays the scenario's E[tokens per
    # step]: the harmonic mean of the requests' own means (within sampling error).
    harmonic = 1.0 / (1.0 / per_request).mean()
    se = harmonic ** 2 * (1.0 / per_request).std() / math.sqrt(len(per_request))
    assert abs(harmonic - flat.mean_tokens) <= 5 * se + 0.01
    # Requests that accept the first draft more accept later ones more too.
    second = np.array([s.request_survival(rid)[1] / s.request_survival(rid)[0] for rid in range(200)])
    first = rates[:200]
    assert np.corrcoef(first, second)[0, 1] > 0.5


# ---- the speculative decode set against a per-member reference -----------------------------------------

class Naive:
    """Each member's future, advanced one step at a time (the reference for SpecDecodeSet)."""

    def __init__(self, q: int, bt: int) -> None:
        self.q, self.bt, self.members = q, bt, {}

    def add(self, r: Request, kv: int, cum: np.ndarray, pos: int) -> None:
        left = r.output_tokens - r.generated
        base = int(cum[pos])
        steps = int(np.searchsorted(cum, base + left)) - pos
        toks = [int(cum[pos + j]) - base for j in range(steps + 1)]
        toks[-1] = left
        self.members[r.id] = {"kv": kv, "toks": toks, "j": 0}

    def step_values(self, n: int) -> tuple[list[int], list[int], list[int]]:
        """Per step ahead: summed context, blocks held, tokens sampled (members still active)."""
        ctx, held, sampled = [], [], []
        for s in range(1, n + 1):
            c = h = t = 0
            for m in self.members.values():
                j = m["j"] + s
                if j >= len(m["toks"]):
                    continue
                before = m["kv"] + m["toks"][j - 1]
                c += before + self.q
                h += -(-(before + self.q) // self.bt)
                t += m["toks"][j] - m["toks"][j - 1]
            ctx.append(c)
            held.append(h)
            sampled.append(t)
        return ctx, held, sampled


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 400), st.integers(2, 300), st.integers(0, 6)), min_size=1, max_size=12),
       st.integers(1, 4), st.sampled_from([1, 4, 16]))
def test_spec_decode_set_matches_a_per_member_reference(joins, k, bt):
    sampler = AcceptanceSampler(spec(k=k, acceptance={"rate": 0.6}), root_seed=9)
    ds = SpecDecodeSet(bt, lambda t: -(-t // bt), sampler)
    ref = Naive(k + 1, bt)
    for i, (kv, out, gap) in enumerate(joins):
        r = Request(i, 0.0, kv, out)
        r.generated, r.seq = 1, i
        ds.add(r, kv)
        ref.add(r, kv, r.spec_cum, 0)
        n = ds.steps_to_next_finish()
        ctx, held, sampled = ref.step_values(n)
        path = ds.path()
        assert [path.at(j) for j in range(n)] == ctx
        held_now = sum(ds.held_blocks(m) for m in _members(ds))
        for s in range(1, n + 1):
            assert ds.blocks_needed(s) == held[s - 1] - held_now
            assert ds.tokens_sampled(s) == sum(sampled[:s])
        for free in (0, 3, 50):
            safe = ds.safe_steps(free, n)
            assert all(ds.blocks_needed(s) <= free for s in range(1, safe + 1))
            assert safe == n or ds.blocks_needed(safe + 1) > free
        adv = min(gap, n)
        if adv:
            ds.advance(adv)
            for m in ref.members.values():
                m["j"] += adv
            done = {r.id for r, _ in ds.pop_finished()}
            for rid in done:
                del ref.members[rid]
    for r in list(_members(ds)):
        m = ref.members[r.id]
        assert ds.generated(r) == 1 + m["toks"][m["j"]]
        assert ds.kv_tokens(r) == m["kv"] + m["toks"][m["j"]]


def _members(ds: SpecDecodeSet) -> list[Request]:
    return [r for _, _, r in ds._heap if r.in_decode]


# ---- the engine: exactness ------------------------------------------------------------------------

SPEC_CASES = {
    "eagle_chunked": (EAGLE, {}),
    "medusa_no_chunking": ({"method": "medusa", "k": 4, "acceptance": {"per_position": [0.8, 0.6, 0.4, 0.3]}},
                           {"serving": {"batching": {"chunked_prefill": False, "max_num_batched_tokens": 8192}}}),
    "draft_model_tp2": ({"method": "draft_model", "k": 4, "draft_model": "llama-3.2-1b", "acceptance": {"rate": 0.75},
                         "per_request_concentration": 8.0}, {"serving": {"parallelism": {"tp": 2}}}),
    "tight_kv_recompute": (EAGLE, {"serving": {"kv_cache": {"gpu_memory_fraction": 0.24}}}),
    "tight_kv_swap": (EAGLE, {"serving": {"kv_cache": {"gpu_memory_fraction": 0.24}, "batching": {"preemption": "swap"}}}),
    "no_evict_admission": (EAGLE, {"serving": {"kv_cache": {"gpu_memory_fraction": 0.26},
                                               "batching": {"admission": "no_evict"}}}),
    "conservative_sliding": ({"method": "eagle", "k": 2, "acceptance": {"rate": 0.6}},
                             {"model": "gpt-oss-120b", "hardware": {"gpu": "h200"},
                              "serving": {"engine": "sglang", "precision": {"weights": "fp8", "kv_cache": "fp8"}}}),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_speculative_jumps_equal_step_by_step(case):
    block, over = SPEC_CASES[case]
    d = varied(block, **over)
    d["serving"] = {**d["serving"], "replicas": 2, "router": "least_kv_load"}
    sc = scenario_from_dict(d)
    fast = execute(build(sc, 3))
    ref = execute(build(sc, 3, allow_jumps=False))
    assert len(fast.iterations) < len(ref.iterations)        # the jumps did something
    for col in ("ttft_s", "e2e_s", "queue_s", "tpot_s", "finish_s"):
        np.testing.assert_allclose(fast.requests[col], ref.requests[col], rtol=1e-9, atol=1e-9)
    assert (fast.requests["status"] == ref.requests["status"]).all()
    assert (fast.requests["preemptions"] == ref.requests["preemptions"]).all()
    for key in ("output_tokens", "spec_verify_steps", "spec_accepted_tokens"):
        assert fast.summary[key] == ref.summary[key]
    for key in ("kv_occupancy_mean", "gpu_utilization", "spec_draft_time_share", "gpu_busy_fraction"):
        assert fast.summary[key] == pytest.approx(ref.summary[key], rel=1e-9)
    if case.startswith("tight"):
        assert fast.summary["preemptions"] > 0, "the tight-KV case must exercise preemption"


def test_speculative_jumps_equal_steps_with_a_step_table(tmp_path):
    rows = ["decode_seqs,context_tokens,prefill_tokens,step_time_s"]
    for b, c, p in itertools.product([0, 1, 16, 64, 256], [128, 1024, 4096, 16384], [0, 512, 4096, 16384]):
        rows.append(f"{b},{c},{p},{0.002 + 1e-4 * b ** 0.8 + 2e-8 * b * c ** 1.1 + 3e-6 * p ** 1.05!r}")
    table = tmp_path / "table.csv"
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    for block in (EAGLE, {"method": "draft_model", "k": 2, "draft_model": "llama-3.2-1b", "acceptance": {"rate": 0.7}}):
        sc = scenario_from_dict(varied(block, perf={"step_table": str(table)}))
        fast, ref = execute(build(sc, 2)), execute(build(sc, 2, allow_jumps=False))
        np.testing.assert_allclose(fast.requests["e2e_s"], ref.requests["e2e_s"], rtol=1e-9, atol=1e-9)
        assert fast.summary["spec_draft_time_share"] == pytest.approx(ref.summary["spec_draft_time_share"], rel=1e-9)


def test_lone_request_latency_is_the_sum_of_its_verification_steps():
    from test_engine_exact import lone, run_one

    inp, out = 700, 120
    d = lone(inp, out)
    d["speculative"] = EAGLE
    sc, res = run_one(d, inp, out)
    step = step_model(sc)
    sampler = AcceptanceSampler(sc.speculative, sc.seed)
    cum = sampler.cumulative_tokens(0, out - 1)
    draft = DraftWork(3, 1.0 / sc.model.layers)
    t = res.requests["ttft_s"].iloc[0]
    done, j = 1, 0                         # the prefill sampled token 1; KV holds inp + done - 1
    while done < out:
        kv = inp + done - 1
        t += step.iteration_s(StepShape(1, kv + 4, 4, (), draft))
        done = 1 + min(int(cum[j + 1]), out - 1)
        j += 1
    assert res.requests["e2e_s"].iloc[0] == pytest.approx(t, rel=1e-12)
    assert res.summary["spec_verify_steps"] == j


# ---- step-time model ------------------------------------------------------------------------------

def test_verification_is_almost_free_when_memory_bound_and_costly_when_compute_bound():
    step = step_model(scenario_from_dict(base_dict()))
    small = step.decode_run(1, 5).step_s(2000) / step.decode_run(1).step_s(2000)
    large = step.decode_run(256, 5).step_s(256 * 200) / step.decode_run(256).step_s(256 * 200)
    assert small < 1.05                       # 5 tokens per sequence at batch 1: weights dominate
    assert large > 2.5                        # 1,280 tokens at batch 256: the GEMMs bind


def test_draft_costs_by_method():
    d = base_dict()
    target = step_model(scenario_from_dict(d))
    with_draft = step_model(scenario_from_dict({**d, "speculative": {"method": "draft_model", "k": 3,
                                                                      "draft_model": "llama-3.2-1b",
                                                                      "acceptance": {"rate": 0.7}}}))
    plain = target.decode_run(8).step_s(8000)
    head = target.decode_run(8, 4, DraftWork(3, 1 / 32))
    model = with_draft.decode_run(8, 4, DraftWork(3, 1.0))
    head_draft = head.weight * head.draft.step_s(8000)
    model_draft = model.weight * model.draft.step_s(8000)
    assert 0 < head_draft < 0.5 * plain       # three one-layer passes and LM heads
    assert head_draft < model_draft < 3 * plain   # three steps of a 1B model


def test_drafter_memory_takes_weights_and_kv():
    d = base_dict()
    plain = scenario_from_dict(d).memory_plan()
    eagle = scenario_from_dict({**d, "speculative": EAGLE}).memory_plan()
    drafted = scenario_from_dict({**d, "speculative": {"method": "draft_model", "k": 3, "draft_model": "llama-3.2-3b",
                                                       "acceptance": {"rate": 0.7}}}).memory_plan()
    assert plain.weights_gb_per_gpu < eagle.weights_gb_per_gpu < drafted.weights_gb_per_gpu
    assert drafted.weights_gb_per_gpu - plain.weights_gb_per_gpu == pytest.approx(3.21 * 2, rel=0.01)
    assert plain.kv_blocks > eagle.kv_blocks > drafted.kv_blocks
    assert eagle.kv_bytes_per_token_per_gpu == pytest.approx(plain.kv_bytes_per_token_per_gpu * 33 / 32)


# ---- published behaviour and the comparison -----------------------------------------------------------

def _pair(arrivals: dict, block: dict, **over) -> tuple[dict, dict]:
    d = base_dict(duration_s=120.0, **over)
    d["workload"] = {"arrivals": arrivals,
                     "input_tokens": {"kind": "fixed", "value": 1000},
                     "output_tokens": {"kind": "fixed", "value": 300}}
    sc = scenario_from_dict({**d, "speculative": block})
    with_spec = execute(build(sc)).summary
    without = execute(build(without_speculation(sc))).summary
    return with_spec, without


def test_speedup_at_batch_one_exceeds_speedup_at_a_large_batch():
    block = {"method": "eagle", "k": 3, "acceptance": {"rate": 0.8}}
    low, low_plain = _pair({"kind": "poisson", "rate_per_s": 0.05}, block)
    # A burst of 512 requests keeps 256 decoding at once, with and without speculation (no load shed).
    high, high_plain = _pair({"kind": "offline", "requests": 512}, block,
                             serving={"batching": {"max_num_seqs": 256, "max_num_batched_tokens": 8192}})
    assert low["batch_size_mean"] < 1.5 and high["batch_size_mean"] > 100
    assert high["requests_completed"] == high_plain["requests_completed"] == 512
    low_speedup = low_plain["tpot_s_mean"] / low["tpot_s_mean"]
    high_speedup = high_plain["tpot_s_mean"] / high["tpot_s_mean"]
    assert low_speedup > 1.5
    assert low_speedup > high_speedup + 0.3


def test_zero_acceptance_costs_throughput_but_not_correctness():
    d = base_dict(duration_s=1.0, serving={"batching": {"max_num_seqs": 128, "max_num_batched_tokens": 8192}})
    d["workload"] = {"arrivals": {"kind": "offline", "requests": 400},
                     "input_tokens": {"kind": "lognormal", "mean": 800, "cv": 0.8},
                     "output_tokens": {"kind": "lognormal", "mean": 250, "cv": 0.8}}
    sc = scenario_from_dict({**d, "speculative": {"method": "eagle", "k": 3, "acceptance": {"rate": 0.0}}})
    res = execute(build(sc))
    plain = execute(build(without_speculation(sc)))
    s = res.summary
    assert s["spec_acceptance_rate"] == 0.0 and s["spec_mean_accepted_length"] == 1.0
    assert s["spec_accepted_drafts_per_step"] == 0.0
    assert s["output_tok_per_s_per_gpu"] < plain.summary["output_tok_per_s_per_gpu"]
    assert s["tpot_s_mean"] > plain.summary["tpot_s_mean"]
    for r in (res, plain):
        assert (r.requests["status"] == "completed").all()
        assert (r.requests["sampled_tokens"] == r.requests["output_tokens"]).all()
    assert s["output_tokens"] == plain.summary["output_tokens"]


def test_common_random_numbers_and_summary_figures():
    sc = scenario_from_dict(varied({"method": "eagle", "k": 4, "acceptance": {"rate": 0.75}}))
    a = execute(build(sc))
    b = execute(build(without_speculation(sc)))
    for col in ("arrival_s", "input_tokens", "output_tokens"):
        np.testing.assert_array_equal(a.requests[col], b.requests[col])
    s = a.summary
    expected = (1 - 0.75 ** 5) / (1 - 0.75)
    # Last steps are cut to what is left of each output, so the observed mean sits a little below.
    assert 0.9 * expected < s["spec_mean_accepted_length"] <= expected + 0.05
    assert s["spec_mean_accepted_length"] == pytest.approx(1 + s["spec_accepted_drafts_per_step"])
    # Over a whole batch: the mean accepted length times the mean batch of verification iterations.
    assert s["spec_tokens_per_step"] == pytest.approx(
        (s["spec_accepted_tokens"] + s["spec_verify_steps"]) / s["spec_verify_iterations"])
    assert s["spec_tokens_per_step"] >= s["spec_mean_accepted_length"]
    assert s["spec_acceptance_rate"] == pytest.approx(s["spec_accepted_tokens"] / s["spec_proposed_tokens"])
    # k drafts per verification, but for each request's last step, which proposes only what it needs.
    finished = int((a.requests["status"] == "completed").sum())
    assert 4 * s["spec_verify_steps"] - 4 * finished <= s["spec_proposed_tokens"] < 4 * s["spec_verify_steps"]
    assert 0 < s["spec_draft_time_share"] < 0.5
    assert "spec_k" not in b.summary
    cmp = comparison(s, b.summary)
    assert cmp["spec_speedup_tpot"] == pytest.approx(b.summary["tpot_s_mean"] / s["tpot_s_mean"])


# ---- determinism, CLI and bad input ----------------------------------------------------------------------

def test_deterministic_in_a_fresh_process(tmp_path):
    path = tmp_path / "s.yaml"
    import yaml

    path.write_text(yaml.safe_dump(varied({**EAGLE, "per_request_concentration": 10.0}, duration_s=40.0)))
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}"
        subprocess.run([sys.executable, str(ROOT / "run.py"), "run", str(path), "--out", str(out), "--quiet"],
                       check=True, capture_output=True, cwd=ROOT)
        s = json.loads((out / "summary.json").read_text())
        outs.append({k: v for k, v in s.items() if k not in ("wall_s", "sim_requests_per_wall_s")})
    assert outs[0] == outs[1]


def test_cli_compare_no_spec(tmp_path):
    cmd = [sys.executable, str(ROOT / "run.py"), "run", str(ROOT / "scenarios" / "eagle_llama8b_h100.yaml"),
           "--set", "duration_s=120", "--compare-no-spec", "--out", str(tmp_path / "o")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    for row in ("mean accepted length", "acceptance rate", "draft work share", "speedup vs no speculation",
                "with vs without speculative decoding", "speed per user", "cost per million output tokens"):
        assert row in p.stdout
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["spec_speedup_tpot"] > 1.0 and s["no_spec_tpot_s_mean"] > s["tpot_s_mean"]
    plain = [sys.executable, str(ROOT / "run.py"), "run", str(ROOT / "scenarios" / "quickstart.yaml"),
             "--compare-no-spec", "--out", str(tmp_path / "q")]
    p = subprocess.run(plain, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "--compare-no-spec" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "q").exists()


BAD = [
    ({"acceptance": {"rate": 1.2}}, "rate=1.2 is outside [0, 1]"),
    ({"acceptance": {"per_position": [0.9, -0.1, 0.5]}}, "outside [0, 1]"),
    ({"acceptance": {"mean_accepted_length": {1: 1.8, 2: 1.7, 3: 2.0}}}, "not non-decreasing in k"),
    ({"acceptance": {"mean_accepted_length": {1: 1.2, 2: 1.6, 3: 2.2}}}, "exceeds the gain"),
    ({"k": 0}, "speculative.k"),
    ({"method": "draft_model", "draft_model": "llama-3.1-70b"}, "is not smaller than the target"),
    ({"method": "mtp"}, "has no MTP modules"),
    ({"method": "draft_model"}, "needs a draft_model"),
    ({"acceptance": {"per_position": [True, 0.5, 0.4]}}, "per_position[0]: expected a number, got true"),
    ({"acceptance": {"mean_accepted_length": {3: 2.9, "3": 1.5}}}, "k=3 is given twice"),
    ({"acceptance": {"mean_accepted_length": {3: 2.9, "03": 2.2}}}, "k=3 is given twice"),
    ({"acceptance": {"mean_accepted_length": {2.5: 2.0, 3: 2.9}}}, "is not a whole number"),
]


@pytest.mark.parametrize("over,message", BAD)
def test_bad_speculative_blocks_exit_2_and_write_nothing(tmp_path, over, message):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(varied({**EAGLE, **over})))
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "run", str(path), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


def test_vocabulary_mismatch_needs_an_explicit_allowance():
    from sim.catalog import model_catalog

    d = {**base_dict(model="llama-3.1-70b", serving={"parallelism": {"tp": 4}})}
    other_vocab = {**model_catalog()["llama-3.2-1b"].model_dump(), "name": "other-vocab", "vocab": 32000}
    block = {"method": "draft_model", "k": 3, "draft_model": other_vocab, "acceptance": {"rate": 0.6}}
    with pytest.raises(InputError, match="vocabulary of 32,000 tokens"):
        scenario_from_dict({**d, "speculative": block})
    scenario_from_dict({**d, "speculative": {**block, "allow_vocab_mismatch": True}})


def test_token_budget_must_hold_every_sequence_s_verification():
    d = varied(EAGLE, serving={"batching": {"max_num_seqs": 64, "max_num_batched_tokens": 200}})
    with pytest.raises(InputError, match=r"max_num_batched_tokens \(200\) must be >= max_num_seqs \(64\) x "
                                         r"\(speculative.k \+ 1\) = 256"):
        scenario_from_dict(d)
    scenario_from_dict(varied(EAGLE, serving={"batching": {"max_num_seqs": 64, "max_num_batched_tokens": 256}}))


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_a_request_s_last_step_proposes_only_the_drafts_it_needs(rate):
    """With every draft accepted the acceptance rate is exactly 1, however outputs end; with none,
    0 (each last step proposes what it still needs, less the target's own token)."""
    sc = scenario_from_dict(varied({"method": "eagle", "k": 8, "acceptance": {"rate": rate}}, duration_s=30.0))
    s = execute(build(sc)).summary
    assert s["spec_acceptance_rate"] == rate
    assert s["spec_rejected_tokens"] == (0 if rate == 1.0 else s["spec_proposed_tokens"])


@pytest.mark.parametrize("over", [{}, {"serving": {"kv_cache": {"gpu_memory_fraction": 0.24}}},
                                  {"serving": {"engine": "sglang", "batching": {"max_num_seqs": 16}}}],
                         ids=["plain", "recompute_preemption", "single_steps"])
def test_history_dropped_in_batches_gives_the_same_figures(monkeypatch, over):
    """The decode set's per-step history is evaluated and dropped whenever it grows past a bound,
    after decode runs and after single iterations (SGLang's admission test changes every step, so
    overloaded it runs one step at a time): the figures are those of evaluating it once at the end,
    and memory stays bounded."""
    import sim.engine.replica as replica

    sc = scenario_from_dict(varied(EAGLE, duration_s=150.0, **over))
    whole = execute(build(sc, 3))
    monkeypatch.setattr(replica, "SPEC_HISTORY_STEPS", 40)
    sim = build(sc, 3)
    batched = execute(sim)
    assert all(rep.scheduler.decode_set.origin > 0 for rep in sim.replicas)
    assert all(rep.scheduler.decode_set.by_step.shape[0] <= 8192 for rep in sim.replicas)
    for key in ("kv_occupancy_mean", "gpu_utilization", "spec_draft_time_share", "joules_per_output_token"):
        assert batched.summary[key] == pytest.approx(whole.summary[key], rel=1e-12)
    np.testing.assert_array_equal(batched.requests["e2e_s"], whole.requests["e2e_s"])


def test_drafter_that_cannot_serve_the_target_is_named():
    tiny = {"name": "tiny", "layers": 2, "hidden": 256, "q_heads": 4, "kv_heads": 4, "head_dim": 64, "ffn_dim": 512,
            "vocab": 128256, "max_context_tokens": 16}
    block = {"method": "draft_model", "k": 2, "draft_model": tiny, "acceptance": {"rate": 0.5}}
    with pytest.raises(InputError, match="handles 16 tokens of context"):
        scenario_from_dict(varied(block))
    big = base_dict(model="llama-3.1-70b", serving={"precision": {"weights": "fp8", "kv_cache": "fp8"},
                                                    "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 8192}})
    big["speculative"] = {"method": "medusa", "k": 32, "acceptance": {"rate": 0.5}}
    with pytest.raises(InputError, match=r"speculative.method='medusa' \(k=32\) needs .* GB the drafter's"):
        scenario_from_dict(big)
