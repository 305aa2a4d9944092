"""Hardware and model catalogs: GPU specs, model architectures, precisions.

The numbers live as data in ``sim/data/gpus.yaml`` and ``sim/data/models.yaml``, each with its
source. This module validates them (pydantic, unknown keys rejected, immutable) and derives what
the step-time model needs from the architecture, so nothing is typed in twice:

* parameter counts per layer: attention (GQA: q, k, v, o projections; MLA: the low-rank
  q/kv down- and up-projections of DeepSeek-V3), dense MLP (gated, 3 x hidden x ffn), MoE
  experts (3 x hidden x expert_ffn each) plus router, and the LM head (vocab x hidden);
* KV bytes per token = 2 (K and V) x layers x KV heads x head dim x bytes per element,
  except MLA: layers x (kv_lora_rank + qk_rope_dim) x bytes (facts.md section 6);
* bytes per weight / KV element per precision. FP4 carries one FP8 scale per 16 elements
  (NVFP4 / MXFP4 block scaling), hence 0.5 + 1/16 bytes per element.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal

from pydantic import Field, model_validator

from sim.input_model import InputModel
from sim.yamlio import load_yaml

Precision = Literal["bf16", "fp16", "fp8", "fp4"]

#: Bytes per element. FP4 includes the block-scale overhead (one 8-bit scale per 16 values).
BYTES_PER_ELEMENT: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5 + 1.0 / 16.0}

#: Which TFLOPS entry a compute precision uses (fp16 runs on the bf16 tensor-core rate).
FLOPS_KEY: dict[str, str] = {"bf16": "bf16", "fp16": "bf16", "fp8": "fp8", "fp4": "fp4"}
#: Precisions attention kernels run in (FlashAttention/FMHA: FP8 or 16-bit; no FP4 attention).
AttentionPrecision = Literal["bf16", "fp16", "fp8"]


def default_attention_precision(gpu: GpuSpec, kv_cache: str) -> str:
    """FP8 attention where the KV cache is FP8 (or FP4, read into FP8 kernels) and the GPU has FP8
    tensor cores, as TensorRT-LLM's and vLLM's FP8 FMHA kernels run; BF16 otherwise."""
    return "fp8" if kv_cache in ("fp8", "fp4") and gpu.tflops.fp8 is not None else "bf16"


class _Frozen(InputModel):
    pass


# Bounds far above any real part, so that a typo (1e300) is refused instead of overflowing.
MAX_TFLOPS = 1e7
MAX_DIM = 10_000_000


class Tflops(_Frozen):
    """Dense tensor-core throughput per precision, TFLOP/s; None where the GPU lacks the unit."""

    bf16: float = Field(gt=0, le=MAX_TFLOPS)
    fp8: float | None = Field(default=None, gt=0, le=MAX_TFLOPS)
    fp4: float | None = Field(default=None, gt=0, le=MAX_TFLOPS)


class Prices(_Frozen):
    """$/GPU-hour tiers (see gpus.yaml header for their meaning)."""

    hyperscaler: float | None = Field(default=None, gt=0, le=10_000)
    neocloud: float | None = Field(default=None, gt=0, le=10_000)
    rental: float | None = Field(default=None, gt=0, le=10_000)


class GpuSpec(_Frozen):
    """One GPU as the step-time, memory, power and cost models see it."""

    name: str = "custom-gpu"
    vendor: str = "unknown"
    hbm_gb: float = Field(gt=0, le=100_000, description="usable HBM per GPU, GB (1e9 bytes)")
    hbm_bw_tb_s: float = Field(gt=0, le=1_000, description="peak HBM bandwidth, TB/s")
    tflops: Tflops
    scale_up_gb_s: float = Field(gt=0, le=1_000_000, description="scale-up link bandwidth per GPU, one direction, GB/s")
    scale_up_domain: int = Field(default=8, ge=1, le=1_000_000, description="GPUs reachable over the scale-up link")
    host_link_gb_s: float = Field(gt=0, le=1_000_000, description="GPU<->host bandwidth, one direction, GB/s")
    scale_out_gb_s: float = Field(default=50.0, gt=0, le=1_000_000,
                                  description="scale-out network bandwidth per GPU, one direction, GB/s (a 400 Gb/s NIC = 50)")
    scale_out_latency_s: float = Field(default=3.7e-6, ge=0, le=1,
                                       description="scale-out network latency of a small message, s")
    gpus_per_node: int = Field(default=8, ge=1, le=1_000, description="GPUs per server (host CPUs, DRAM, NVMe)")
    host_dram_gb_per_node: float | None = Field(default=None, gt=0, le=1_000_000,
                                                description="host DRAM per server, GB (a KV tier's default capacity)")
    tdp_w: float = Field(gt=0, le=100_000)
    idle_w: float = Field(ge=0, le=100_000)
    all_in_kw: float | None = Field(default=None, gt=0, le=1_000, description="per-GPU share of node power, kW")
    prices_usd_per_gpu_h: Prices = Prices()
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _idle_below_tdp(self) -> GpuSpec:
        if self.idle_w > self.tdp_w:
            raise ValueError(f"idle_w ({self.idle_w}) exceeds tdp_w ({self.tdp_w})")
        if self.all_in_kw is not None and self.all_in_kw * 1000.0 < self.tdp_w:
            raise ValueError(f"all_in_kw ({self.all_in_kw}) is below tdp_w ({self.tdp_w} W): the all-in share "
                             "includes the chip")
        return self

    def peak_flops(self, precision: str) -> float | None:
        """Dense peak FLOP/s at a compute precision, or None if unsupported."""
        tf = getattr(self.tflops, FLOPS_KEY[precision])
        return None if tf is None else tf * 1e12


class Attention(_Frozen):
    """Attention variant. GQA (incl. MHA/MQA) by default; MLA for DeepSeek-V3-style models."""

    kind: Literal["gqa", "mla"] = "gqa"
    sliding_window: int | None = Field(default=None, ge=1, description="window of sliding layers, tokens")
    sliding_layers: int = Field(default=0, ge=0, description="how many layers use the sliding window")
    q_lora_rank: int | None = Field(default=None, ge=1)
    kv_lora_rank: int | None = Field(default=None, ge=1)
    qk_nope_dim: int | None = Field(default=None, ge=1)
    qk_rope_dim: int | None = Field(default=None, ge=1)
    v_head_dim: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Attention:
        if self.kind == "mla":
            missing = [
                f for f in ("q_lora_rank", "kv_lora_rank", "qk_nope_dim", "qk_rope_dim", "v_head_dim")
                if getattr(self, f) is None
            ]
            if missing:
                raise ValueError(f"MLA attention needs {', '.join(missing)}")
        if self.sliding_layers and self.sliding_window is None:
            raise ValueError("sliding_layers > 0 needs sliding_window")
        return self


class Moe(_Frozen):
    """Mixture-of-experts layout. The first `dense_layers` layers use the dense ffn_dim MLP."""

    experts: int = Field(ge=1, le=1_000_000)
    experts_per_token: int = Field(ge=1, le=1_000_000)
    shared_experts: int = Field(default=0, ge=0, le=1_000)
    expert_ffn_dim: int = Field(ge=1, le=MAX_DIM)
    dense_layers: int = Field(default=0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _check(self) -> Moe:
        if self.experts_per_token > self.experts:
            raise ValueError(f"experts_per_token ({self.experts_per_token}) > experts ({self.experts})")
        return self


class Reported(_Frozen):
    params_total_b: float | None = None
    params_active_b: float | None = None


class ModelSpec(_Frozen):
    """A transformer's shape, enough for weight bytes, FLOPs and KV bytes."""

    name: str = "custom-model"
    layers: int = Field(ge=1, le=10_000)
    hidden: int = Field(ge=1, le=MAX_DIM)
    q_heads: int = Field(ge=1, le=100_000)
    kv_heads: int = Field(ge=1, le=100_000)
    head_dim: int = Field(ge=1, le=MAX_DIM)
    ffn_dim: int = Field(ge=1, le=MAX_DIM, description="dense MLP intermediate size")
    vocab: int = Field(ge=1, le=100_000_000)
    tied_embeddings: bool = False
    max_context_tokens: int = Field(default=131072, ge=1, le=100_000_000)
    attention: Attention = Attention()
    moe: Moe | None = None
    mtp_modules: int = Field(default=0, ge=0, le=64, description="DeepSeek-style multi-token-prediction modules "
                             "shipped with the weights (each about one transformer layer), usable as a drafter")
    reported: Reported = Reported()
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.q_heads % self.kv_heads:
            raise ValueError(f"q_heads ({self.q_heads}) is not a multiple of kv_heads ({self.kv_heads})")
        if self.attention.sliding_layers > self.layers:
            raise ValueError("sliding_layers exceeds layers")
        if self.moe and self.moe.dense_layers > self.layers:
            raise ValueError("moe.dense_layers exceeds layers")
        return self

    # ---- parameter counts (derived) -------------------------------------------------------
    @property
    def attn_params_per_layer(self) -> int:
        h, a = self.hidden, self.attention
        if a.kind == "mla":
            assert a.q_lora_rank and a.kv_lora_rank and a.qk_nope_dim and a.qk_rope_dim and a.v_head_dim
            qk_dim = a.qk_nope_dim + a.qk_rope_dim
            return (
                h * a.q_lora_rank
                + a.q_lora_rank * self.q_heads * qk_dim
                + h * (a.kv_lora_rank + a.qk_rope_dim)
                + a.kv_lora_rank * self.q_heads * (a.qk_nope_dim + a.v_head_dim)
                + self.q_heads * a.v_head_dim * h
            )
        q = h * self.q_heads * self.head_dim
        kv = 2 * h * self.kv_heads * self.head_dim
        return q + kv + self.q_heads * self.head_dim * h

    @property
    def dense_mlp_params(self) -> int:
        return 3 * self.hidden * self.ffn_dim

    @property
    def expert_params(self) -> int:
        """Parameters of one routed (or shared) expert."""
        return 3 * self.hidden * self.moe.expert_ffn_dim if self.moe else 0

    @property
    def moe_layers(self) -> int:
        return self.layers - self.moe.dense_layers if self.moe else 0

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    @property
    def lm_head_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def always_read_params(self) -> int:
        """Weights every forward pass reads whatever the batch: attention, dense MLPs,
        shared experts and routers. Excludes routed experts and the embedding table
        (a lookup touches only the rows of the batch's tokens) and the LM head."""
        n = self.layers * self.attn_params_per_layer + self.dense_layers * self.dense_mlp_params
        if self.moe:
            n += self.moe_layers * (self.moe.shared_experts * self.expert_params + self.hidden * self.moe.experts)
        return n

    @property
    def params_total(self) -> int:
        routed = self.moe_layers * self.moe.experts * self.expert_params if self.moe else 0
        embed = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.always_read_params + routed + self.lm_head_params + embed

    @property
    def params_active(self) -> int:
        """Parameters one token passes through (the 'active' count of MoE models)."""
        routed = self.moe_layers * self.moe.experts_per_token * self.expert_params if self.moe else 0
        return self.always_read_params + routed + self.lm_head_params

    @property
    def linear_params_per_token(self) -> int:
        """Matmul parameters per token excluding the LM head (which runs only for sampled tokens)."""
        return self.params_active - self.lm_head_params

    # ---- KV cache -------------------------------------------------------------------------
    @property
    def full_attention_layers(self) -> int:
        return self.layers - self.attention.sliding_layers

    def kv_bytes_per_token_per_layer(self, kv_precision: str, tp: int) -> float:
        """KV bytes one token adds to one layer on ONE GPU of a tp group.

        GQA shards KV heads over tp; with fewer KV heads than GPUs each GPU keeps one head
        (replication, as vLLM does). MLA's latent is not sharded: every GPU keeps all of it.
        """
        b = BYTES_PER_ELEMENT[kv_precision]
        a = self.attention
        if a.kind == "mla":
            assert a.kv_lora_rank and a.qk_rope_dim
            return (a.kv_lora_rank + a.qk_rope_dim) * b
        heads_per_gpu = max(1, self.kv_heads // tp)
        return 2 * heads_per_gpu * self.head_dim * b

    def kv_bytes_per_token(self, kv_precision: str, tp: int = 1) -> float:
        """Growing KV bytes per token per GPU (full-attention layers only)."""
        return self.full_attention_layers * self.kv_bytes_per_token_per_layer(kv_precision, tp)

    def sliding_kv_bytes_per_request(self, kv_precision: str, tp: int = 1, longest_request_tokens: int | None = None) -> float:
        """Fixed KV a request holds in sliding-window layers, per GPU: the window's tokens in each,
        or the longest request's tokens when no request can reach the window."""
        a = self.attention
        if not a.sliding_layers:
            return 0.0
        assert a.sliding_window is not None
        tokens = a.sliding_window if longest_request_tokens is None else min(a.sliding_window, longest_request_tokens)
        return a.sliding_layers * tokens * self.kv_bytes_per_token_per_layer(kv_precision, tp)

    def attn_flops_per_ctx_token(self) -> float:
        """Attention FLOPs per (query token, attended key) pair per layer: QK^T and PV.

        GQA: 2 matmuls x 2 FLOP/MAC x heads x head_dim. MLA with absorbed weights attends over
        the latent: 4 x heads x (kv_lora_rank + rope) (facts.md section 6).
        """
        a = self.attention
        if a.kind == "mla":
            assert a.kv_lora_rank and a.qk_rope_dim
            return 4.0 * self.q_heads * (a.kv_lora_rank + a.qk_rope_dim)
        return 4.0 * self.q_heads * self.head_dim


def _load_yaml(name: str) -> dict:
    text = resources.files("sim").joinpath("data", name).read_text(encoding="utf-8")
    return load_yaml(text)


@cache
def gpu_catalog() -> dict[str, GpuSpec]:
    """All catalog GPUs by name."""
    return {k: GpuSpec(name=k, **v) for k, v in _load_yaml("gpus.yaml").items()}


@cache
def model_catalog() -> dict[str, ModelSpec]:
    """All catalog models by name."""
    return {k: ModelSpec(name=k, **v) for k, v in _load_yaml("models.yaml").items()}
