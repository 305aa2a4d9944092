"""How a replica's GPUs share its work: the `serving.parallelism` block, the layout it implies and
the checks that the layout can exist on the hardware.

A replica of G = tp x dp_attention x pp GPUs (the notation of SGLang's and TensorRT-LLM's
DP-attention and wide-EP deployments, "DEP8" = dp_attention 8, ep 8, tp 1):

* pp pipeline stages, each holding about layers / pp consecutive layers;
* within a stage, dp_attention attention ranks of tp GPUs each: a rank has its own batch and its
  own KV cache, and runs attention and the dense layers tensor-parallel over its tp GPUs (those
  weights are sharded by tp and replicated across ranks);
* the stage's tp x dp_attention GPUs share its mixture-of-experts layers: the routed experts are
  split over ep GPUs (experts / ep each) and each expert's matrices over the moe_tp =
  tp x dp_attention / ep GPUs of an expert shard, so every GPU holds 1 / (tp x dp_attention) of
  the routed experts however ep is chosen (times (experts + redundant_experts) / experts with
  redundant copies of busy experts, as DeepSeek's EPLB places them).

Tensor parallelism all-reduces the activations twice per layer, on the critical path of every
layer, so a tensor-parallel group sits inside one scale-up domain (NVLink) unless the scenario says
otherwise. Expert parallelism moves tokens between expert shards (sim/perf/comm.py), over the
scale-up link inside a domain and over the scale-out network across domains. The busiest expert
shard receives `expert_imbalance` times the mean number of routed tokens (ep > 1 only: with
ep = 1 every GPU holds a slice of every expert and sees every token).
"""

from __future__ import annotations

import math

from pydantic import Field

from sim.catalog import GpuSpec, ModelSpec
from sim.input_model import InputModel

#: Busiest expert shard's routed tokens over the mean, when the scenario does not say: with an
#: expert-placement load balancer and redundant experts, as large deployments run. TensorRT-LLM tech
#: blog 4 ("Scaling Expert Parallelism in TensorRT-LLM, part 1", DeepSeek-R1, EP32 on GB200)
#: measures (max - mean) / mean = 0.109-0.115 with its balancer and 32 redundant experts, and 1.564
#: (a busiest shard at 2.56 x the mean) with static placement: set 2.5 for a deployment without one.
DEFAULT_EXPERT_IMBALANCE = 1.12


class Parallelism(InputModel):
    """`serving.parallelism`: how one replica's GPUs split the model (module docstring)."""

    tp: int = Field(default=1, ge=1, le=1024, description="tensor-parallel degree of an attention rank")
    pp: int = Field(default=1, ge=1, le=1024, description="pipeline stages")
    ep: int = Field(default=1, ge=1, le=4096, description="expert-parallel degree: GPUs the routed experts are split over")
    dp_attention: int = Field(default=1, ge=1, le=4096,
                              description="attention data-parallel ranks per stage, each with its own batch and KV cache")
    expert_imbalance: float = Field(
        default=DEFAULT_EXPERT_IMBALANCE, ge=1.0, le=100.0,
        description="routed tokens on the busiest expert shard over the mean (ep > 1)")
    redundant_experts: int = Field(
        default=0, ge=0, le=100_000,
        description="extra expert slots holding copies of busy experts (DeepSeek's EPLB): experts + "
        "redundant_experts slots are split over the ep GPUs")
    two_batch_overlap: bool = Field(
        default=False, description="split each step into two micro-batches so that one's expert all-to-all "
        "overlaps the other's compute (SGLang's and DeepSeek's two-batch overlap)")
    tp_across_domains: bool = Field(
        default=False, description="allow a tensor-parallel group larger than the GPU's scale-up domain "
        "(its all-reduce then runs over the scale-out network)")

    @property
    def stage_gpus(self) -> int:
        """GPUs of one pipeline stage: its attention ranks, which share its expert layers."""
        return self.tp * self.dp_attention

    @property
    def gpus(self) -> int:
        """GPUs one replica takes."""
        return self.stage_gpus * self.pp

    @property
    def moe_tp(self) -> int:
        """GPUs each expert's matrices are split over."""
        return self.stage_gpus // self.ep

    def expert_slots(self, experts: int) -> int:
        """Routed expert slots of a stage: every expert once, plus the redundant copies."""
        return experts + self.redundant_experts

    def imbalance(self) -> float:
        """Busiest shard's routed tokens over the mean: 1 without expert parallelism."""
        return self.expert_imbalance if self.ep > 1 else 1.0

    def stage_layers(self, layers: int) -> int:
        """Layers of the largest pipeline stage."""
        return math.ceil(layers / self.pp)


def check_layout(par: Parallelism, model: ModelSpec, gpu: GpuSpec) -> None:
    """Raise ValueError naming the field when the layout cannot run the model on this GPU, or when
    the engine cannot simulate it yet (`check_simulated`)."""
    tp, ep, dp, pp = par.tp, par.ep, par.dp_attention, par.pp
    if model.q_heads % tp:
        raise ValueError(f"serving.parallelism.tp={tp} does not divide the model's {model.q_heads} attention heads")
    if model.attention.kind == "gqa" and model.kv_heads % tp and tp % model.kv_heads:
        raise ValueError(f"serving.parallelism.tp={tp} and the model's {model.kv_heads} KV heads do not divide")
    if tp > gpu.scale_up_domain and not par.tp_across_domains:
        raise ValueError(f"serving.parallelism.tp={tp} exceeds the GPU's scale-up domain ({gpu.scale_up_domain} GPUs); "
                         "set serving.parallelism.tp_across_domains: true to run its all-reduce over the scale-out "
                         "network, or use more replicas")
    if pp > model.layers:
        raise ValueError(f"serving.parallelism.pp={pp} exceeds the model's {model.layers} layers")
    moe = model.moe
    if moe is None:
        if ep > 1:
            raise ValueError(f"serving.parallelism.ep={ep}: {model.name} has no experts (ep needs a "
                             "mixture-of-experts model)")
        if dp > 1:
            raise ValueError(f"serving.parallelism.dp_attention={dp}: {model.name} is dense; attention data "
                             "parallelism shares expert layers between ranks (for a dense model, use replicas)")
    # (compared with the default, not "was it written": a resolved scenario writes every field)
    if par.expert_imbalance != DEFAULT_EXPERT_IMBALANCE and (moe is None or ep == 1):
        raise ValueError(f"serving.parallelism.expert_imbalance={par.expert_imbalance:g} applies to expert "
                         f"parallelism (ep > 1); with ep={ep} every GPU sees every routed token")
    if moe is not None:
        if par.stage_gpus % ep:
            raise ValueError(f"serving.parallelism.ep={ep} must divide tp x dp_attention = {par.stage_gpus} (the "
                             "GPUs of a stage, which share its expert layers)")
        slots = par.expert_slots(moe.experts)
        if slots % ep:
            extra = f" + {par.redundant_experts} redundant" if par.redundant_experts else ""
            raise ValueError(f"serving.parallelism.ep={ep} does not divide the model's {moe.experts}{extra} routed "
                             "expert slots (redundant_experts adds slots, as DeepSeek's EPLB does)")
    elif par.redundant_experts:
        raise ValueError(f"serving.parallelism.redundant_experts={par.redundant_experts}: {model.name} has no experts")
    if par.redundant_experts and ep == 1:
        raise ValueError(f"serving.parallelism.redundant_experts={par.redundant_experts} needs expert parallelism "
                         "(ep > 1): with ep = 1 every GPU already holds a slice of every expert")
    check_simulated(par)


def check_simulated(par: Parallelism) -> None:
    """Layouts the engine does not simulate: refused rather than silently ignored."""
    if par.pp > 1 and par.dp_attention > 1:
        raise ValueError(f"serving.parallelism.pp={par.pp} with dp_attention={par.dp_attention}: pipeline stages of "
                         "attention ranks are not simulated; use pp with tp (and ep), or dp_attention without pp")
    if par.two_batch_overlap and par.dp_attention == 1:
        raise ValueError("serving.parallelism.two_batch_overlap overlaps the expert all-to-all of attention ranks: "
                         "it needs dp_attention > 1 (with one rank the experts' results are all-reduced as under "
                         "tensor parallelism)")
