"""Step-time model: limits of the roofline, and its monotone behaviour."""

from __future__ import annotations

import pytest
from conftest import base_dict, step_model, step_s

from sim.perf import Chunk, DraftWork, LinearPath, RooflineStepModel, StepShape, steps_within
from sim.scenario import scenario_from_dict

NO_OVERHEAD = {"iteration_overhead_s": 0.0, "per_seq_overhead_s": 0.0, "activation_traffic_factor": 0.0,
               "gemm_half_tokens": 0.0, "hbm_half_bytes_per_layer": 0.0, "layer_overhead_s": 0.0,
               "moe_layer_overhead_s": 0.0, "attention_efficiency": 0.0, "comm_efficiency": 0.7}


def model(**over) -> RooflineStepModel:
    return step_model(scenario_from_dict(base_dict(perf=NO_OVERHEAD, **over)))


def test_memory_bound_decode_is_bytes_over_bandwidth():
    s = model()
    m = s.model
    ctx = 1000
    t = step_s(s, 1, ctx)
    weight = (m.always_read_params + m.lm_head_params) * 2.0
    kv = m.layers * 2 * m.kv_heads * m.head_dim * 2.0 * (ctx + 1)  # read ctx, write 1
    bw = 3.35e12 * s.cfg.hbm_bw_efficiency
    assert t == pytest.approx((weight + kv) / bw, rel=1e-12)


def test_compute_bound_prefill_is_flops_over_peak():
    s = model()
    m = s.model
    n = 8192
    t = step_s(s, 0, 0, [Chunk(0, n, True)])
    flops = 2 * m.linear_params_per_token * n + 2 * m.lm_head_params + \
        m.attn_flops_per_ctx_token() * m.layers * n * (n + 1) / 2
    assert t == pytest.approx(flops / (989e12 * s.cfg.compute_efficiency), rel=1e-12)


def test_precision_halves_weight_bytes():
    bf16 = model()
    fp8 = model(serving={"precision": {"weights": "fp8", "kv_cache": "fp8"}})
    assert fp8.base_weight_bytes == pytest.approx(bf16.base_weight_bytes / 2)
    assert step_s(fp8, 1, 10) < step_s(bf16, 1, 10)


def test_tensor_parallel_adds_allreduce_and_splits_work():
    one = model()
    two = model(serving={"parallelism": {"tp": 2}})
    assert one.comm_s_per_token == 0 and two.comm_s_per_token > 0
    m = one.model
    expected = 2 * m.layers * (2 * 1 / 2) * m.hidden * 2 / (450e9 * 0.7)
    assert two.comm_s_per_token == pytest.approx(expected)
    assert step_s(two, 64, 64 * 1000) < step_s(one, 64, 64 * 1000)


def test_moe_touched_experts_grow_with_batch():
    s = step_model(scenario_from_dict(base_dict(model="mixtral-8x7b", hardware={"gpu": "h200"},
                                                              perf=NO_OVERHEAD)))
    m = s.model
    w1, w64 = s.weight_bytes(1), s.weight_bytes(64)
    # One token touches top-2 of 8 experts per layer; 64 tokens touch (nearly) all 8.
    per_layer = m.expert_params * 2.0
    assert w1 == pytest.approx(s.base_weight_bytes + m.moe_layers * 2 * per_layer)
    assert w64 == pytest.approx(s.base_weight_bytes + m.moe_layers * 8 * (1 - (6 / 8) ** 64) * per_layer)


def test_step_time_monotone_in_batch_and_context():
    s = model()
    assert step_s(s, 2, 2000) > step_s(s, 1, 1000)
    assert step_s(s, 1, 100_000) > step_s(s, 1, 1000)
    assert step_s(s, 0, 0, [Chunk(1000, 500, True)]) > step_s(s, 0, 0, [Chunk(0, 500, True)])


def test_overhead_is_added_once_per_iteration():
    with_o = step_model(scenario_from_dict(base_dict(perf={"iteration_overhead_s": 0.004})))
    without = step_model(scenario_from_dict(base_dict(perf={"iteration_overhead_s": 0.0})))
    assert step_s(with_o, 3, 300) - step_s(without, 3, 300) == pytest.approx(0.004)
    path = LinearPath(300.0, 3.0)
    assert with_o.decode_run(3).run_s(path, 10) - without.decode_run(3).run_s(path, 10) == pytest.approx(0.04)


def test_mla_and_shared_experts():
    s = step_model(scenario_from_dict(base_dict(
        model="deepseek-v3", hardware={"gpu": "b200"}, perf=NO_OVERHEAD,
        serving={"parallelism": {"tp": 8}, "precision": {"weights": "fp4", "kv_cache": "fp8", "compute": "fp4"}})))
    m = s.model
    # Absorbed MLA: 4 x heads x (kv_lora_rank + rope) FLOPs per (query, key) pair, split over tp.
    assert s.attn_flops_per_pair == 4 * 128 * (512 + 64) / 8
    # One shared expert per MoE layer is always read; routed experts only when touched.
    shared = m.moe_layers * m.expert_params
    assert m.always_read_params >= shared
    one_token = s.weight_bytes(1) - s.base_weight_bytes
    assert one_token == pytest.approx(m.moe_layers * 256 * (1 - (1 - 8 / 256)) * s.expert_bytes_per_layer)
    # Active parameters per token: 8 routed + 1 shared expert per MoE layer, about 37B in all.
    assert m.params_active / 1e9 == pytest.approx(37, rel=0.02)


def test_verifying_several_tokens_per_sequence():
    """A decode step over q query tokens per sequence (speculative verification): nearly free while
    weights dominate the bytes, about q times the work once the batch is compute-bound."""
    s = model()
    small = [s.iteration_s(StepShape(1, 1000 + q, q)) for q in (1, 4)]
    assert small[1] / small[0] < 1.1
    big = [s.iteration_s(StepShape(1024, 1024 * (50 + q), q)) for q in (1, 4)]
    assert big[1] / big[0] > 3.0
    # q = 1 is the plain decode step; the decode run has the same step time as the general shape.
    assert s.iteration_s(StepShape(7, 7000, 1)) == step_s(s, 7, 7000)
    run = s.decode_run(7, 3)
    assert run.step_s(7000) == s.iteration_s(StepShape(7, 7000, 3))
    # Attention pairs of q queries over a KV length c (new tokens included): q c - q (q - 1) / 2;
    # every query position is sampled.
    one = s.decode_run(1, 3)
    c = 1000
    pairs = 3 * c - 3
    assert (one.c0 + one.c1 * c) * s.flops_per_s == pytest.approx(
        3 * (s.dense_flops_per_token + s.expert_flops_per_token + s.lm_flops_per_sample) + s.attn_flops_per_pair * s.full_layers * pairs,
        rel=1e-12)


def test_draft_pass_is_a_share_of_the_layers_plus_the_lm_head():
    """A draft pass of one sequence (memory-bound) reads its share of the layer weights and KV and
    the whole LM head; p passes add p times that to the verification step."""
    s = model()
    m = s.model
    ctx, share, passes = 1000, 1 / m.layers, 3
    layer_weights = m.always_read_params * 2.0
    kv = m.layers * 2 * m.kv_heads * m.head_dim * 2.0 * (ctx + 1)  # read ctx, write 1
    pass_s = (share * (layer_weights + kv) + m.lm_head_params * 2.0) / (3.35e12 * s.cfg.hbm_bw_efficiency)
    plain = s.iteration_s(StepShape(1, ctx))
    drafted = s.iteration_s(StepShape(1, ctx, 1, (), DraftWork(passes, share)))
    assert drafted - plain == pytest.approx(passes * pass_s, rel=1e-12)
    # A pass over all the layers is a plain one-token decode step (no overheads here, tp = 1),
    # in the memory-bound and in the compute-bound regime.
    for batch, ctx_sum in ((1, 1000), (512, 512 * 3000)):
        assert s.draft_pass(batch, 1.0).step_s(ctx_sum) == pytest.approx(
            s.decode_run(batch).step_s(ctx_sum), rel=1e-12)
    # No draft work, or zero passes, is the plain step.
    assert s.iteration_s(StepShape(1, ctx, 1, (), DraftWork(0, share))) == plain


def test_draft_work_in_proportion_to_the_drafter():
    """A one-layer drafter (an MTP module) adds per pass about a layer's share of a memory-bound
    step plus the LM head's (about 6.5 % of Llama-3.1-8B's weight bytes); a whole-model drafter of
    k passes costs about k steps at any batch."""
    s = model()
    layer_share = 1 / s.model.layers
    lm_share = s.lm_head_bytes / s.base_weight_bytes
    plain = s.iteration_s(StepShape(1, 1000))
    mtp = s.iteration_s(StepShape(1, 1000, 4, (), DraftWork(3, layer_share)))
    assert mtp / plain == pytest.approx(1 + 3 * (layer_share * (1 - lm_share) + lm_share), rel=0.01)
    for batch in (1, 256):
        plain = s.iteration_s(StepShape(batch, batch * 1000))
        whole = s.iteration_s(StepShape(batch, batch * 1000, 1, (), DraftWork(3, 1.0)))
        assert whole / plain == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("tp", [1, 2])
def test_drafted_decode_runs_stay_exact_and_closed_form(tp):
    """With draft work a decode run is still piecewise affine in the context: its step times match
    the general iteration, its closed-form duration matches step-by-step sums across the
    memory/compute crossings, and the engine's step search agrees with brute force."""
    s = model(serving={"parallelism": {"tp": tp}})
    draft = DraftWork(2, 0.5)
    for batch, q in ((512, 1), (512, 3), (3, 2)):
        run = s.decode_run(batch, q, draft)
        path = LinearPath(batch * 100.0, float(batch * q))
        n = 900
        steps = [run.step_s(path.at(j)) for j in range(n)]
        for j in (0, 1, 450, 899):
            assert steps[j] == pytest.approx(s.iteration_s(StepShape(batch, path.at(j), q, (), draft)), rel=1e-12)
        segs = run.segments(path, n)
        assert segs[0][0] == 0 and segs[-1][1] == n and len(segs) <= 3
        assert all(a[1] == b[0] for a, b in zip(segs, segs[1:], strict=False))
        for lo, hi, a, b in segs:
            for j in (lo, hi - 1):
                assert a + b * path.at(j) == pytest.approx(steps[j], rel=1e-12)
        for k in (1, 37, 450, n):
            assert run.run_s(path, k) == pytest.approx(sum(steps[:k]), rel=1e-10)
        elapsed = sum(steps[:300]) + steps[300] / 2
        assert steps_within(run, path, n, elapsed) == 300
    # At batch 512 the run crosses from compute-bound to memory-bound: more than one piece.
    assert len(s.decode_run(512, 1, draft).segments(LinearPath(512 * 100.0, 512.0), 900)) > 1


def test_attention_precision_changes_only_attention_time():
    """A compute-bound 8k-token prefill on H100 with FP8 GEMMs: attention at BF16 instead of FP8
    adds exactly its FLOPs x (1/BF16 peak - 1/FP8 peak); a memory-bound decode step is unchanged."""
    fp8 = {"serving": {"precision": {"weights": "fp8", "kv_cache": "fp8", "attention": "fp8"}}}
    bf16 = {"serving": {"precision": {"weights": "fp8", "kv_cache": "fp8", "attention": "bf16"}}}
    a, b = model(**fp8), model(**bf16)
    m = a.model
    n = 8192
    attn_flops = m.attn_flops_per_ctx_token() * m.layers * n * (n + 1) / 2
    eff = a.cfg.compute_efficiency
    prefill = [s.iteration_s(StepShape(0, 0.0, 1, (Chunk(0, n, True),))) for s in (a, b)]
    assert prefill[1] - prefill[0] == pytest.approx(attn_flops * (1 / (989e12 * eff) - 1 / (1979e12 * eff)), rel=1e-9)
    assert step_s(a, 1, 1000) == step_s(b, 1, 1000)


def test_default_attention_precision_follows_the_kv_cache():
    """FP8 attention where the KV cache is FP8 and the GPU has FP8; BF16 otherwise, whatever the
    GEMMs use (FP4 GEMMs on B200 do not make attention FP4)."""
    def attention(**precision) -> str:
        return model(hardware={"gpu": precision.pop("gpu", "h100-sxm")},
                     serving={"precision": precision}).attention

    assert attention(weights="fp8", kv_cache="fp8") == "fp8"
    assert attention(weights="fp8", kv_cache="bf16") == "bf16"
    assert attention(gpu="b200", weights="fp4", kv_cache="fp8", compute="fp4") == "fp8"
    assert attention(gpu="a100-80g", weights="bf16", kv_cache="bf16") == "bf16"


def test_breakdown_adds_up_to_the_step_time():
    """max(compute, memory) + communication + overheads + draft passes is the iteration's time, for
    a mixed iteration and for a decode step (whose closed form must agree)."""
    s = step_model(scenario_from_dict(base_dict(serving={"parallelism": {"tp": 2}})))
    for shape in (StepShape(64, 64 * 1500.0, 1, (Chunk(0, 2000, True), Chunk(500, 300, False))),
                  StepShape(64, 64 * 1500.0), StepShape(8, 8000.0, 3, (), DraftWork(3, 0.1))):
        b = s.breakdown(shape)
        assert max(b.compute_s, b.memory_s) + b.comm_s + b.overhead_s + b.draft_s == \
            pytest.approx(s.iteration_s(shape), rel=1e-12)
        assert b.comm_s > 0 and b.overhead_s > 0


def test_host_work_adds_to_each_iteration_unless_the_engine_overlaps_it():
    """vLLM (no async scheduling by default) adds perf.host_overhead_s + per-sequence host time to
    every iteration; TensorRT-LLM's and SGLang's overlap schedulers hide it; the key overrides."""
    host = {"host_overhead_s": 2e-3, "host_overhead_per_seq_s": 1e-5}

    def steps(**serving):
        s = step_model(scenario_from_dict(base_dict(perf={**NO_OVERHEAD, **host}, serving=serving)))
        return s.iteration_s(StepShape(8, 8000.0)), s.iteration_s(StepShape(8, 8000.0, 1, (Chunk(0, 512, True),)))

    base = step_model(scenario_from_dict(base_dict(perf=NO_OVERHEAD)))
    plain = base.iteration_s(StepShape(8, 8000.0)), base.iteration_s(StepShape(8, 8000.0, 1, (Chunk(0, 512, True),)))
    vllm = steps(engine="vllm")
    assert vllm[0] - plain[0] == pytest.approx(2e-3 + 8 * 1e-5, rel=1e-9)
    assert vllm[1] - plain[1] == pytest.approx(2e-3 + 9 * 1e-5, rel=1e-9)
    for engine in ("trtllm", "sglang"):
        assert steps(engine=engine) == pytest.approx(plain, rel=1e-12)
    assert steps(engine="trtllm", batching={"overlap_host_work": False}) == pytest.approx(vllm, rel=1e-12)
