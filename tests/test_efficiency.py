"""Efficiency by shape (sim/perf/efficiency.py): every curve is monotone and bounded by 1, and the
roofline uses them as documented (small GEMMs slower, per-kernel start-up hidden under compute,
fixed per-layer costs outside the max, all-reduce latency growing with log2 tp)."""

from __future__ import annotations

import math

import pytest
from conftest import base_dict, step_model
from hypothesis import given
from hypothesis import strategies as st

from sim.perf import Chunk, StepShape
from sim.perf.efficiency import gemm_efficiency, saturating_share, tokens_per_expert
from sim.scenario import scenario_from_dict

sizes = st.floats(min_value=0.0, max_value=1e12, allow_nan=False)
halves = st.floats(min_value=0.0, max_value=1e9, allow_nan=False)


@given(sizes, sizes, halves)
def test_efficiency_curves_are_monotone_and_at_most_one(a, b, half):
    lo, hi = sorted((a, b))
    for curve in (gemm_efficiency, saturating_share):
        e_lo, e_hi = curve(lo, half), curve(hi, half)
        assert 0.0 <= e_lo <= e_hi <= 1.0
    # With no start-up cost the curve is flat at 1.
    assert gemm_efficiency(lo, 0.0) == 1.0 == saturating_share(lo, 0.0)


@given(st.integers(1, 100_000), st.integers(1, 100_000), st.integers(1, 512), st.data())
def test_tokens_per_expert_grows_with_tokens_and_stays_within_bounds(t1, t2, experts, data):
    k = data.draw(st.integers(1, experts))
    lo, hi = sorted((t1, t2))
    a, b = tokens_per_expert(lo, experts, k), tokens_per_expert(hi, experts, k)
    assert a <= b * (1 + 1e-12)
    # At least one token per touched expert, at most all tokens x k spread over k experts.
    assert 1.0 - 1e-9 <= a <= lo * k / min(k, experts) + 1e-9


BARE = {"iteration_overhead_s": 0.0, "per_seq_overhead_s": 0.0, "gemm_half_tokens": 0.0,
        "hbm_half_bytes_per_layer": 0.0, "layer_overhead_s": 0.0, "moe_layer_overhead_s": 0.0,
        "attention_efficiency": 0.0}


def roofline(model: str = "llama-3.1-8b", **perf):
    over = {} if model == "llama-3.1-8b" else {
        "hardware": {"gpu": "b200"},
        "serving": {"precision": {"weights": "fp4", "kv_cache": "fp8", "compute": "fp8"}}}
    return step_model(scenario_from_dict(base_dict(model=model, perf={**BARE, **perf}, **over)))


def test_small_gemms_cost_their_half_size_more_tokens():
    """A compute-bound prefill of n tokens with n_half set costs (n + n_half) / n times its GEMM
    FLOPs time; attention is untouched."""
    n, half = 4096, 256.0
    bare, slow = roofline(), roofline(gemm_half_tokens=half)
    shape = StepShape(0, 0, 1, (Chunk(0, n, True),))
    b0, b1 = bare.breakdown(shape), slow.breakdown(shape)
    m = bare.model
    gemm_s = (n * 2 * m.linear_params_per_token + 2 * m.lm_head_params) / bare.flops_per_s
    lm_s = 2 * m.lm_head_params / bare.flops_per_s
    expected = b0.compute_s + (gemm_s - lm_s) * half / n + lm_s * half / 1
    assert b1.compute_s == pytest.approx(expected, rel=1e-9)
    assert b1.memory_s == b0.memory_s


def test_moe_grouped_gemms_use_tokens_per_expert():
    """gpt-oss-120b: a batch of 512 tokens gives each of the touched experts about 16 tokens, so
    expert GEMMs slow by (16 + n_half) / 16 while the dense GEMMs slow by (512 + n_half) / 512."""
    bare, slow = roofline("gpt-oss-120b"), roofline("gpt-oss-120b", gemm_half_tokens=64.0)
    t = 512
    per_expert = tokens_per_expert(t, 128, 4)
    dense_s = t * bare.dense_flops_per_token / bare.flops_per_s
    expert_s = t * bare.expert_flops_per_token / bare.flops_per_s
    lm_s = t * bare.lm_flops_per_sample / bare.flops_per_s
    shape = StepShape(t, t * 1000.0)
    extra = slow.breakdown(shape).compute_s - bare.breakdown(shape).compute_s
    assert extra == pytest.approx(dense_s * 64 / t + expert_s * 64 / per_expert + lm_s * 64 / t, rel=1e-9)
    assert 15 < per_expert < 17


def test_kernel_start_up_adds_bytes_per_layer_on_the_memory_side():
    bare, slow = roofline(), roofline(hbm_half_bytes_per_layer=2e7)
    shape = StepShape(1, 1000.0)
    assert slow.iteration_s(shape) - bare.iteration_s(shape) == pytest.approx(
        32 * 2e7 / bare.bytes_per_s, rel=1e-9)
    # The additive form is the saturating bandwidth: bytes at bw x bytes / (bytes + 32 x 2e7).
    moved = bare.breakdown(shape).memory_s * bare.bytes_per_s
    assert slow.breakdown(shape).memory_s == pytest.approx(
        moved / (bare.bytes_per_s * saturating_share(moved, 32 * 2e7)), rel=1e-9)
    # A compute-bound prefill hides it.
    big = StepShape(0, 0, 1, (Chunk(0, 8192, True),))
    assert slow.iteration_s(big) == pytest.approx(bare.iteration_s(big), rel=1e-12)


def test_fixed_per_layer_costs_add_outside_the_max():
    dense = roofline(layer_overhead_s=1e-5, moe_layer_overhead_s=4e-5)
    moe = roofline("gpt-oss-120b", layer_overhead_s=1e-5, moe_layer_overhead_s=4e-5)
    assert dense.layer_fixed_s == pytest.approx(32 * 1e-5)
    assert moe.layer_fixed_s == pytest.approx(36 * 1e-5 + 36 * 4e-5)
    for shape in (StepShape(4, 4000.0), StepShape(0, 0, 1, (Chunk(0, 8192, True),))):
        assert dense.iteration_s(shape) - roofline().iteration_s(shape) == pytest.approx(32e-5, rel=1e-9)


def test_attention_efficiency_scales_only_attention():
    bare, slow = roofline(compute_efficiency=0.5), roofline(compute_efficiency=0.5, attention_efficiency=0.25)
    n = 16384
    shape = StepShape(0, 0, 1, (Chunk(0, n, True),))
    m = bare.model
    attn_s = m.attn_flops_per_ctx_token() * m.layers * n * (n + 1) / 2 / (bare.gpu.peak_flops("bf16") * 0.5)
    assert slow.breakdown(shape).compute_s - bare.breakdown(shape).compute_s == pytest.approx(attn_s, rel=1e-9)
    assert math.isclose(slow.breakdown(shape).memory_s, bare.breakdown(shape).memory_s)


def test_attention_slows_with_small_heads_as_flashattention_3_measured():
    """FlashAttention-3 on H100 (BF16 forward, 16k tokens): 497 TFLOPS/s at head_dim 64, 648 at 128;
    the head-dim curve reproduces the ratio and is monotone, and gpt-oss (head_dim 64) pays it."""
    from sim.perf.efficiency import attention_head_dim_factor

    assert attention_head_dim_factor(128) == 1.0
    assert attention_head_dim_factor(64) == pytest.approx(497 / 648, abs=0.01)
    dims = [16, 32, 64, 96, 128, 192, 256, 576]
    factors = [attention_head_dim_factor(d) for d in dims]
    assert factors == sorted(factors) and all(f * 128 / (128 + 56) <= 1.0 for f in factors)
    llama, oss = roofline(attention_efficiency=0.4), roofline("gpt-oss-120b", attention_efficiency=0.4)
    # FLOPs at the compute rate per attention FLOP: 1 / (attention efficiency x head-dim factor).
    assert llama.attn_flops_eq_per_pair / llama.attn_flops_pure_per_pair == pytest.approx(llama.cfg.compute_efficiency / 0.4)
    assert oss.attn_flops_eq_per_pair / oss.attn_flops_pure_per_pair == pytest.approx(
        oss.cfg.compute_efficiency / (0.4 * attention_head_dim_factor(64)))


def test_attention_efficiency_is_capped_at_one_after_the_head_dim_factor():
    """MLA's absorbed attention (a 576-wide QK product) gains 1.31x over head_dim 128: the product
    with attention_efficiency stays at most 1 (so a high setting has no further effect)."""
    from sim.perf.efficiency import attention_head_dim_factor

    over = {"hardware": {"gpu": "b200"}, "serving": {"precision": {"weights": "fp4", "kv_cache": "fp8",
                                                                   "compute": "fp4"}, "parallelism": {"tp": 8}}}

    def eff(a: float) -> float:
        s = step_model(scenario_from_dict(base_dict(model="deepseek-r1", perf={**BARE, "attention_efficiency": a},
                                                    **over)))
        return s.cfg.compute_efficiency * s.attn_flops_pure_per_pair / s.attn_flops_eq_per_pair

    factor = attention_head_dim_factor(512 + 64)
    assert factor == pytest.approx(1.31, abs=0.01)
    assert eff(0.5) == pytest.approx(0.5 * factor)
    assert eff(0.9) == pytest.approx(1.0) and eff(1.0) == pytest.approx(1.0)
