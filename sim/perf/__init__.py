"""Step-time models: how long one iteration of a replica takes for a given batch shape.

* `shape`: the interface the engine uses (batch shapes, context paths, decode runs, the
  `StepModel` protocol).
* `roofline`: the default model, from spec sheets and a few calibrated efficiencies.
* `table`: a measured step-time table interpolated instead of the roofline.
* `config`: the scenario's `perf:` block and its calibrated defaults.
"""

from __future__ import annotations

from sim.catalog import GpuSpec, ModelSpec
from sim.perf.config import PerfCfg
from sim.perf.roofline import DecodeCoeffs, RooflineStepModel
from sim.perf.shape import (
    Chunk,
    ContextPath,
    DecodeRun,
    DraftedRun,
    DraftWork,
    LinearPath,
    Segment,
    StepModel,
    StepShape,
    decode_shape,
    steps_bracket,
    steps_within,
)
from sim.perf.table import TableStepModel, read_step_table

__all__ = ["Chunk", "ContextPath", "DecodeCoeffs", "DecodeRun", "DraftedRun", "DraftWork", "LinearPath", "PerfCfg",
           "RooflineStepModel", "Segment", "StepModel", "StepShape", "TableStepModel", "decode_shape", "make_step_model",
           "read_step_table", "steps_bracket", "steps_within"]


def make_step_model(model: ModelSpec, gpu: GpuSpec, tp: int, weights: str, kv: str, compute: str,
                    cfg: PerfCfg, attention: str | None = None,
                    host_overlapped: bool = False, draft_model: ModelSpec | None = None, ep: int = 1,
                    expert_imbalance: float = 1.0, redundant_experts: int = 0) -> RooflineStepModel | TableStepModel:
    """The roofline, or the measured step-time table that `cfg.step_table` names (measured times
    include the engine's host work as it ran). A separate speculative `draft_model` runs on the same
    GPUs with the same parallelism and precisions; its steps are priced by its own roofline, without
    the per-iteration and per-sequence overheads the target's iteration already counts. `ep` and
    `expert_imbalance`: the target's experts split over ep GPUs of its tensor-parallel group (with
    `redundant_experts` extra slots)."""
    drafter = None
    if draft_model is not None:
        bare = cfg.model_copy(update={"iteration_overhead_s": 0.0, "per_seq_overhead_s": 0.0, "step_table": None})
        drafter = RooflineStepModel(draft_model, gpu, tp, weights, kv, compute, bare, attention, host_overlapped=True)
    if cfg.step_table is not None:
        return TableStepModel(read_step_table(cfg.step_table), cfg.step_table, drafter)
    return RooflineStepModel(model, gpu, tp, weights, kv, compute, cfg, attention, host_overlapped, drafter,
                             ep=ep, expert_imbalance=expert_imbalance, redundant_experts=redundant_experts)
