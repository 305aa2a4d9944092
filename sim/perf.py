"""Step-time model: (batch shape, model, hardware, parallelism, precision) -> seconds.

A roofline that needs no profiling (design brief, "Step-time model"). For one iteration of a
replica with tensor-parallel degree tp, per GPU:

    bytes  = weight bytes read        (dense: all weights; MoE: always-read weights + the experts
                                       the batch touches, E x (1 - (1 - k/E)^tokens) per layer)
           + KV bytes read            (attended context x KV bytes per token per layer)
           + KV bytes written         (new tokens x all layers)
           + activation traffic       (tokens x layers x (8 hidden + 3 ffn/tp) x 2 bytes x factor)
    FLOPs  = 2 x matmul params x tokens + 2 x LM-head params x sampled sequences
           + attention FLOPs          (4 x heads x head_dim per (query, key) pair per layer)
    t      = max(FLOPs / (peak[compute precision] x compute_eff), bytes / (hbm_bw x bw_eff))
           + tp all-reduce            (2 per layer: 2 (tp-1)/tp x tokens x hidden x 2 B / (link x comm_eff)
                                       + collective latency)
           + per-iteration overhead   (scheduler, kernel launch) + per-sequence overhead x sequences
                                      (sampling, detokenization, scheduling work that grows with the batch)

Weights and FLOPs divide by tp; KV divides by tp through the KV heads each GPU holds.

A decode-only iteration with a fixed set of B sequences is  max(m0 + m1 S, c0 + c1 S) + fixed,
where S is the summed context, which grows by B per step. A run of n such steps therefore has a
closed-form duration (sum of the max of two linear functions of the step index), which lets the
engine advance many decode steps in one event.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from sim.catalog import BYTES_PER_ELEMENT, GpuSpec, ModelSpec
from sim.scenario import PerfCfg, Scenario


@dataclass(frozen=True, slots=True)
class DecodeCoeffs:
    """Decode step time for B sequences: max(m0 + m1*S, c0 + c1*S) + fixed_s, S = summed context."""

    m0: float
    m1: float
    c0: float
    c1: float
    fixed_s: float
    batch: int

    def step_s(self, ctx_sum: float) -> float:
        return max(self.m0 + self.m1 * ctx_sum, self.c0 + self.c1 * ctx_sum) + self.fixed_s

    def run_s(self, ctx_sum_first: float, n_steps: int) -> float:
        """Total time of n steps; step j (0-based) has summed context ctx_sum_first + j*batch."""
        if n_steps <= 0:
            return 0.0
        b = float(self.batch)
        am, bm = self.m0 + self.m1 * ctx_sum_first, self.m1 * b
        ac, bc = self.c0 + self.c1 * ctx_sum_first, self.c1 * b
        total = self.fixed_s * n_steps
        if bm == bc:
            return total + _lin_sum(max(am, ac), bm, 0, n_steps)
        # Left of the crossing the flatter line is the larger one, right of it the steeper one.
        flat, steep = ((am, bm), (ac, bc)) if bm < bc else ((ac, bc), (am, bm))
        cross = (steep[0] - flat[0]) / (flat[1] - steep[1])
        k = min(n_steps, max(0, math.ceil(cross)))
        return total + _lin_sum(*flat, 0, k) + _lin_sum(*steep, k, n_steps)

    def steps_within(self, ctx_sum_first: float, n_max: int, elapsed_s: float) -> int:
        return steps_within(self.run_s, ctx_sum_first, n_max, elapsed_s)


def steps_within(run_s: Callable[[float, int], float], ctx_sum_first: float, n_max: int, elapsed_s: float) -> int:
    """Largest n <= n_max whose cumulative run time run_s(first, n) is <= elapsed_s (bisection;
    run_s is non-decreasing in n)."""
    lo, hi = 0, n_max
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if run_s(ctx_sum_first, mid) <= elapsed_s:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _lin_sum(a: float, b: float, lo: int, hi: int) -> float:
    """sum_{j=lo}^{hi-1} (a + b j)."""
    n = hi - lo
    if n <= 0:
        return 0.0
    return n * a + b * (lo + hi - 1) * n / 2.0


@dataclass(frozen=True, slots=True)
class Chunk:
    """A prefill chunk: `new` tokens computed on top of `prefix` tokens already in KV."""

    prefix: int
    new: int
    samples: bool  # the chunk ends the prompt, so its last position is sampled


class StepModel:
    """Precomputed per-replica constants; pure functions of batch shape afterwards."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, tp: int, weights: str, kv: str, compute: str,
                 cfg: PerfCfg) -> None:
        self.model, self.gpu, self.tp, self.cfg = model, gpu, tp, cfg
        peak = gpu.peak_flops(compute)
        if peak is None:
            raise ValueError(f"GPU {gpu.name} has no {compute} compute")
        self.flops_per_s = peak * cfg.compute_efficiency
        self.bytes_per_s = gpu.hbm_bw_tb_s * 1e12 * cfg.hbm_bw_efficiency
        wb = BYTES_PER_ELEMENT[weights]
        m = model
        self.base_weight_bytes = (m.always_read_params + m.lm_head_params) * wb / tp
        self.expert_bytes_per_layer = m.expert_params * wb / tp
        self.kv_layer_bytes = m.kv_bytes_per_token_per_layer(kv, tp)
        self.full_layers = m.full_attention_layers
        self.sliding_layers = m.attention.sliding_layers
        self.window = m.attention.sliding_window or 0
        ffn_active = m.ffn_dim if not m.moe else m.moe.expert_ffn_dim * (m.moe.experts_per_token + m.moe.shared_experts)
        self.act_bytes_per_token = m.layers * 2.0 * (8 * m.hidden + 3 * ffn_active / tp) * cfg.activation_traffic_factor
        self.linear_flops_per_token = 2.0 * m.linear_params_per_token / tp
        self.lm_flops_per_sample = 2.0 * m.lm_head_params / tp
        self.attn_flops_per_pair = m.attn_flops_per_ctx_token() / tp
        if tp > 1:
            link = gpu.scale_up_gb_s * 1e9 * cfg.comm_efficiency
            self.comm_s_per_token = 2 * m.layers * (2 * (tp - 1) / tp) * m.hidden * 2.0 / link
            self.comm_fixed_s = 2 * m.layers * cfg.collective_latency_s
        else:
            self.comm_s_per_token = 0.0
            self.comm_fixed_s = 0.0
        self._decode_cache: dict[int, DecodeCoeffs] = {}

    @classmethod
    def from_scenario(cls, sc: Scenario) -> StepModel:
        p = sc.serving.precision
        return cls(sc.model, sc.hardware.gpu, sc.serving.parallelism.tp, p.weights, p.kv_cache,
                   p.compute_precision, sc.perf)

    # ---- pieces --------------------------------------------------------------------------
    def weight_bytes(self, tokens: int) -> float:
        """Weight bytes one GPU reads for a batch of `tokens` tokens."""
        moe = self.model.moe
        if moe is None:
            return self.base_weight_bytes
        e, k = moe.experts, moe.experts_per_token
        touched = e * (1.0 - (1.0 - k / e) ** tokens)
        return self.base_weight_bytes + self.model.moe_layers * touched * self.expert_bytes_per_layer

    def _fixed_s(self, tokens: int, seqs: int) -> float:
        comm = self.comm_fixed_s + self.comm_s_per_token * tokens if tokens else 0.0
        return self.cfg.iteration_overhead_s + self.cfg.per_seq_overhead_s * seqs + comm

    # ---- decode-only iterations (closed form) -----------------------------------------------
    def decode(self, batch: int) -> DecodeCoeffs:
        """Coefficients of a decode-only step of `batch` sequences (cached per batch size)."""
        c = self._decode_cache.get(batch)
        if c is not None:
            return c
        w = self.window
        mem0 = (self.weight_bytes(batch)
                + batch * (self.model.layers * self.kv_layer_bytes + self.act_bytes_per_token)
                + self.sliding_layers * self.kv_layer_bytes * batch * w)
        mem1 = self.full_layers * self.kv_layer_bytes
        cmp0 = (batch * (self.linear_flops_per_token + self.lm_flops_per_sample)
                + self.attn_flops_per_pair * self.sliding_layers * batch * w)
        cmp1 = self.attn_flops_per_pair * self.full_layers
        c = DecodeCoeffs(
            m0=mem0 / self.bytes_per_s, m1=mem1 / self.bytes_per_s,
            c0=cmp0 / self.flops_per_s, c1=cmp1 / self.flops_per_s,
            fixed_s=self._fixed_s(batch, batch), batch=batch,
        )
        self._decode_cache[batch] = c
        return c

    # ---- general iteration ------------------------------------------------------------------
    def iteration_s(self, decode_seqs: int, decode_ctx_sum: int, chunks: list[Chunk] | tuple[Chunk, ...] = ()) -> float:
        """Time of one iteration: `decode_seqs` sequences decoding one token each with summed
        context `decode_ctx_sum` (KV length including the new token), plus prefill chunks."""
        if not chunks:
            return self.decode(decode_seqs).step_s(decode_ctx_sum) if decode_seqs else 0.0
        w = self.window
        tokens = decode_seqs
        samples = decode_seqs
        pairs_full = float(decode_ctx_sum)
        read_full = float(decode_ctx_sum)
        pairs_sl = float(decode_seqs * w)
        read_sl = float(decode_seqs * w)
        for ch in chunks:
            end = ch.prefix + ch.new
            tokens += ch.new
            samples += 1 if ch.samples else 0
            pairs_full += ch.new * ch.prefix + ch.new * (ch.new + 1) / 2.0
            read_full += end
            if w:
                pairs_sl += ch.new * min(end, w)
                read_sl += min(end, w)
        mem = (self.weight_bytes(tokens)
               + tokens * (self.model.layers * self.kv_layer_bytes + self.act_bytes_per_token)
               + self.kv_layer_bytes * (self.full_layers * read_full + self.sliding_layers * read_sl))
        cmp = (tokens * self.linear_flops_per_token + samples * self.lm_flops_per_sample
               + self.attn_flops_per_pair * (self.full_layers * pairs_full + self.sliding_layers * pairs_sl))
        return max(cmp / self.flops_per_s, mem / self.bytes_per_s) + self._fixed_s(tokens, decode_seqs + len(chunks))

    def transfer_s(self, kv_tokens: int) -> float:
        """Time to move one request's KV between GPU and host over the host link (swap)."""
        per_token = self.model.layers * self.kv_layer_bytes
        return kv_tokens * per_token / (self.gpu.host_link_gb_s * 1e9)
