"""How far real kernels fall short of the spec-sheet roofline, as functions of the work's shape.

The large-batch efficiencies (`hbm_bw_efficiency`, `compute_efficiency`) are what big kernels
reach. Small work reaches less, for reasons a byte-and-FLOP count does not see; each is modelled by
one general parameter that calibration fits (docs/model-assumptions.md, "Efficiency by shape"):

* **GEMM token dimension.** A matmul over n tokens fills tensor-core tiles only partly and has a
  fixed prologue and epilogue, so its FLOP rate rises with n and saturates:
  ``gemm_efficiency(n) = n / (n + n_half)``, a share of `compute_efficiency`. For a mixture of
  experts n is the tokens each touched expert receives (tokens x top-k / experts touched), which is
  why grouped GEMMs of many small experts run far from peak.
* **Bytes per kernel.** A kernel that streams x bytes pays a fixed start-up (launch, ramp-up,
  tail) worth ``x_half`` bytes of streaming, so the achieved bandwidth is
  ``bw x saturating_share(x, x_half)``; the roofline uses the equivalent additive form, a step over
  L layers moving bytes + L x ``hbm_half_bytes_per_layer`` at the large-kernel rate (affine, so
  decode runs keep their closed form). The term lives on the memory side of the roofline's max, so it is
  hidden once a step is compute-bound.
* **Collective latency.** A tensor-parallel all-reduce of a small message costs its latency, which
  grows with the number of steps a tree or recursive-doubling all-reduce takes: log2(tp) x
  ``collective_latency_s`` (so tp = 2 pays it once, tp = 8 three times; comm.py).
* **Attention head dimension.** Attention kernels run slower with small heads: their rate scales as
  d / (d + 56) relative to head_dim 128 (FlashAttention-3's published H100 figures), so
  `attention_efficiency` is the head_dim-128 value.
* **Fixed per-layer costs** (`layer_overhead_s`, `moe_layer_overhead_s`) are kernel launches or
  graph-replay gaps, norms and rotary embeddings of every layer, and routing, top-k and token
  permutation of every mixture-of-experts layer: time that neither bytes nor FLOPs explain and that
  dominates a batch-1 step of a large model. They add to the step outside the max.

Every efficiency here is a pure function, monotone non-decreasing in its argument and at most 1.
"""

from __future__ import annotations

#: Head dimension at which attention kernels reach half their asymptotic rate. From the
#: FlashAttention-3 paper (Shah et al. 2024, arXiv 2407.08608, H100 BF16 forward at 16k tokens):
#: 497 TFLOPS/s at head_dim 64 against 648 at head_dim 128, a ratio of 0.767 that
#: d / (d + 56) reproduces (and it predicts head_dim 256 at 1.18x head_dim 128).
ATTENTION_HALF_HEAD_DIM = 56.0
#: The head dimension `attention_efficiency` refers to (Llama, Qwen, Mixtral).
REFERENCE_HEAD_DIM = 128


def saturating_share(size: float, half: float) -> float:
    """size / (size + half): the share of its asymptotic rate that work of `size` reaches when a
    fixed start-up worth `half` of the same work precedes it (1 when there is none)."""
    if half <= 0.0:
        return 1.0
    if size <= 0.0:
        return 0.0
    return size / (size + half)


def attention_head_dim_factor(head_dim: float) -> float:
    """Attention kernels' rate at `head_dim` relative to head_dim 128: fewer FLOPs per byte of
    Q, K and V staged, and narrower tensor-core tiles, at smaller heads."""
    return (saturating_share(head_dim, ATTENTION_HALF_HEAD_DIM)
            / saturating_share(REFERENCE_HEAD_DIM, ATTENTION_HALF_HEAD_DIM))


def gemm_efficiency(tokens: float, half_tokens: float) -> float:
    """Share of the large-batch FLOP rate a GEMM over `tokens` tokens reaches: n / (n + n_half)."""
    return saturating_share(tokens, half_tokens)


def experts_touched(tokens: float, experts: int, experts_per_token: int) -> float:
    """Expected routed experts that `tokens` tokens touch when each picks `experts_per_token` of
    `experts` uniformly: E x (1 - (1 - k/E)^tokens)."""
    return experts * (1.0 - (1.0 - experts_per_token / experts) ** tokens)


def tokens_per_expert(tokens: float, experts: int, experts_per_token: int) -> float:
    """Mean tokens each touched routed expert receives: tokens x k / experts touched."""
    if tokens <= 0:
        return 0.0
    return tokens * experts_per_token / experts_touched(tokens, experts, experts_per_token)
