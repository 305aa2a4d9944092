"""How a replica's GPUs share its work: the `serving.parallelism` block and the checks that a
layout can exist on the hardware.

Tensor parallelism (tp) splits every layer's matrices over tp GPUs, which all-reduce the
activations twice per layer (sim/perf/roofline.py prices it). A tensor-parallel group must sit
inside one scale-up domain (NVLink): the all-reduce is on the critical path of every layer.
"""

from __future__ import annotations

from pydantic import Field

from sim.catalog import GpuSpec, ModelSpec
from sim.input_model import InputModel


class Parallelism(InputModel):
    """`serving.parallelism`: how one replica's GPUs split the model."""

    tp: int = Field(default=1, ge=1, le=1024, description="tensor-parallel degree")

    @property
    def gpus(self) -> int:
        """GPUs one replica takes."""
        return self.tp


def check_layout(par: Parallelism, model: ModelSpec, gpu: GpuSpec) -> None:
    """Raise ValueError naming the field when the layout cannot run the model on this GPU."""
    tp = par.tp
    if model.q_heads % tp:
        raise ValueError(f"serving.parallelism.tp={tp} does not divide the model's {model.q_heads} attention heads")
    if model.attention.kind == "gqa" and model.kv_heads % tp and tp % model.kv_heads:
        raise ValueError(f"serving.parallelism.tp={tp} and the model's {model.kv_heads} KV heads do not divide")
    if tp > gpu.scale_up_domain:
        raise ValueError(f"serving.parallelism.tp={tp} exceeds the GPU's scale-up domain ({gpu.scale_up_domain})")
