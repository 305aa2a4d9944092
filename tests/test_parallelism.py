"""Replica layouts (sim/parallelism.py), their memory plan, communication costs (sim/perf/comm.py)
and expert parallelism in the step time."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT, base_dict, step_model, step_s

from sim.catalog import gpu_catalog, model_catalog
from sim.memory import memory_plan, weight_bytes_per_gpu
from sim.parallelism import DEFAULT_EXPERT_IMBALANCE, Parallelism
from sim.perf.comm import Links, all_to_all_s, allreduce_coeffs, allreduce_s, stage_transfer_s
from sim.runner import run
from sim.scenario import scenario_from_dict

R1 = model_catalog()["deepseek-r1"]


def r1_dict(**par) -> dict:
    return base_dict(model="deepseek-r1", hardware={"gpu": "h200"},
                     serving={"precision": {"weights": "fp8", "kv_cache": "fp8"}, "parallelism": par},
                     workload={"arrivals": {"kind": "poisson", "rate_per_s": 2.0}})


# ---- layout --------------------------------------------------------------------------------------

def test_layout_arithmetic():
    dep = Parallelism(tp=1, dp_attention=8, ep=8)
    assert (dep.gpus, dep.stage_gpus, dep.moe_tp) == (8, 8, 1)
    assert Parallelism(tp=2, dp_attention=4, ep=4, pp=3).gpus == 24
    assert Parallelism(tp=8, ep=2).moe_tp == 4
    assert Parallelism(tp=8).imbalance() == 1.0                    # every GPU sees every token
    assert Parallelism(tp=8, ep=8).imbalance() == DEFAULT_EXPERT_IMBALANCE
    assert Parallelism(pp=4).stage_layers(61) == 16


def plan(par: Parallelism, gpu: str = "h200", weights: str = "fp8"):
    return memory_plan(R1, gpu_catalog()[gpu], par=par, weights=weights, kv_cache="fp8", block_tokens=64,
                       gpu_memory_fraction=0.9, activation_reserve_gb=4.0, max_num_seqs=64,
                       max_num_batched_tokens=8192)


def test_memory_plan_shards_experts_over_the_stage_and_the_rest_over_tp():
    routed = R1.moe_layers * R1.moe.experts * R1.expert_params
    rest = R1.params_total - routed
    tp8, dep8 = plan(Parallelism(tp=8)), plan(Parallelism(tp=1, dp_attention=8, ep=8))
    assert tp8.weights_gb_per_gpu == pytest.approx(R1.params_total / 8 / 1e9)
    # DEP8: every GPU holds all of attention and the dense parts, and 1/8 of the routed experts
    assert dep8.weights_gb_per_gpu == pytest.approx((rest + routed / 8) / 1e9)
    assert dep8.weights_gb_per_gpu > tp8.weights_gb_per_gpu
    # MLA's latent is replicated over a TP group: a token takes the same bytes on each GPU either way,
    # but a DEP8 GPU holds only its own rank's tokens (the replica holds 8 ranks' worth)
    assert dep8.kv_bytes_per_token_per_gpu == tp8.kv_bytes_per_token_per_gpu
    # ep alone moves nothing: experts / ep per GPU, each over tp / ep GPUs
    assert weight_bytes_per_gpu(R1, Parallelism(tp=8, ep=8), "fp8") == pytest.approx(
        weight_bytes_per_gpu(R1, Parallelism(tp=8), "fp8"))
    # pipeline stages split the layers: the largest of 4 stages holds 16 of 61
    pp4 = plan(Parallelism(tp=8, pp=4))
    assert pp4.weights_gb_per_gpu == pytest.approx(tp8.weights_gb_per_gpu * 16 / 61)
    assert pp4.kv_bytes_per_token_per_gpu == pytest.approx(tp8.kv_bytes_per_token_per_gpu * 16 / 61)


def test_deepseek_r1_fp8_on_eight_h100_is_rejected_with_the_numbers():
    d = r1_dict(tp=8)
    d["hardware"] = {"gpu": "h100-sxm"}
    with pytest.raises(ValueError, match=r"model does not fit: deepseek-r1 needs 8\d\.\d GB of weights per GPU"):
        scenario_from_dict(d)
    assert scenario_from_dict(r1_dict(tp=8)).memory_plan().kv_blocks > 0       # on H200 it fits


@pytest.mark.parametrize("par,message", [
    ({"tp": 8, "ep": 3}, r"ep=3 must divide tp x dp_attention = 8"),
    ({"tp": 1, "dp_attention": 3, "ep": 3}, r"ep=3 does not divide the model's 256 routed expert slots"),
    ({"tp": 16}, r"tp=16 exceeds the GPU's scale-up domain \(8 GPUs\); set serving.parallelism.tp_across_domains"),
    ({"pp": 62}, r"pp=62 exceeds the model's 61 layers"),
    ({"tp": 1, "dp_attention": 2, "ep": 2, "pp": 2}, r"pp=2 with dp_attention=2: pipeline stages of attention ranks"),
    ({"tp": 8, "two_batch_overlap": True}, r"two_batch_overlap overlaps the expert all-to-all of attention ranks"),
    ({"tp": 8, "expert_imbalance": 0.9}, r"expert_imbalance"),
])
def test_impossible_or_unsimulated_layouts_are_named(par, message):
    with pytest.raises(ValueError, match=message):
        scenario_from_dict(r1_dict(**par))


def test_dense_models_refuse_expert_and_attention_data_parallelism():
    for par, message in (({"tp": 2, "ep": 2}, r"ep=2: llama-3.1-8b has no experts"),
                         ({"dp_attention": 2}, r"dp_attention=2: llama-3.1-8b is dense")):
        with pytest.raises(ValueError, match=message):
            scenario_from_dict(base_dict(serving={"parallelism": par}))


def test_cli_refuses_an_unsimulated_layout_with_exit_2(tmp_path):
    path = tmp_path / "pp.yaml"
    path.write_text(yaml.safe_dump(r1_dict(tp=1, dp_attention=2, ep=2, pp=2)))
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), str(path), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2
    assert "pp=2" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


# ---- communication -------------------------------------------------------------------------------

LINKS = Links(scale_up_b_s=400e9, scale_out_b_s=40e9, domain=8, step_latency_s=0.0, scale_out_latency_s=0.0)


def test_all_to_all_is_bytes_over_bandwidth_when_bandwidth_bound():
    b = 1e9
    # inside one domain: 7/8 of the bytes leave the GPU over NVLink
    assert all_to_all_s(b, 8, LINKS) == pytest.approx(b * 7 / 8 / 400e9)
    # 32 GPUs over 4 domains: 24/32 of the bytes cross the scale-out network, which binds
    assert all_to_all_s(b, 32, LINKS) == pytest.approx(b * 24 / 32 / 40e9)
    # 12 GPUs over a full domain of 8 and a partial one of 4: a GPU of the partial domain sends
    # 8/12 of its bytes over the scale-out network, and it is the slowest
    assert all_to_all_s(b, 12, LINKS) == pytest.approx(b * 8 / 12 / 40e9)
    # with a fast scale-out network the full domain's NVLink share binds instead
    fast = LINKS._replace(scale_out_b_s=4000e9)
    assert all_to_all_s(b, 12, fast) == pytest.approx(b * 7 / 12 / 400e9)
    # a 72-GPU domain keeps it all on NVLink
    assert all_to_all_s(b, 72, LINKS._replace(domain=72)) == pytest.approx(b * 71 / 72 / 400e9)
    assert all_to_all_s(b, 1, LINKS) == 0.0


def test_all_to_all_and_stage_transfer_latency_bound():
    lat = LINKS._replace(step_latency_s=2e-6, scale_out_latency_s=3.7e-6)
    assert all_to_all_s(1.0, 8, lat) == pytest.approx(2e-6, rel=1e-3)
    assert all_to_all_s(1.0, 16, lat) == pytest.approx(5.7e-6, rel=1e-3)
    assert stage_transfer_s(1.0, True, lat) == pytest.approx(2e-6, rel=1e-3)
    assert stage_transfer_s(1.0, False, lat) == pytest.approx(5.7e-6, rel=1e-3)
    assert stage_transfer_s(1e9, False, LINKS) == pytest.approx(1e9 / 40e9)


def test_allreduce_ring_bytes_and_log2_latency():
    lat = LINKS._replace(step_latency_s=5e-6)
    assert allreduce_s(0.0, 1, lat) == 0.0
    assert allreduce_s(0.0, 2, lat) == pytest.approx(5e-6)
    assert allreduce_s(0.0, 8, lat) == pytest.approx(15e-6)
    assert allreduce_s(1e9, 8, LINKS) == pytest.approx(2 * 7 / 8 * 1e9 / 400e9)
    # a group over two domains reduces over the scale-out network and pays its latency per step
    assert allreduce_coeffs(1.0, 16, lat._replace(scale_out_latency_s=3e-6)) == pytest.approx(
        (2 * 15 / 16 / 40e9, 4 * 8e-6))


def test_tensor_parallel_group_across_domains_runs_and_pays_the_scale_out_network():
    d = base_dict(model="llama-3.1-70b", hardware={"gpu": "h100-sxm"},
                  serving={"parallelism": {"tp": 16, "tp_across_domains": True}},
                  workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}}, duration_s=20.0)
    sc = scenario_from_dict(d)
    inside = step_model(scenario_from_dict({**d, "hardware": {"gpu": "h100-sxm", "overrides": {"scale_up_domain": 16}}}))
    across = step_model(sc)
    g = sc.hardware.gpu
    assert across.comm_s_per_token / inside.comm_s_per_token == pytest.approx(g.scale_up_gb_s / g.scale_out_gb_s)
    assert step_s(across, 8, 8000) > step_s(inside, 8, 8000)
    # the scale-out network of the hardware block reaches the step time
    faster = step_model(scenario_from_dict({**d, "hardware": {"gpu": "h100-sxm", "overrides": {"scale_out_gb_s": 100}}}))
    assert across.comm_s_per_token / faster.comm_s_per_token == pytest.approx(2.0)
    res = run(sc)
    assert res.summary["requests_completed"] > 0 and sc.gpus == 16


# ---- expert parallelism in the step time -----------------------------------------------------------

def test_expert_parallelism_costs_its_imbalance():
    tp8 = step_model(scenario_from_dict(r1_dict(tp=8)))
    balanced = step_model(scenario_from_dict(r1_dict(tp=8, ep=8, expert_imbalance=1.0)))
    skewed = step_model(scenario_from_dict(r1_dict(tp=8, ep=8, expert_imbalance=2.0)))
    for batch in (1, 16, 256):
        ctx = batch * 2000.0
        # balanced EP8 holds 32 whole experts per GPU instead of 1/8 of all 256: the same bytes and FLOPs
        assert step_s(balanced, batch, ctx) == pytest.approx(step_s(tp8, batch, ctx), rel=1e-12)
        assert step_s(skewed, batch, ctx) > step_s(balanced, batch, ctx)
    # the busiest shard reads at most its own 32 experts, however skewed
    full = skewed.base_weight_bytes + R1.moe_layers * 32 * skewed.expert_bytes_per_layer
    assert skewed.weight_bytes(100_000) == pytest.approx(full)
    # without ep every GPU sees every token: an imbalance would change nothing, so it is refused
    with pytest.raises(ValueError, match=r"expert_imbalance=2 applies to expert parallelism \(ep > 1\); with ep=1"):
        scenario_from_dict(r1_dict(tp=8, expert_imbalance=2.0))
    with pytest.raises(ValueError, match=r"expert_imbalance=2 applies to expert parallelism"):
        scenario_from_dict(base_dict(serving={"parallelism": {"expert_imbalance": 2.0}}))
    assert math.isclose(step_model(scenario_from_dict(r1_dict(tp=8))).imbalance, 1.0)


def test_expert_parallelism_with_no_imbalance_leaves_the_memory_plan_alone():
    # the activation reserve as the scenario computes it (no fixed reserve): the same KV blocks
    for model in ("mixtral-8x7b", "gpt-oss-120b", "deepseek-r1"):
        plans = [scenario_from_dict(base_dict(model=model, hardware={"gpu": "h200"},
                                              serving={"precision": {"weights": "fp8", "kv_cache": "fp8"},
                                                       "parallelism": par})).memory_plan()
                 for par in ({"tp": 8}, {"tp": 8, "ep": 8, "expert_imbalance": 1.0})]
        assert plans[0] == plans[1], model
    def mixtral(**par):
        return scenario_from_dict(base_dict(model="mixtral-8x7b", hardware={"gpu": "h200"},
                                            serving={"parallelism": {"tp": 8, **par}})).memory_plan()
    # the busiest shard computes more tokens: a larger activation reserve, fewer KV blocks
    skewed, even = mixtral(ep=8, expert_imbalance=2.0), mixtral()
    assert skewed.activation_gb_per_gpu > even.activation_gb_per_gpu and skewed.kv_blocks < even.kv_blocks


def test_cli_runs_an_expert_parallel_scenario(tmp_path):
    d = r1_dict(tp=8, ep=8)
    d["duration_s"] = 20.0
    path = tmp_path / "ep8.yaml"
    path.write_text(yaml.safe_dump(d))
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), str(path), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    resolved = yaml.safe_load((out / "scenario.resolved.yaml").read_text())
    assert resolved["serving"]["parallelism"]["ep"] == 8
    # the resolved scenario, every field written, runs again as it is
    again = subprocess.run([sys.executable, str(ROOT / "run.py"), str(out / "scenario.resolved.yaml"), "--out",
                            str(tmp_path / "again"), "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr


# ---- attention ranks sharing expert layers (the pricing the multi-rank engine will use) -----------

def ranked(par: dict, gpu: str = "h200", model: str = "deepseek-r1"):
    from sim.perf import PerfCfg, RooflineStepModel
    from sim.perf.ranks import RankedRoofline

    layout = Parallelism(**par)
    rank = RooflineStepModel(model_catalog()[model], gpu_catalog()[gpu], layout.tp, "fp8", "fp8", "fp8", PerfCfg())
    return RankedRoofline(rank, layout, "fp8", "fp8"), rank


def decode(seqs: int, ctx_per_seq: float = 2000.0):
    from sim.perf import decode_shape

    return decode_shape(seqs, seqs * ctx_per_seq)


def test_one_rank_prices_what_the_plain_roofline_prices():
    from sim.perf import Chunk, StepShape

    one, plain = ranked({"tp": 8})
    for shape in (decode(1), decode(64), StepShape(16, 16 * 3000.0, 1, (Chunk(0, 2048, True),))):
        assert one.iteration_s([shape]) == pytest.approx(plain.iteration_s(shape), rel=1e-12)
        assert one.breakdown([shape]).all_to_all_s == 0.0


def test_the_step_waits_for_the_slowest_rank_and_ignores_their_order():
    dep8, _ = ranked({"tp": 1, "dp_attention": 8, "ep": 8})
    even = [decode(16) for _ in range(8)]
    uneven = [decode(64)] + [decode(0) for _ in range(5)] + [decode(32), decode(32)]
    t = dep8.iteration_s(uneven)
    for perm in (uneven[::-1], uneven[3:] + uneven[:3]):
        assert dep8.iteration_s(perm) == t
    # the same 128 sequences spread evenly take less time: uneven batches cost the ranks' wait
    assert dep8.iteration_s(even) < t
    assert dep8.breakdown(uneven).slowest_rank == 0
    # an idle rank still computes its experts for the others' tokens: never cheaper than all idle
    assert dep8.iteration_s([decode(0)] * 8) < dep8.iteration_s([decode(1)] + [decode(0)] * 7)


def test_dep_beats_tp_when_the_latent_kv_dominates_and_loses_at_small_batches():
    # MLA's latent is replicated over a TP group: TP8 reads every sequence's KV on every GPU,
    # DEP8 only its rank's; but DEP8 reads all non-expert weights on every GPU
    dep8, _ = ranked({"tp": 1, "dp_attention": 8, "ep": 8, "expert_imbalance": 1.0})
    tp8, _ = ranked({"tp": 8})
    assert dep8.iteration_s([decode(64, 4000.0)] * 8) < tp8.iteration_s([decode(512, 4000.0)])
    assert dep8.iteration_s([decode(1)] * 8) > tp8.iteration_s([decode(8)])


def test_all_to_all_crosses_the_scale_out_network_beyond_the_domain():
    dep8, _ = ranked({"tp": 1, "dp_attention": 8, "ep": 8})
    dep16, _ = ranked({"tp": 1, "dp_attention": 16, "ep": 16})
    per_rank = [64.0] * 8
    a8 = dep8.all_to_all_s(per_rank)
    a16 = dep16.all_to_all_s(per_rank * 2)
    assert a16 > a8 > 0.0
    # in the bandwidth-bound limit: bytes over NVLink at all_to_all_efficiency (8 GPUs, one domain)
    big = [1e6] * 8
    cfg, h200 = dep8.rank.cfg, gpu_catalog()["h200"]
    assert dep8.a2a_links.scale_up_b_s == pytest.approx(h200.scale_up_gb_s * 1e9 * cfg.all_to_all_efficiency)
    assert dep8.a2a_links.scale_out_b_s == pytest.approx(h200.scale_out_gb_s * 1e9 * cfg.all_to_all_scale_out_efficiency)
    copies = dep8.imbalance * 8e6 * 8 / 8        # routed copies (top-8) the busiest of 8 GPUs receives
    # dispatch in FP8 with FP32 scales per 128 values (1.03125 B), combine in BF16 (2 B)
    want = R1.moe_layers * copies * R1.hidden * (1.03125 + 2.0) * 7 / 8 / dep8.a2a_links.scale_up_b_s
    assert dep8.all_to_all_s(big) == pytest.approx(want, rel=1e-3)


def test_ranked_pricing_details():
    from sim.perf import PerfCfg, RooflineStepModel
    from sim.perf.ranks import RankedRoofline

    h200 = gpu_catalog()["h200"]

    def build(par: dict, compute: str = "fp8"):
        layout = Parallelism(**par)
        gpu = gpu_catalog()["b200"] if compute == "fp4" else h200
        return RankedRoofline(RooflineStepModel(R1, gpu, layout.tp, "fp8", "fp8", compute, PerfCfg()),
                              layout, "fp8", compute)

    dep = {"tp": 1, "dp_attention": 8, "ep": 8}
    # the busiest shard's expert FLOPs scale with the imbalance
    even, skew = build({**dep, "expert_imbalance": 1.0}), build({**dep, "expert_imbalance": 2.0})
    assert skew.expert_flops(1000.0, pure=True) == pytest.approx(2 * even.expert_flops(1000.0, pure=True))
    # dispatch bytes follow the GEMMs' precision: FP8 with scales, NVFP4, else BF16
    assert build(dep).dispatch_bytes_per_copy == R1.hidden * 1.03125
    assert build(dep, "fp4").dispatch_bytes_per_copy == R1.hidden * 0.5625
    assert build(dep, "bf16").dispatch_bytes_per_copy == R1.hidden * 2.0
    # experts split over 8 GPUs each (tp 8 x dp 2 over ep 2): every GPU of a shard receives its
    # tokens whole, imbalance x T x k / ep copies
    wide = build({"tp": 8, "dp_attention": 2, "ep": 2, "expert_imbalance": 1.0})
    links = wide.a2a_links._replace(step_latency_s=0.0, scale_out_latency_s=0.0)
    wide.a2a_links = links
    from sim.perf.comm import all_to_all_s as a2a
    copies = 2 * 1000.0 * 8 / 2
    want = R1.moe_layers * (a2a(copies * R1.hidden * 1.03125, 16, links) + a2a(copies * R1.hidden * 2.0, 16, links))
    assert wide.all_to_all_s([1000.0, 1000.0]) == pytest.approx(want)
    # with ranks, a MoE layer's output returns by the combine: all-reduces after attention in every
    # layer and after the dense layers' MLPs only
    tp2 = build({"tp": 2, "dp_attention": 4, "ep": 8})
    b = tp2.breakdown([decode(16)] * 4)
    share = (R1.layers + R1.dense_layers) / (2 * R1.layers)
    assert b.allreduce_s == pytest.approx(tp2.rank._comm_s(16) * share)
    # the fixed part: the overheads of the rank with the most sequences, and the per-layer costs
    ranks = [decode(4), decode(12), decode(0), decode(1)]
    assert tp2.breakdown(ranks).overhead_s == pytest.approx(tp2.rank._overhead_s(12) + tp2.rank.layer_fixed_s)
    # two-batch overlap reads every weight once more, experts included, on the memory side
    plain, tbo = build(dep), build({**dep, "two_batch_overlap": True})
    shapes = [decode(32)] * 8
    extra = plain.rank.base_weight_bytes + plain.expert_bytes_read(32 * 8)
    assert tbo.breakdown(shapes).memory_s == pytest.approx(plain.breakdown(shapes).memory_s
                                                           + extra / plain.rank.bytes_per_s)
    with pytest.raises(ValueError, match="tp=8, the layout tp=1"):
        RankedRoofline(RooflineStepModel(R1, h200, 8, "fp8", "fp8", "fp8", PerfCfg()), Parallelism(**dep), "fp8", "fp8")


def test_two_batch_overlap_hides_the_all_to_all_behind_compute_at_a_price():
    plain, _ = ranked({"tp": 1, "dp_attention": 16, "ep": 16})
    tbo, _ = ranked({"tp": 1, "dp_attention": 16, "ep": 16, "two_batch_overlap": True})
    big = [decode(128) for _ in range(16)]
    b = plain.breakdown(big)
    assert b.all_to_all_s > 0
    assert tbo.iteration_s(big) < plain.iteration_s(big)
    # a lone small batch: nothing to hide, and the weights are read twice
    small = [decode(1)] + [decode(0)] * 15
    assert tbo.iteration_s(small) > plain.iteration_s(small)


# ---- the multi-rank engine (sim/engine/ranked_replica.py) ---------------------------------------------

def dep_dict(ranks: int = 8, rate: float = 8.0, **over) -> dict:
    """DeepSeek-R1 on 8 H200 (DEP8), or Mixtral-8x7B on fewer ranks (R1 needs 8 H200s)."""
    d = r1_dict(tp=1, dp_attention=ranks, ep=ranks)
    if ranks < 8:
        d["model"] = "mixtral-8x7b"
    d["workload"] = {"arrivals": {"kind": "poisson", "rate_per_s": rate},
                     "input_tokens": {"kind": "lognormal", "mean": 1000, "cv": 0.5},
                     "output_tokens": {"kind": "lognormal", "mean": 300, "cv": 0.5}}
    d["duration_s"] = 40.0
    d["warmup_s"] = 5.0
    return deep(d, over)


def deep(d: dict, over: dict) -> dict:
    from conftest import deep_update

    return deep_update(d, over)


def test_a_lone_request_on_a_dep_replica_takes_the_priced_steps():
    from sim.perf import Chunk, StepShape

    d = deep(dep_dict(2), {"workload": {"arrivals": {"kind": "poisson", "rate_per_s": 0.02},
                              "input_tokens": {"kind": "fixed", "value": 500},
                              "output_tokens": {"kind": "fixed", "value": 20}}, "duration_s": 100.0, "warmup_s": 0.0})
    sc = scenario_from_dict(d)
    res = run(sc)
    req = res.requests[res.requests.status == "completed"]
    assert len(req) >= 1
    pricing, _ = ranked({"tp": 1, "dp_attention": 2, "ep": 2}, model="mixtral-8x7b")
    idle = StepShape()
    prefill = pricing.iteration_s([StepShape(0, 0.0, 1, (Chunk(0, 500, True),)), idle])
    decode_s = sum(pricing.iteration_s([StepShape(1, 500.0 + j), idle]) for j in range(1, 20))
    r = req.iloc[0]
    assert r.ttft_s == pytest.approx(prefill, rel=1e-9)
    assert r.e2e_s == pytest.approx(prefill + decode_s, rel=1e-9)


def test_a_dep_replica_holds_every_rank_s_kv_and_keeps_its_invariants():
    sc = scenario_from_dict(dep_dict(8))
    res = run(sc)
    s = res.summary
    assert s["kv_blocks_per_replica"] == 8 * sc.memory_plan().kv_blocks
    assert s["requests_completed"] > 200 and 0 < s["kv_occupancy_mean"] < 1
    assert s["batch_size_mean"] > 64          # beyond one rank's max_num_seqs: the ranks' batches add up
    assert sc.gpus == 8


def test_a_dep_replica_does_not_depend_on_the_order_of_its_ranks(monkeypatch):
    from sim.engine import ranked_replica

    first = run(scenario_from_dict(dep_dict(4, rate=6.0))).requests
    # ties between equally loaded ranks go to the highest index instead of the lowest: the mirror image
    real_submit = ranked_replica.RankedReplica.submit

    def mirrored(self, r):
        self.ranks.reverse()
        try:
            return real_submit(self, r)
        finally:
            self.ranks.reverse()

    monkeypatch.setattr(ranked_replica.RankedReplica, "submit", mirrored)
    second = run(scenario_from_dict(dep_dict(4, rate=6.0))).requests
    for col in ("ttft_s", "e2e_s", "finish_s"):
        np.testing.assert_allclose(first[col].to_numpy(), second[col].to_numpy(), rtol=0, atol=1e-12)


def test_dep8_outruns_tp8_per_gpu_in_an_offline_burst_for_deepseek_r1():
    # max throughput (a burst, as trtllm-bench runs it): DEP8 reads each sequence's latent KV on one
    # GPU instead of eight, so it holds and serves far larger batches
    burst = {"workload": {"arrivals": {"kind": "offline", "requests": 1500},
                          "input_tokens": {"kind": "fixed", "value": 1000},
                          "output_tokens": {"kind": "fixed", "value": 1000}},
             "warmup_s": 0.0, "duration_s": 10.0, "serving": {"batching": {"max_num_seqs": 256}}}
    dep = run(scenario_from_dict(deep(dep_dict(8), burst))).summary
    tp = run(scenario_from_dict(deep(dep_dict(8), {**burst, "serving": {
        "parallelism": {"tp": 8, "dp_attention": 1, "ep": 1}, "batching": {"max_num_seqs": 256}}}))).summary
    assert dep["output_tok_per_s_per_gpu"] > 1.5 * tp["output_tok_per_s_per_gpu"]


def test_dep_is_deterministic_and_refuses_what_it_cannot_price():
    a = run(scenario_from_dict(dep_dict(4, rate=4.0))).summary
    b = run(scenario_from_dict(dep_dict(4, rate=4.0))).summary
    assert {k: v for k, v in a.items() if k not in ("wall_s", "sim_requests_per_wall_s")} == \
        {k: v for k, v in b.items() if k not in ("wall_s", "sim_requests_per_wall_s")}
    table = ROOT / "tests" / "does-not-matter.csv"
    with pytest.raises(ValueError, match="perf.step_table"):
        scenario_from_dict({**dep_dict(8), "perf": {"step_table": str(table)}})


MTP = {"method": "mtp", "k": 1, "acceptance": {"rate": 0.8}}


def test_dep_with_mtp_drafts_on_every_rank():
    """DEP8 DeepSeek-R1 with its MTP module: each rank verifies its own drafts (mean accepted length
    1 + 0.8 at k = 1), the draft passes are priced for all ranks (one MoE layer's share of a
    one-token step through the shared experts, plus each rank's LM head), and a user's tokens come
    faster than without MTP; deterministic."""
    sc = scenario_from_dict({**dep_dict(8, rate=4.0), "speculative": MTP})
    a, b = run(sc), run(sc)
    assert a.summary["spec_mean_accepted_length"] == pytest.approx(1.8, abs=0.03)
    assert digest_frames(a) == digest_frames(b)
    plain = run(scenario_from_dict(dep_dict(8, rate=4.0))).summary
    assert a.summary["tpot_s_mean"] < 0.75 * plain["tpot_s_mean"]
    assert 0 < a.summary["spec_draft_time_share"] < 0.1
    # the draft pass: layer_share of the one-token step without its fixed time, plus the LM head
    from sim.perf import StepShape
    from sim.runner import ranked_pricing_for, step_model_for
    from sim.speculation import draft_work

    rk = step_model_for(sc)
    rr = ranked_pricing_for(sc, rk)
    assert sc.speculative is not None and rr is not None
    shapes = [StepShape(32, 32 * 1500.0, 2, (), draft_work(sc.speculative, sc.model))] * 8
    one = rr.breakdown([StepShape(32, 32 * 1500.0)] * 8)
    lm = max(rk._lm_flops(32) / rk.flops_per_s, rk.lm_head_bytes / rk.bytes_per_s)
    layer_share = shapes[0].draft.layer_share
    br = rr.breakdown(shapes)
    assert br.draft_s == pytest.approx(layer_share * (one.step_s - one.overhead_s) + lm, rel=1e-12)
    assert br.step_s == pytest.approx(rr.breakdown([s._replace(draft=None) for s in shapes]).step_s + br.draft_s)


def digest_frames(res) -> tuple:
    return (tuple(res.requests["e2e_s"].round(12).tolist()), tuple(res.iterations["output_tokens"].tolist()))


def test_redundant_experts_add_slots_that_ep_must_divide():
    gb300 = {"gpu": "gb300"}
    base = deep(r1_dict(tp=1, dp_attention=72, ep=72), {"hardware": gb300,
                                                        "serving": {"precision": {"weights": "fp4", "kv_cache": "fp8"}}})
    with pytest.raises(ValueError, match=r"ep=72 does not divide the model's 256 routed expert slots"):
        scenario_from_dict(base)
    sc = scenario_from_dict(deep(base, {"serving": {"parallelism": {"redundant_experts": 32}}}))
    routed = R1.moe_layers * R1.moe.experts * R1.expert_params
    rest = R1.params_total - routed
    # 288 slots over 72 GPUs: 4 experts each
    assert sc.memory_plan().weights_gb_per_gpu == pytest.approx((rest + routed * 288 / 256 / 72) * 0.5625 / 1e9)
    with pytest.raises(ValueError, match=r"redundant_experts=32 needs expert parallelism"):
        scenario_from_dict(r1_dict(tp=8, redundant_experts=32))
    with pytest.raises(ValueError, match=r"redundant_experts=8: llama-3.1-8b has no experts"):
        scenario_from_dict(base_dict(serving={"parallelism": {"redundant_experts": 8}}))
    # copies spread an expert's tokens: the busiest shard reads at most its own 4 slots
    from sim.perf import PerfCfg, RooflineStepModel
    from sim.perf.ranks import RankedRoofline

    layout = sc.serving.parallelism
    rank = RooflineStepModel(R1, sc.hardware.gpu, 1, "fp4", "fp8", "fp4", PerfCfg())
    pricing = RankedRoofline(rank, layout, "fp4", "fp4")
    assert pricing.expert_bytes_read(1e6) == pytest.approx(R1.moe_layers * 4 * pricing.expert_bytes)


def test_dep_levels_follow_little_s_law_and_queues_fill_by_rank():
    res = run(scenario_from_dict(dep_dict(4, rate=20.0, duration_s=60.0, warmup_s=0.0)))
    s, req = res.summary, res.requests
    done = req[req.status == "completed"]
    # mean waiting requests = arrival rate x mean time waiting (the window is the arrival period)
    want = done["queue_s"].sum() / 60.0
    assert s["queue_len_mean"] == pytest.approx(want, rel=0.05, abs=1e-3)
    # a full rank's queue sends requests to another rank: with a bound of 2 per rank, nothing is
    # refused while any rank has room (4 ranks hold 8 waiting)
    tight = deep(dep_dict(4, rate=30.0), {"serving": {"batching": {"max_waiting": 2, "max_num_seqs": 8},
                                                      "kv_cache": {"gpu_memory_fraction": 0.3}}})
    res = run(scenario_from_dict(tight))
    lv = res.levels
    rejected = res.requests[res.requests.reject_reason == "queue_full"]
    assert len(rejected) > 0
    for t in rejected["arrival_s"].to_numpy()[:50]:
        waiting = lv.loc[lv["t_s"] <= t, "waiting"].iloc[-1] if (lv["t_s"] <= t).any() else 0
        assert waiting >= 8, (t, waiting)


# ---- pipeline parallelism ------------------------------------------------------------------------

def test_pipeline_bubble_fraction_for_m_micro_batches_and_p_stages():
    """Serving keeps the pipeline full: a stage idles (p - m) / p of a cycle with m < p micro-batches,
    none once m >= p, and with m = p only the exposed hand-overs."""
    from sim.perf.pipeline import bubble_fraction, cycle_s

    for p in (2, 4, 8):
        for m in range(1, 2 * p + 1):
            expected = (p - m) / p if m < p else 0.0
            assert bubble_fraction(1e-3, 0.0, p, m) == pytest.approx(expected)
    assert cycle_s(1e-3, 1e-4, 4, 4) == pytest.approx(4e-3 + 3e-4)
    assert bubble_fraction(1e-3, 1e-4, 4, 4) == pytest.approx(3e-4 / 4.3e-3)
    assert bubble_fraction(1e-3, 1e-4, 4, 8) == 0.0               # spare micro-batches hide the hand-overs


def test_pipeline_cycle_is_the_slowest_stages_load_or_a_micro_batchs_round_trip():
    from sim.perf import StepShape

    sc = scenario_from_dict(base_dict(serving={"parallelism": {"tp": 1, "pp": 4}}))
    pipe = step_model(sc)
    inner = pipe.inner
    share = 8 / 32                                                 # Llama-3.1-8B: 32 layers, 8 a stage

    def lm_s(samples):                                             # the last stage runs the LM head whole
        return max(inner._lm_flops(samples) / inner.flops_per_s, inner.lm_head_bytes / inner.bytes_per_s)

    def cycle(b, m):
        t = inner.iteration_s(StepShape(b, b * 700.0))
        handovers = 3 * stage_transfer_s(b * 4096 * 2.0, True, inner.links)
        return max(m * (share * (t - lm_s(b)) + lm_s(b)), t + handovers), t, handovers

    # 64 sequences: 4 micro-batches of 16; the hand-overs and the LM head's extra turn compete
    want, t16, h16 = cycle(16, 4)
    assert pipe.iteration_s(StepShape(64, 64 * 700.0)) == pytest.approx(want, rel=1e-12)
    assert pipe.decode_run(64).step_s(64 * 700.0) == pytest.approx(want, rel=1e-12)
    assert want >= t16 + h16 * 0.999
    # uneven micro-batches: the largest (ceil(B / p) sequences) sets the pace
    assert pipe.iteration_s(StepShape(13, 13 * 700.0)) == pytest.approx(cycle(4, 4)[0], rel=1e-12)
    # one sequence: its round trip through the whole model once, not p times the slowest stage
    one = StepShape(1, 700.0)
    want1, t1, h1 = cycle(1, 1)
    assert pipe.iteration_s(one) == pytest.approx(t1 + h1, rel=1e-12) == pytest.approx(want1, rel=1e-12)
    stage1 = share * (t1 - lm_s(1)) + lm_s(1)
    assert pipe.bubble_fraction(one) == pytest.approx(1 - stage1 / (t1 + h1), rel=1e-9)
    assert 0.6 < pipe.bubble_fraction(one) < 0.75
    assert pipe.decode_utilization(1).step_s(700.0) == pytest.approx(pipe.utilization_s(one), rel=1e-12)
    assert pipe.utilization_s(one) < 0.3 * pipe.utilization_s(StepShape(4, 4 * 700.0))


def test_a_pipeline_decode_run_prices_every_step_as_its_iterations():
    """The decode run's pieces (the larger of the two cycle forms, cut where they cross) sum to the
    step-by-step cycles, along a context path that crosses the forms."""
    from sim.perf import LinearPath, StepShape, steps_within

    for par in ({"tp": 1, "pp": 4}, {"tp": 2, "pp": 2}):
        pipe = step_model(scenario_from_dict(base_dict(serving={"parallelism": par})))
        for batch in (1, 3, 16, 57):
            run = pipe.decode_run(batch)
            for first in (0.0, 5_000.0, 400_000.0):
                path = LinearPath(first, float(batch))
                brute = sum(pipe.iteration_s(StepShape(batch, first + batch * j)) for j in range(400))
                assert run.run_s(path, 400) == pytest.approx(brute, rel=1e-9)
                assert steps_within(run, path, 400, run.run_s(path, 123)) == 123


def test_pipeline_handovers_leave_the_domain_only_at_its_edge():
    """TP4 x PP4 on 8-GPU nodes: stages 0-1 on node 0, 2-3 on node 1: one of three boundaries
    crosses InfiniBand; TP8 x PP2: the one boundary crosses."""
    from sim.perf.pipeline import PipelineStepModel

    d = base_dict(model="llama-3.1-70b", serving={"precision": {"weights": "fp8", "kv_cache": "fp8"}})
    pipes = [step_model(scenario_from_dict({**d, "serving": {**d["serving"], "parallelism": par}}))
             for par in ({"tp": 4, "pp": 4}, {"tp": 8, "pp": 2}, {"tp": 2, "pp": 4})]
    assert all(isinstance(p, PipelineStepModel) for p in pipes)
    assert [p.crossings for p in pipes] == [1, 1, 0]
    p44 = pipes[0]
    out, inside = (stage_transfer_s(10 * 8192 * 2.0 / 4, same, p44.links) for same in (False, True))
    assert p44.handovers_s(10) == pytest.approx(out + 2 * inside)


def test_pipeline_stages_hold_their_share_and_cost_per_token_latency():
    """pp splits the weights and KV like tp but does not shorten a decode step: a memory-bound
    step reads every stage's weights once per micro-batch, so PP2 is slower per token than TP2 on the
    same two GPUs, and both hold about half the weights per GPU."""
    d = base_dict(model="llama-3.1-70b", hardware={"gpu": "h200"},
                  serving={"precision": {"weights": "fp8", "kv_cache": "fp8"}},
                  workload={"arrivals": {"kind": "poisson", "rate_per_s": 1.0}})
    pp2 = scenario_from_dict({**d, "serving": {**d["serving"], "parallelism": {"tp": 1, "pp": 2}}})
    tp2 = scenario_from_dict({**d, "serving": {**d["serving"], "parallelism": {"tp": 2}}})
    assert pp2.memory_plan().weights_gb_per_gpu == pytest.approx(tp2.memory_plan().weights_gb_per_gpu, rel=0.02)
    a, b = run(pp2).summary, run(tp2).summary
    assert a["tpot_s_p50"] > b["tpot_s_p50"]
    assert a["requests_completed"] == b["requests_completed"] > 0


def test_pipeline_with_speculation_or_attention_ranks_is_refused():
    with pytest.raises(ValueError, match=r"pp=2, speculative decoding is not simulated"):
        scenario_from_dict(base_dict(serving={"parallelism": {"pp": 2}},
                                     speculative={"method": "eagle", "k": 2,
                                                  "acceptance": {"mean_accepted_length": {2: 1.89}}}))


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_dep_with_drafts_under_kv_pressure_keeps_its_invariants(preemption):
    """EAGLE drafts on four Mixtral ranks with little KV: requests are preempted and resumed on their
    rank, every invariant holds (the run checks them), and the accepted length is the model's."""
    d = dep_dict(4, rate=20.0, duration_s=30.0)
    d = deep(d, {"hardware": {"gpu": "h100-sxm"},
                 "serving": {"kv_cache": {"gpu_memory_fraction": 0.2}, "batching": {"preemption": preemption}},
                 "speculative": {"method": "eagle", "k": 2, "acceptance": {"rate": 0.7}}})
    s = run(scenario_from_dict(d)).summary
    assert s["preemptions"] > 0 and s["requests_completed"] > 0
    assert s["spec_mean_accepted_length"] == pytest.approx(1 + 0.7 + 0.49, abs=0.03)
