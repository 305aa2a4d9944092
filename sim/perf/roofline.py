"""Roofline step-time model: (batch shape, model, hardware, parallelism, precision) -> seconds.

A roofline that needs no profiling (design brief, "Step-time model"). For one iteration of a
replica with tensor-parallel degree tp, per GPU:

    bytes  = weight bytes read        (dense: all weights; MoE: always-read weights + the experts
                                       the batch touches, E x (1 - (1 - k/E)^tokens) per layer)
           + KV bytes read            (attended context x KV bytes per token per layer; a decoding
                                       sequence reads its KV once for all its query tokens)
           + KV bytes written         (new tokens x all layers)
           + activation traffic       (tokens x layers x (8 hidden + 3 ffn/tp) x 2 bytes x factor)
    FLOPs  = 2 x matmul params x tokens + 2 x LM-head params x sampled positions
           + attention FLOPs          (4 x heads x head_dim per (query, key) pair per layer)
    t      = max(GEMM FLOPs / (peak[compute precision] x compute_eff x gemm_eff(n))
                 + attention FLOPs / (peak[attention precision] x attention_eff),
                 (bytes + layers x half_bytes) / (hbm_bw x bw_eff))
           + tp all-reduce            (2 per layer: 2 (tp-1)/tp x tokens x hidden x 2 B / (link x comm_eff)
                                       + log2(tp) x collective latency)
           + per-iteration overhead   (scheduler, kernel launch) + per-sequence overhead x sequences
                                      (sampling, detokenization, scheduling work that grows with the batch)
           + host work                (per iteration and per sequence, unless the engine overlaps it
                                       with the GPU: TensorRT-LLM's and SGLang's overlap schedulers)
           + per-layer overheads      (layers x layer overhead + MoE layers x MoE layer overhead)

The shape efficiencies (gemm_eff(n) = n / (n + n_half) with n the GEMM's tokens, or tokens per
touched expert for routed experts; the per-kernel start-up half_bytes; the all-reduce latency; the
fixed per-layer costs) are in `efficiency.py`. `utilization_s` gives, for the power model, the same
bytes and FLOPs at the large-kernel rates without any of them.

Weights and FLOPs divide by tp; KV divides by tp through the KV heads each GPU holds. A decoding
sequence computing q query tokens (q = 1 plain decoding, k + 1 verifying k drafts) over a KV length
c (its new tokens included) attends q c - q (q - 1) / 2 (query, key) pairs and samples q positions.

Draft work (`shape.DraftWork`: p passes, each running a share f of the layers) adds, per pass over
B decoding sequences, the same terms as a one-token decode step with every per-layer term (layer
weights, KV read and written, activations, attention and matmul FLOPs, all-reduce, kernel start-up
bytes and fixed per-layer costs) scaled by f, plus
the whole LM head (each pass samples a proposed token per sequence). A pass attends over the
sequence's context S as the verification step sees it: the at most k draft tokens a pass adds are
ignored against contexts of hundreds of tokens. No per-iteration overhead is added per pass: the
drafter runs inside the iteration whose scheduling overhead is already counted.

A decode-only iteration of a fixed set of B sequences with q tokens each is
max(m0 + m1 S, c0 + c1 S) + fixed, where S is the summed context: two lines that cross at most once,
so a run along any non-decreasing context path is two affine pieces (`shape.Segment`) and has a
closed-form duration, which lets the engine advance many decode steps in one event. With draft work
the step is that plus p times a draft pass of the same form (`shape.DraftedRun`): at most three
affine pieces, still closed-form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from sim.catalog import BYTES_PER_ELEMENT, GpuSpec, ModelSpec, default_attention_precision
from sim.errors import InputError
from sim.perf.comm import Links, allreduce_coeffs
from sim.perf.config import PerfCfg
from sim.perf.efficiency import (
    attention_head_dim_factor,
    experts_touched,
    gemm_efficiency,
    tokens_per_expert,
)
from sim.perf.shape import (
    Affine,
    ContextPath,
    DecodeRun,
    DraftedRun,
    DraftWork,
    LinearPath,
    Segment,
    StepShape,
    affine_segments,
    lin_sum,
    pieces_run_s,
)


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

    @property
    def affine(self) -> Affine:
        """The step time as pieces affine in S (shape.Affine): the flatter line left of the
        crossing, the steeper right of it (one piece if the lines are parallel)."""
        f = self.fixed_s
        if self.m1 == self.c1:
            hi_line = (self.m0, self.m1) if self.m0 >= self.c0 else (self.c0, self.c1)
            return (), ((hi_line[0] + f, hi_line[1]),)
        flat, steep = ((self.m0, self.m1), (self.c0, self.c1)) if self.m1 < self.c1 else \
            ((self.c0, self.c1), (self.m0, self.m1))
        cross = (steep[0] - flat[0]) / (flat[1] - steep[1])
        return (cross,), ((flat[0] + f, flat[1]), (steep[0] + f, steep[1]))

    def segments(self, path: ContextPath, n_steps: int) -> list[Segment]:
        if n_steps <= 0:
            return []
        if self.m1 == self.c1:
            hi_line = (self.m0, self.m1) if self.m0 >= self.c0 else (self.c0, self.c1)
            return [(0, n_steps, hi_line[0] + self.fixed_s, hi_line[1])]
        # Left of the crossing the flatter line is the larger one, right of it the steeper one.
        flat, steep = ((self.m0, self.m1), (self.c0, self.c1)) if self.m1 < self.c1 else \
            ((self.c0, self.c1), (self.m0, self.m1))
        cross = (steep[0] - flat[0]) / (flat[1] - steep[1])
        if isinstance(path, LinearPath):      # the common case, without a method call
            k = min(n_steps, max(0, math.ceil((cross - path.first) / path.slope))) if path.slope > 0 else \
                (0 if path.first >= cross else n_steps)
        else:
            k = path.first_step_at_least(cross, n_steps)
        out: list[Segment] = []
        if k > 0:
            out.append((0, k, flat[0] + self.fixed_s, flat[1]))
        if k < n_steps:
            out.append((k, n_steps, steep[0] + self.fixed_s, steep[1]))
        return out

    @property
    def coeff_row(self) -> tuple[float, float, float, float, float]:
        """(m0, m1, c0, c1, fixed_s): what `ArrayPath.prefetch` evaluates as arrays."""
        return self.m0, self.m1, self.c0, self.c1, self.fixed_s

    def run_s(self, path: ContextPath, n_steps: int) -> float:
        """Total time of n steps along `path` (closed form on a linear path)."""
        if n_steps <= 0:
            return 0.0
        if not isinstance(path, LinearPath):
            return pieces_run_s(self, path, n_steps)
        b = path.slope
        am, bm = self.m0 + self.m1 * path.first, self.m1 * b
        ac, bc = self.c0 + self.c1 * path.first, self.c1 * b
        total = self.fixed_s * n_steps
        if bm == bc:
            return total + lin_sum(max(am, ac), bm, 0, n_steps)
        fa, fb, sa, sb = (am, bm, ac, bc) if bm < bc else (ac, bc, am, bm)
        k = min(n_steps, max(0, math.ceil((sa - fa) / (fb - sb))))
        # lin_sum(fa, fb, 0, k) + lin_sum(sa, sb, k, n), written out: this is the engine's hottest line.
        m = n_steps - k
        return (total + (k * fa + fb * (k - 1) * k / 2.0 if k > 0 else 0.0)
                + (m * sa + sb * (k + n_steps - 1) * m / 2.0 if m > 0 else 0.0))


class WindowedRun:
    """Decode steps of a model with sliding-window layers: each sequence's window layers attend
    min(c, w) keys of its context c, so the batch reads min(S, B w) per window layer, summed
    over the B sequences as if they were all on one side of w (exact when they are; otherwise an
    upper bound, since sum min(c_i, w) <= min(S, B w)). Below the knee S = B w the window layers
    read the whole context (`below`), above it w per sequence (`above`): two two-line forms
    meeting at the knee, so the step stays piecewise affine in S with known breakpoints."""

    __slots__ = ("below", "above", "knee", "affine")

    def __init__(self, below: DecodeCoeffs, above: DecodeCoeffs, knee: float) -> None:
        self.below, self.above, self.knee = below, above, knee
        (xb, pb), (xa, pa) = below.affine, above.affine
        left = [i for i, x in enumerate(xb) if x < knee]
        right = [i for i, x in enumerate(xa) if x > knee]
        xs = tuple(xb[i] for i in left) + (knee,) + tuple(xa[i] for i in right)
        pieces = (tuple(pb[i] for i in left) + (pb[len(left)],) + (pa[len(xa) - len(right)],)
                  + tuple(pa[i + 1] for i in right))
        self.affine: Affine = (xs, pieces)

    @property
    def batch(self) -> int:
        return self.above.batch

    def step_s(self, ctx_sum: float) -> float:
        return self.above.step_s(ctx_sum) if ctx_sum >= self.knee else self.below.step_s(ctx_sum)

    def segments(self, path: ContextPath, n_steps: int) -> list[Segment]:
        if n_steps > 0 and path.at(0) >= self.knee:       # usual for long contexts: one form
            return self.above.segments(path, n_steps)
        return affine_segments(self.affine, path, n_steps)

    def run_s(self, path: ContextPath, n_steps: int) -> float:
        if n_steps <= 0:
            return 0.0
        if path.at(0) >= self.knee:
            return self.above.run_s(path, n_steps)
        return pieces_run_s(self, path, n_steps)


class StepBreakdown(NamedTuple):
    """One iteration's time in parts: it takes max(compute_s, memory_s) + comm_s + overhead_s +
    draft_s (the side of the max that is smaller is hidden under the other)."""

    compute_s: float
    memory_s: float
    comm_s: float
    overhead_s: float
    draft_s: float


class RooflineStepModel:
    """Precomputed per-replica constants; pure functions of batch shape afterwards."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, tp: int, weights: str, kv: str, compute: str,
                 cfg: PerfCfg, attention: str | None = None, host_overlapped: bool = False,
                 drafter: RooflineStepModel | None = None, ep: int = 1, expert_imbalance: float = 1.0,
                 redundant_experts: int = 0) -> None:
        self.model, self.gpu, self.tp, self.cfg = model, gpu, tp, cfg
        # Expert parallelism inside the tensor-parallel group (sim/parallelism.py): each GPU holds
        # experts / ep whole experts split over moe_tp = tp / ep GPUs, and its busiest shard gets
        # `imbalance` times the mean routed tokens.
        self.ep, self.moe_tp = ep, tp // ep
        self.imbalance = expert_imbalance if ep > 1 else 1.0
        # expert slots per logical expert (redundant copies spread an expert's tokens over them)
        self.slots_per_expert = 1.0 if model.moe is None else (model.moe.experts + redundant_experts) / model.moe.experts
        # A separate draft model (speculative decoding) prices the draft passes with its own shape.
        self.drafter = drafter
        # Host work hidden behind the GPU's previous iteration (overlap scheduling), or added to each.
        self.host_s, self.host_per_seq_s = (0.0, 0.0) if host_overlapped else \
            (cfg.host_overhead_s, cfg.host_overhead_per_seq_s)
        peak = gpu.peak_flops(compute)
        if peak is None:
            raise InputError(f"GPU {gpu.name} has no {compute} tensor cores")
        self.flops_per_s = peak * cfg.compute_efficiency
        self.bytes_per_s = gpu.hbm_bw_tb_s * 1e12 * cfg.hbm_bw_efficiency
        wb = BYTES_PER_ELEMENT[weights]
        m = model
        self.base_weight_bytes = (m.always_read_params + m.lm_head_params) * wb / tp
        self.lm_head_bytes = m.lm_head_params * wb / tp
        self.expert_bytes_per_layer = m.expert_params * wb / self.moe_tp
        self.kv_layer_bytes = m.kv_bytes_per_token_per_layer(kv, tp)
        self.full_layers = m.full_attention_layers
        self.sliding_layers = m.attention.sliding_layers
        self.window = m.attention.sliding_window or 0
        ffn_active = m.ffn_dim if not m.moe else m.moe.expert_ffn_dim * (m.moe.experts_per_token + m.moe.shared_experts)
        self.act_bytes_per_token = m.layers * 2.0 * (8 * m.hidden + 3 * ffn_active / tp) * cfg.activation_traffic_factor
        # GEMMs whose token dimension is the batch's tokens, and routed experts whose token
        # dimension is the tokens each touched expert receives (efficiency.gemm_efficiency).
        self.dense_flops_per_token = 2.0 * m.always_read_params / tp
        self.expert_flops_per_token = (2.0 * m.moe_layers * m.moe.experts_per_token * m.expert_params / tp
                                       * self.imbalance if m.moe else 0.0)
        # Every layer's fixed cost (kernel launches, norms), and routing/permutation in MoE layers.
        self.layer_fixed_s = m.layers * cfg.layer_overhead_s + m.moe_layers * cfg.moe_layer_overhead_s
        # Per-kernel start-up, as bytes of streaming per layer (efficiency.saturating_share, additive form).
        self.half_bytes = m.layers * cfg.hbm_half_bytes_per_layer
        self.lm_flops_per_sample = 2.0 * m.lm_head_params / tp
        self.attn_flops_per_pair = m.attn_flops_per_ctx_token() / tp
        # Attention runs at its own precision's peak (FP8 or BF16 kernels, whatever the GEMMs use):
        # its FLOPs, expressed as FLOPs at the compute precision's rate, are added to the GEMMs'.
        self.attention = attention or default_attention_precision(gpu, kv)
        attn_peak = gpu.peak_flops(self.attention)
        if attn_peak is None:
            raise InputError(f"GPU {gpu.name} has no {self.attention} tensor cores for attention")
        # Attention kernels reach their own share of that peak (0: the GEMMs' compute_efficiency).
        a = m.attention
        qk_dim = (a.kv_lora_rank or 0) + (a.qk_rope_dim or 0) if a.kind == "mla" else m.head_dim
        attn_eff = min(1.0, (cfg.attention_efficiency or cfg.compute_efficiency) * attention_head_dim_factor(qk_dim))
        self.attn_flops_pure_per_pair = self.attn_flops_per_pair * (peak / attn_peak)   # at compute_efficiency
        self.attn_flops_eq_per_pair = self.attn_flops_pure_per_pair * (cfg.compute_efficiency / attn_eff)
        # Two all-reduces of the BF16 hidden state per layer (comm.py; over the scale-out network when
        # the group spans domains, which the scenario must allow).
        self.links = Links(gpu.scale_up_gb_s * 1e9 * cfg.comm_efficiency, gpu.scale_out_gb_s * 1e9 * cfg.comm_efficiency,
                           gpu.scale_up_domain, cfg.collective_latency_s, gpu.scale_out_latency_s)
        per_token_s, fixed_s = allreduce_coeffs(m.hidden * 2.0, tp, self.links)
        self.comm_s_per_token = 2 * m.layers * per_token_s
        self.comm_fixed_s = 2 * m.layers * fixed_s
        self._decode_cache: dict[tuple[int, int], DecodeCoeffs | WindowedRun] = {}
        self._drafted_cache: dict[tuple[int, int, DraftWork], DraftedRun] = {}
        self._decode1: dict[int, DecodeCoeffs | WindowedRun] = {}   # one query token per sequence: the hot case
        self._utilization_cache: dict[int, DecodeCoeffs | WindowedRun] = {}
        self._draft_pass_cache: dict[tuple[int, float, bool], DecodeCoeffs | WindowedRun] = {}
        self._spec_utilization_cache: dict[tuple[int, int, DraftWork | None], DecodeRun] = {}

    # ---- pieces --------------------------------------------------------------------------
    def weight_bytes(self, tokens: int) -> float:
        """Weight bytes one GPU reads for a batch of `tokens` tokens."""
        moe = self.model.moe
        if moe is None:
            return self.base_weight_bytes
        e, k = moe.experts, moe.experts_per_token
        # the experts the busiest shard holds that the batch touches
        touched = experts_touched(tokens, e, k) if self.ep == 1 else \
            min(e * self.slots_per_expert / self.ep,
                self.imbalance * experts_touched(tokens, e, k) * self.slots_per_expert / self.ep)
        return self.base_weight_bytes + self.model.moe_layers * touched * self.expert_bytes_per_layer

    def _gemm_flops(self, tokens: int, pure: bool = False) -> float:
        """The layers' matmul FLOPs over `tokens` tokens, each GEMM's divided by its efficiency at
        its token dimension (so they are priced at the large-batch rate); `pure`: the FLOPs alone."""
        if tokens <= 0:
            return 0.0
        half = self.cfg.gemm_half_tokens
        if pure or half <= 0.0:
            return tokens * (self.dense_flops_per_token + self.expert_flops_per_token)
        flops = self.dense_gemm_flops(tokens)
        moe = self.model.moe
        if moe is not None:
            per_expert = tokens_per_expert(tokens, moe.experts, moe.experts_per_token)
            flops += tokens * self.expert_flops_per_token / gemm_efficiency(per_expert, half)
        return flops

    def dense_gemm_flops(self, tokens: int, pure: bool = False) -> float:
        """The matmul FLOPs of everything but the routed experts over `tokens` tokens, at their
        GEMM efficiency (`pure`: alone)."""
        if tokens <= 0:
            return 0.0
        half = 0.0 if pure else self.cfg.gemm_half_tokens
        return tokens * self.dense_flops_per_token / gemm_efficiency(tokens, half)

    def _lm_flops(self, samples: int, pure: bool = False) -> float:
        """LM-head FLOPs for `samples` sampled positions, at the GEMM's efficiency (`pure`: alone)."""
        if samples <= 0:
            return 0.0
        return samples * self.lm_flops_per_sample / gemm_efficiency(samples, 0.0 if pure else self.cfg.gemm_half_tokens)

    def lm_head_s(self, samples: int, pure: bool = False) -> float:
        """The LM head over `samples` sampled positions on its own: its FLOPs or its weight read,
        the larger (a pipeline's last stage, a draft pass of attention ranks)."""
        if samples <= 0:
            return 0.0
        return max(self._lm_flops(samples, pure) / self.flops_per_s, self.lm_head_bytes / self.bytes_per_s)

    def _comm_s(self, tokens: int) -> float:
        """Tensor-parallel all-reduce time of an iteration over `tokens` tokens."""
        return self.comm_fixed_s + self.comm_s_per_token * tokens if tokens else 0.0

    def _overhead_s(self, seqs: int) -> float:
        return (self.cfg.iteration_overhead_s + self.host_s
                + (self.cfg.per_seq_overhead_s + self.host_per_seq_s) * seqs)

    def _fixed_s(self, tokens: int, seqs: int) -> float:
        return self._overhead_s(seqs) + self.layer_fixed_s + self._comm_s(tokens)

    # ---- decode-only iterations (closed form) -----------------------------------------------
    def decode_run(self, batch: int, query_tokens_per_seq: int = 1,
                   draft: DraftWork | None = None) -> DecodeRun:
        """Coefficients of a decode-only step of `batch` sequences computing q tokens each, after
        the iteration's draft work if any."""
        if query_tokens_per_seq == 1 and draft is None:   # the engine's hot call, kept to one lookup
            c = self._decode1.get(batch)
            if c is None:
                c = self._decode1[batch] = self._decode_coeffs(batch, 1)
            return c
        if draft is not None and draft.passes > 0:
            key = (batch, query_tokens_per_seq, draft)
            run = self._drafted_cache.get(key)
            if run is None:
                run = self._drafted_cache[key] = DraftedRun(self.decode_run(batch, query_tokens_per_seq),
                                                            self.draft_pass(batch, draft.layer_share), draft.passes)
            return run
        key2 = (batch, query_tokens_per_seq)
        c = self._decode_cache.get(key2)
        if c is None:
            c = self._decode_cache[key2] = self._decode_coeffs(batch, query_tokens_per_seq)
        return c

    def draft_pass(self, batch: int, layer_share: float, pure: bool = False) -> DecodeCoeffs | WindowedRun:
        """One draft pass over `batch` decoding sequences running `layer_share` of the layers and
        the LM head (see the module docstring), or one decode step of the separate draft model
        (`pure`: its utilization form)."""
        if self.drafter is not None:
            return self.drafter.decode_utilization(batch) if pure else self.drafter.decode_run(batch)  # type: ignore[return-value]
        key = (batch, layer_share, pure)
        c = self._draft_pass_cache.get(key)
        if c is None:
            c = self._draft_pass_cache[key] = self._decode_coeffs(batch, 1, layer_share, draft=True, pure=pure)
        return c

    def _decode_coeffs(self, batch: int, query_tokens_per_seq: int, layer_share: float = 1.0,
                       draft: bool = False, pure: bool = False) -> DecodeCoeffs | WindowedRun:
        """A decode step of `batch` sequences computing q tokens each; with `draft`, a draft pass:
        every per-layer term scaled by `layer_share`, the whole LM head, and as fixed time only the
        all-reduce and fixed per-layer costs of those layers (no iteration or per-sequence
        overhead). With `pure`, only the bytes and FLOPs at the large-kernel rates
        (`utilization_s`): no shape efficiencies, no fixed time. With sliding-window layers, the
        two forms either side of the knee S = batch x window (`WindowedRun`)."""
        above = self._decode_form(batch, query_tokens_per_seq, layer_share, draft, pure, windowed=True)
        if not self.window:
            return above
        below = self._decode_form(batch, query_tokens_per_seq, layer_share, draft, pure, windowed=False)
        return WindowedRun(below, above, float(batch * self.window))

    def _decode_form(self, batch: int, query_tokens_per_seq: int, layer_share: float, draft: bool, pure: bool,
                     windowed: bool) -> DecodeCoeffs:
        """`_decode_coeffs` as one two-line form: the window layers attend `window` keys per
        sequence (`windowed`, S >= batch x window) or the sequence's whole context (below it)."""
        f = layer_share
        w = self.window if windowed else 0
        # Window layers that attend the whole context count with the full-attention layers.
        growing_layers = self.full_layers if windowed else self.model.layers
        half_bytes = 0.0 if pure else self.half_bytes
        q = query_tokens_per_seq
        tokens = batch * q
        layer_weight_bytes = self.weight_bytes(tokens) - self.lm_head_bytes
        mem0 = (f * (layer_weight_bytes + tokens * (self.model.layers * self.kv_layer_bytes + self.act_bytes_per_token)
                     + self.sliding_layers * self.kv_layer_bytes * batch * w + half_bytes)
                + self.lm_head_bytes)
        mem1 = f * growing_layers * self.kv_layer_bytes
        attn = self.attn_flops_pure_per_pair if pure else self.attn_flops_eq_per_pair
        cmp0 = (f * (self._gemm_flops(tokens, pure)
                     + attn * self.sliding_layers * tokens * w
                     - attn * self.full_layers * batch * (q * (q - 1) // 2))
                + self._lm_flops(tokens, pure))
        cmp1 = f * attn * growing_layers * q
        if pure:
            fixed_s = 0.0
        else:
            fixed_s = f * (self._comm_s(tokens) + self.layer_fixed_s) if draft else self._fixed_s(tokens, batch)
        return DecodeCoeffs(
            m0=mem0 / self.bytes_per_s, m1=mem1 / self.bytes_per_s,
            c0=cmp0 / self.flops_per_s, c1=cmp1 / self.flops_per_s,
            fixed_s=fixed_s, batch=batch,
        )

    # ---- general iteration ------------------------------------------------------------------
    def iteration_s(self, shape: StepShape) -> float:
        """Time of one iteration of the given shape (see the module docstring)."""
        seqs, q, chunks = shape.decode_seqs, shape.query_tokens_per_seq, shape.chunks
        if not chunks:
            return self.decode_run(seqs, q, shape.draft).step_s(shape.decode_ctx_sum) if seqs else 0.0
        b, _ = self._priced(shape)
        return max(b.compute_s, b.memory_s) + b.comm_s + b.overhead_s + b.draft_s

    # ---- power ----------------------------------------------------------------------------------
    def utilization_s(self, shape: StepShape) -> float:
        """Seconds of one iteration's binding resource at its large-kernel rate: max(FLOPs / (peak
        of their precision x compute_efficiency), bytes / (bandwidth x hbm_bw_efficiency)), draft
        passes included, without shape efficiencies (small GEMMs, attention kernels' own
        efficiency, kernel start-up), overheads or communication. Divided by the iteration's time it
        is the utilization that the power model (sim/power.py) turns into watts."""
        return self.iteration_with_utilization_s(shape)[1]

    def iteration_with_utilization_s(self, shape: StepShape) -> tuple[float, float]:
        """(`iteration_s`, `utilization_s`) of one iteration, its work priced once (the engine's call)."""
        seqs, q, chunks = shape.decode_seqs, shape.query_tokens_per_seq, shape.chunks
        if not chunks:
            if not seqs:
                return 0.0, 0.0         # an iteration that only moves KV to or from the host
            ctx = shape.decode_ctx_sum
            return (self.decode_run(seqs, q, shape.draft).step_s(ctx),
                    self.decode_utilization(seqs, q, shape.draft).step_s(ctx))
        b, util_s = self._priced(shape)
        return max(b.compute_s, b.memory_s) + b.comm_s + b.overhead_s + b.draft_s, util_s

    def decode_utilization(self, batch: int, query_tokens_per_seq: int = 1,
                           draft: DraftWork | None = None) -> DecodeRun:
        """`utilization_s` of decode steps of `batch` sequences (q tokens each, after the draft
        work if any), in the decode-run form."""
        if query_tokens_per_seq == 1 and draft is None:
            c = self._utilization_cache.get(batch)
            if c is None:
                c = self._utilization_cache[batch] = self._decode_coeffs(batch, 1, pure=True)
            return c
        key = (batch, query_tokens_per_seq, draft)
        run = self._spec_utilization_cache.get(key)
        if run is None:
            verify = self._decode_coeffs(batch, query_tokens_per_seq, pure=True)
            run = verify if draft is None or draft.passes == 0 else \
                DraftedRun(verify, self.draft_pass(batch, draft.layer_share, pure=True), draft.passes)
            self._spec_utilization_cache[key] = run
        return run

    def breakdown(self, shape: StepShape) -> StepBreakdown:
        """The terms of one iteration's time: the step takes max(compute, memory) + the rest."""
        return self._priced(shape)[0]

    def shape_work(self, shape: StepShape) -> tuple[int, int, float, float]:
        """(tokens, sampled positions, attended (query, key) pairs over the layers, KV and
        activation bytes) of one iteration: the work that does not depend on the weights."""
        seqs, q, chunks = shape.decode_seqs, shape.query_tokens_per_seq, shape.chunks
        w = self.window
        tokens = seqs * q
        samples = seqs * q
        pairs_full = q * float(shape.decode_ctx_sum) - seqs * (q * (q - 1) // 2)
        read_full = float(shape.decode_ctx_sum)
        # A window layer reads min(c, w) of each decoding sequence's context: min(S, B w) for the
        # batch (WindowedRun), each of its q query tokens attending those keys.
        read_sl = float(min(seqs * w, shape.decode_ctx_sum)) if w else 0.0
        pairs_sl = q * read_sl
        for ch in chunks:
            end = ch.prefix + ch.new
            tokens += ch.new
            samples += 1 if ch.samples else 0
            pairs_full += ch.new * ch.prefix + ch.new * (ch.new + 1) / 2.0
            read_full += end
            if w:
                pairs_sl += ch.new * min(end, w)
                read_sl += min(end, w)
        kv_act_bytes = (tokens * (self.model.layers * self.kv_layer_bytes + self.act_bytes_per_token)
                        + self.kv_layer_bytes * (self.full_layers * read_full + self.sliding_layers * read_sl))
        return tokens, samples, self.full_layers * pairs_full + self.sliding_layers * pairs_sl, kv_act_bytes

    def _priced(self, shape: StepShape) -> tuple[StepBreakdown, float]:
        """The iteration's breakdown and its utilization-seconds, from one pass over its work."""
        seqs, chunks, draft = shape.decode_seqs, shape.chunks, shape.draft
        draft_s = draft_util_s = 0.0
        if draft is not None and draft.passes > 0 and seqs:
            draft_s = draft.passes * self.draft_pass(seqs, draft.layer_share).step_s(shape.decode_ctx_sum)
            draft_util_s = draft.passes * self.draft_pass(seqs, draft.layer_share, pure=True).step_s(shape.decode_ctx_sum)
        tokens, samples, pairs, kv_act_bytes = self.shape_work(shape)
        mem = self.weight_bytes(tokens) + kv_act_bytes
        attn = self.attn_flops_eq_per_pair * pairs
        cmp = self._gemm_flops(tokens) + self._lm_flops(samples) + attn
        cmp_pure = (self._gemm_flops(tokens, pure=True) + self._lm_flops(samples, pure=True)
                    + self.attn_flops_pure_per_pair * pairs)
        util_s = max(cmp_pure / self.flops_per_s, mem / self.bytes_per_s) + draft_util_s if tokens else 0.0
        b = StepBreakdown(compute_s=cmp / self.flops_per_s, memory_s=(mem + self.half_bytes) / self.bytes_per_s,
                          comm_s=self._comm_s(tokens),
                          overhead_s=self._overhead_s(seqs + len(chunks)) + self.layer_fixed_s,
                          draft_s=draft_s)
        return b, util_s
