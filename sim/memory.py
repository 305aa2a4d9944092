"""Memory plan of one replica: how a GPU's HBM splits into weights, activations and KV cache.

    KV space per GPU = HBM x gpu_memory_fraction - weights - activations
    KV blocks        = KV space / (KV bytes per token per GPU x block_tokens)

GB are 1e9 bytes, as the catalog's `hbm_gb`. The layout (sim/parallelism.py) sets what a GPU
holds. Weights per GPU: the routed experts (and their redundant copies) split over all the
stage's tp x dp_attention GPUs (slots / ep per shard, each over moe_tp GPUs), everything else
(attention, dense MLPs, shared experts, routers, embeddings, LM head) split over the attention
rank's tp GPUs and replicated across ranks; each over the largest pipeline stage's share of the layers. KV per token per GPU:
the rank's KV heads over its tp GPUs (MLA's latent is replicated on each of them; with
dp_attention each rank holds only its own sequences' KV, so the replica holds dp_attention times
the tokens), for the stage's layers. The blocks are per attention rank: every GPU of a rank holds
the same tokens. Activations: the peak of one forward pass over the token budget, hidden and
gated-MLP intermediates in BF16 (2 x (4 hidden + 2 ffn / tp) bytes per token, ffn the expert's
width times the expert imbalance for MoE models under ep) plus FP32 logits of the sampled rows (4 x vocab / tp per
sequence), and a 1 GB floor for the CUDA context, graphs and workspace, unless the scenario sets
`activation_reserve_gb`. KV per token counts the full-attention layers; a model with
sliding-window layers also holds, per request, the window's KV in those layers (or the longest
request's, when the workload's lengths are bounded below the window), as a fixed number of extra
blocks (`sliding_blocks`) from its first token: an overestimate early in a request's life, since
a real engine's window blocks grow with the context up to the window. Swapping a request moves all its layers' KV over the host link
(`swap_bytes_per_token`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sim.catalog import BYTES_PER_ELEMENT, GpuSpec, ModelSpec
from sim.parallelism import Parallelism


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory split of one replica, GB (1e9 bytes), and the KV blocks it leaves."""

    weights_gb_per_gpu: float
    activation_gb_per_gpu: float
    kv_gb_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    kv_blocks: int
    block_tokens: int
    sliding_blocks: int
    swap_bytes_per_token: float

    @property
    def kv_capacity_tokens(self) -> int:
        return self.kv_blocks * self.block_tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_bytes_per_gpu(model: ModelSpec, par: Parallelism, weights: str) -> float:
    """Weight bytes one GPU of the largest pipeline stage holds (module docstring)."""
    m = model
    routed = m.moe_layers * m.moe.experts * m.expert_params if m.moe else 0
    slots = m.moe_layers * par.expert_slots(m.moe.experts) * m.expert_params if m.moe else 0
    stage_share = par.stage_layers(m.layers) / m.layers
    per_gpu = (m.params_total - routed) / par.tp + slots / par.stage_gpus
    return per_gpu * stage_share * BYTES_PER_ELEMENT[weights]


def memory_plan(model: ModelSpec, gpu: GpuSpec, *, par: Parallelism, weights: str, kv_cache: str, block_tokens: int,
                gpu_memory_fraction: float, activation_reserve_gb: float | None, max_num_seqs: int,
                max_num_batched_tokens: int, drafter_weight_bytes: float = 0.0,
                drafter_kv_bytes_per_token: float = 0.0, longest_request_tokens: int | None = None) -> MemoryPlan:
    """The memory split of one replica's GPUs (see the module docstring). A speculative drafter's
    weights (per GPU) count as weights, and its KV per token (per GPU) is held beside the target's
    in the same blocks (a block then holds both models' KV of its tokens, as vLLM's KV-cache groups
    do). `longest_request_tokens`: the most KV tokens any request of the workload can hold, when
    the workload bounds it (fixed or uniform lengths), which caps what a request holds in
    sliding-window layers."""
    m, tp = model, par.tp
    weights_gb = (weight_bytes_per_gpu(m, par, weights) + drafter_weight_bytes) / 1e9
    if activation_reserve_gb is not None:
        act_gb = activation_reserve_gb
    else:
        # An expert shard computes each routed token at full width over moe_tp GPUs, for k / ep of
        # the tokens: per token of the budget the busiest shard holds imbalance x the width over tp.
        ffn = max(m.ffn_dim, m.moe.expert_ffn_dim * par.imbalance() if m.moe else 0) / tp
        per_token = 2 * (4 * m.hidden + 2 * ffn)
        logits = 4 * m.vocab / tp * max_num_seqs
        act_gb = 1.0 + (per_token * max_num_batched_tokens + logits) / 1e9
    kv_gb = gpu.hbm_gb * gpu_memory_fraction - weights_gb - act_gb
    stage_share = par.stage_layers(m.layers) / m.layers
    kv_bpt = m.kv_bytes_per_token(kv_cache, tp) * stage_share + drafter_kv_bytes_per_token
    blocks = int(max(0.0, kv_gb) * 1e9 // (kv_bpt * block_tokens))
    sliding = m.sliding_kv_bytes_per_request(kv_cache, tp, longest_request_tokens) * stage_share
    return MemoryPlan(
        weights_gb_per_gpu=weights_gb,
        activation_gb_per_gpu=act_gb,
        kv_gb_per_gpu=max(0.0, kv_gb),
        kv_bytes_per_token_per_gpu=kv_bpt,
        kv_blocks=blocks,
        block_tokens=block_tokens,
        sliding_blocks=math.ceil(sliding / (kv_bpt * block_tokens)) if sliding else 0,
        swap_bytes_per_token=m.layers * m.kv_bytes_per_token_per_layer(kv_cache, tp) * stage_share,
    )
