"""Step time of a replica whose attention ranks share its expert layers (attention data
parallelism with expert parallelism, "DEP"): the pricing the multi-rank engine will use.

A replica stage of d = dp_attention ranks of tp GPUs each (sim/parallelism.py). In a step, rank r
runs attention and the dense layers on its own batch (T_r tokens, its own KV) on its tp GPUs;
then every rank's tokens pass through the expert layers together: each routed token copy is
dispatched to its expert's GPU (all-to-all), computed there and combined back (all-to-all). Each
MoE layer is a barrier, so the step waits for the slowest rank, and a rank with no requests still
computes the experts it holds for everyone else's tokens (SGLang's idle batches). Per GPU of
rank r, with T = sum of T_r:

    bytes_r = rank-local bytes (non-expert weights / tp, the rank's KV read and written, its
              activations: roofline.RooflineStepModel.shape_work) + the busiest expert shard's
              weights (the experts it holds that the T tokens touch, imbalance applied)
    FLOPs_r = rank-local FLOPs (dense GEMMs over T_r, LM head, attention) + the busiest shard's
              expert FLOPs: imbalance x T x k x 2 expert params / (tp x d), at the GEMM efficiency
              of the tokens each expert receives
    GPU_r   = max(FLOPs_r / F, bytes_r / BW)               (the roofline, per GPU)
    AR_r    = the rank's tensor-parallel all-reduces over its T_r tokens: after attention in every
              layer and after the MLP of the dense layers (a MoE layer's output comes back through
              the combine instead); none at tp = 1, DEP's usual form
    A2A     = per MoE layer, dispatch (hidden x bytes per routed copy: FP8 with one FP32 scale per
              128 values, 1.03 B, as DeepEP sends, where the GEMMs run in FP8; NVFP4, 0.5625 B, as
              TensorRT-LLM sends, where they run in FP4; else BF16) and then combine (hidden x 2 B,
              BF16), each over comm.all_to_all_s with the busiest GPU's bytes: the larger of what
              its rank sends (its tokens split over its tp GPUs, k copies each) and what its shard
              receives (every GPU of an expert shard gets the shard's tokens whole:
              imbalance x T x k / ep copies)
    step    = max_r (GPU_r + AR_r) + A2A + fixed          (fixed: overheads, per-layer costs)

Copies are counted per routed expert, as DeepEP's low-latency (decode) kernels send them; its
normal (prefill) kernels send a token once per destination GPU, so prefill all-to-all is
overstated by up to k / (GPUs a token reaches), about 1.5 for DeepSeek-R1 on 8 GPUs.

Two-batch overlap (SGLang and DeepSeek) splits the step into two halves so that each half's
all-to-all runs under the other half's compute: the weights are then read once per half, one more
read per step on the memory side of each rank's roofline (hidden when the rank is compute-bound),
and step = max(max_r (GPU_r with that read + AR_r), A2A) + fixed. The halves' GEMMs are priced at
the whole step's token counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sim.catalog import BYTES_PER_ELEMENT
from sim.parallelism import Parallelism
from sim.perf.comm import Links, all_to_all_s
from sim.perf.efficiency import experts_touched, gemm_efficiency, tokens_per_expert
from sim.perf.roofline import RooflineStepModel
from sim.perf.shape import StepShape

#: Bytes per element of a dispatched hidden state in FP8 (DeepEP: FP8 values plus one FP32 scale
#: per 128 channels, 1 + 4 / 128) and of a combined one (BF16).
FP8_DISPATCH_BYTES = 1.0 + 4.0 / 128.0
#: NVFP4: half a byte per value and one FP8 scale per 16 (TensorRT-LLM's FP4 dispatch).
FP4_DISPATCH_BYTES = 0.5 + 1.0 / 16.0
COMBINE_BYTES = 2.0
DISPATCH_BYTES = {"fp8": FP8_DISPATCH_BYTES, "fp4": FP4_DISPATCH_BYTES}


class RankedBreakdown(NamedTuple):
    """One step of a multi-rank replica in parts (seconds): the slowest rank's compute and memory
    sides (the larger is its GPU time), its all-reduce, the all-to-all, the fixed rest."""

    step_s: float
    compute_s: float
    memory_s: float
    allreduce_s: float
    all_to_all_s: float
    overhead_s: float
    slowest_rank: int
    util_s: float          # the busiest rank's binding resource at its large-kernel rate (power.py)
    draft_s: float = 0.0   # speculative draft passes before the verification (in step_s)


class RankedRoofline:
    """The step time of d attention ranks sharing expert layers (module docstring). `rank` is the
    roofline of one rank's tp GPUs (its non-expert terms are used); the experts are priced here
    over the whole stage."""

    def __init__(self, rank: RooflineStepModel, par: Parallelism, weights: str, compute: str) -> None:
        m = rank.model
        if m.moe is None:
            raise ValueError(f"{m.name} has no experts to share between attention ranks")
        if rank.tp != par.tp:
            raise ValueError(f"the rank's roofline has tp={rank.tp}, the layout tp={par.tp}")
        self.rank, self.par = rank, par
        self.experts, self.k = m.moe.experts, m.moe.experts_per_token
        self.moe_layers = m.moe_layers
        self.imbalance = par.imbalance()
        self.stage_gpus = par.stage_gpus
        # the busiest shard: slots / ep of its own (every expert once, plus redundant copies of busy
        # ones, which spread an expert's tokens over its copies), each split over moe_tp GPUs
        self.slots_per_expert = par.expert_slots(self.experts) / self.experts
        self.shard_experts = par.expert_slots(self.experts) / par.ep
        self.expert_bytes = m.expert_params * BYTES_PER_ELEMENT[weights] / par.moe_tp
        self.expert_flops_per_token = 2.0 * m.moe_layers * self.k * m.expert_params / par.stage_gpus
        self.dispatch_bytes_per_copy = m.hidden * DISPATCH_BYTES.get(compute, 2.0)
        self.combine_bytes_per_copy = m.hidden * COMBINE_BYTES
        self.overlap = par.two_batch_overlap
        self._rank_flops: dict[tuple[int, int], tuple[float, float]] = {}
        # The all-to-all reaches its own share of the links, not the all-reduce's: its many
        # peer-to-peer messages are a different kernel (perf all_to_all_efficiency over NVLink,
        # fitted; all_to_all_scale_out_efficiency over the network, DeepEP's measured RDMA rate).
        g, cfg = rank.gpu, rank.cfg
        self.a2a_links = Links(g.scale_up_gb_s * 1e9 * cfg.all_to_all_efficiency,
                               g.scale_out_gb_s * 1e9 * cfg.all_to_all_scale_out_efficiency,
                               g.scale_up_domain, cfg.collective_latency_s, g.scale_out_latency_s)
        # With attention ranks, the MoE layers' outputs return by the combine, not an all-reduce.
        self.allreduce_share = (m.layers + m.dense_layers) / (2 * m.layers) if par.dp_attention > 1 else 1.0

    # ---- the shared expert layers ----------------------------------------------------------------
    def expert_bytes_read(self, total_tokens: float) -> float:
        """Expert weight bytes the busiest shard reads in a step over `total_tokens` tokens."""
        touched = experts_touched(total_tokens, self.experts, self.k) * self.slots_per_expert / self.par.ep * self.imbalance
        return self.moe_layers * min(self.shard_experts, touched) * self.expert_bytes

    def expert_flops(self, total_tokens: float, pure: bool = False) -> float:
        """Expert FLOPs of the busiest GPU, at the GEMM efficiency of the tokens per expert."""
        if total_tokens <= 0:
            return 0.0
        flops = self.imbalance * total_tokens * self.expert_flops_per_token
        if pure:
            return flops
        per_expert = tokens_per_expert(total_tokens, self.experts, self.k)
        return flops / gemm_efficiency(per_expert, self.rank.cfg.gemm_half_tokens)

    def all_to_all_s(self, rank_tokens: Sequence[float]) -> float:
        """Dispatch and combine over all MoE layers: the busiest GPU's bytes (what its rank sends,
        split over the rank's tp GPUs, or what its shard receives, whichever is larger)."""
        total = sum(rank_tokens)
        if total <= 0 or self.par.dp_attention <= 1:
            return 0.0          # one rank: every GPU has every token, the experts' sum is an all-reduce
        sent = max(rank_tokens) / self.par.tp * self.k
        received = self.imbalance * total * self.k / self.par.ep
        copies, links = max(sent, received), self.a2a_links
        per_layer = (all_to_all_s(copies * self.dispatch_bytes_per_copy, self.stage_gpus, links)
                     + all_to_all_s(copies * self.combine_bytes_per_copy, self.stage_gpus, links))
        return self.moe_layers * per_layer

    # ---- a step --------------------------------------------------------------------------------------
    def breakdown(self, shapes: Sequence[StepShape]) -> RankedBreakdown:
        """One step of the ranks' batches (one StepShape per rank, empty for an idle rank); with
        speculative decoding, the draft passes first (`draft_s`), then the verification."""
        draft = next((s.draft for s in shapes if s.draft is not None and s.draft.passes > 0 and s.decode_seqs), None)
        b = self._verification(shapes)
        if draft is None:
            return b
        draft_s = draft.passes * self.draft_pass_s(shapes, draft.layer_share)
        return b._replace(step_s=b.step_s + draft_s, draft_s=draft_s)

    def draft_pass_s(self, shapes: Sequence[StepShape], layer_share: float) -> float:
        """One draft pass over every rank's decoding sequences (one token each): with a separate
        draft model, its own step on each rank's batch, the slowest rank's; with a draft layer of
        the target (EAGLE, DeepSeek's MTP: for a MoE target a layer whose experts are shared like
        the target's), `layer_share` of a one-token step of all ranks through the shared experts
        and the all-to-all, plus each rank's whole LM head, the slowest rank's."""
        rk = self.rank
        if rk.drafter is not None:
            return max((rk.drafter.decode_run(s.decode_seqs).step_s(s.decode_ctx_sum) for s in shapes if s.decode_seqs),
                       default=0.0)
        one_token = [StepShape(s.decode_seqs, s.decode_ctx_sum) for s in shapes]
        body = self._verification(one_token)
        lm_s = max((rk.lm_head_s(s.decode_seqs) for s in shapes), default=0.0)
        return layer_share * (body.step_s - body.overhead_s) + lm_s

    def _verification(self, shapes: Sequence[StepShape]) -> RankedBreakdown:
        """The step without its draft work (module docstring)."""
        rk = self.rank
        work = [rk.shape_work(s) for s in shapes]
        total = float(sum(w[0] for w in work))
        if not total:          # only KV moving to or from the host: no forward pass (as the roofline)
            return RankedBreakdown(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0)
        exp_bytes = self.expert_bytes_read(total) if total else 0.0
        exp_flops = self.expert_flops(total)
        extra_read = rk.base_weight_bytes + exp_bytes if self.overlap else 0.0
        best = (-1.0, 0.0, 0.0, 0.0, -1)
        util_s = 0.0
        exp_flops_pure = self.expert_flops(total, pure=True)
        flops = self._rank_flops
        for i, (tokens, samples, pairs, kv_act) in enumerate(work):
            f = flops.get((tokens, samples))
            if f is None:   # a rank's GEMM and LM-head FLOPs depend on its counts alone: priced once
                f = flops[(tokens, samples)] = (
                    rk.dense_gemm_flops(tokens) + rk._lm_flops(samples),
                    rk.dense_gemm_flops(tokens, pure=True) + rk._lm_flops(samples, pure=True))
            cmp = f[0] + rk.attn_flops_eq_per_pair * pairs + exp_flops
            mem = rk.base_weight_bytes + exp_bytes + kv_act + extra_read
            if total:
                cmp_pure = f[1] + rk.attn_flops_pure_per_pair * pairs + exp_flops_pure
                util_s = max(util_s, cmp_pure / rk.flops_per_s, mem / rk.bytes_per_s)
            mem += rk.half_bytes
            compute_s, memory_s = cmp / rk.flops_per_s, mem / rk.bytes_per_s
            ar_s = rk._comm_s(tokens) * self.allreduce_share
            t = max(compute_s, memory_s) + ar_s
            if t > best[0]:
                best = (t, compute_s, memory_s, ar_s, i)
        gpu_s, compute_s, memory_s, ar_s, slowest = best
        a2a_s = self.all_to_all_s([w[0] for w in work])
        seqs = max(s.sequences for s in shapes)
        overhead_s = rk._overhead_s(seqs) + rk.layer_fixed_s
        body_s = max(gpu_s, a2a_s) if self.overlap else gpu_s + a2a_s
        return RankedBreakdown(body_s + overhead_s, compute_s, memory_s, ar_s, a2a_s, overhead_s, slowest, util_s)

    def iteration_s(self, shapes: Sequence[StepShape]) -> float:
        return self.breakdown(shapes).step_s
