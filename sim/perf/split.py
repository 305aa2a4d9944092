"""Where a decode step's time goes: the step-time model's terms for one representative decode
step, so that a run can say why a layout is fast or slow (compute, memory, all-reduce, all-to-all,
pipeline hand-overs, fixed overheads).

The representative step is a decode-only iteration at the run's mean batch per attention rank
(rounded, at least 1) and a context per sequence of the mean prompt plus half the mean output (the
mean KV length of a decoding sequence over its life). The GPU runs compute and memory traffic at
the same time, so the step takes max(compute, memory) plus the rest:

    step = max(compute_ms, memory_ms) + allreduce_ms + all_to_all_ms + pipeline_ms + overhead_ms

(through pipeline stages: the cycle is a micro-batch's round trip, and pipeline_ms its hand-overs,
or the slowest stage's load, every part then scaled to it and the hand-overs hidden).

(with two-batch overlap the all-to-all hides under the compute, and the step is the larger of the
two plus the fixed rest). A measured step table has no terms: it gives none. The representative
step has no draft work (speculative decoding's share is `spec_draft_time_share`), and the mean
batch counts idle time as batch 0, so at light load it is below the batch a busy step has.
"""

from __future__ import annotations

import math

from sim.perf.pipeline import PipelineStepModel
from sim.perf.ranks import RankedRoofline
from sim.perf.roofline import RooflineStepModel
from sim.perf.shape import StepModel, StepShape

#: The summary keys `decode_step_split` returns, all in milliseconds.
SPLIT_KEYS = ("step_ms", "step_compute_ms", "step_memory_ms", "step_allreduce_ms", "step_all_to_all_ms",
              "step_pipeline_ms", "step_overhead_ms")


def decode_step_split(model: StepModel, ranked: RankedRoofline | None, ranks: int, batch_per_rank: float,
                      ctx_tokens: float) -> dict[str, float]:
    """The terms (ms) of a decode step of `batch_per_rank` sequences on each of `ranks` ranks at
    `ctx_tokens` of context each (module docstring); NaN for a measured step table."""
    b = max(1, int(round(batch_per_rank))) if math.isfinite(batch_per_rank) else 1
    shape = StepShape(b, b * max(1.0, ctx_tokens))
    out = dict.fromkeys(SPLIT_KEYS, math.nan)
    if ranked is not None:
        br = ranked.breakdown([shape] * ranks)
        out.update(step_ms=br.step_s, step_compute_ms=br.compute_s, step_memory_ms=br.memory_s,
                   step_allreduce_ms=br.allreduce_s, step_all_to_all_ms=br.all_to_all_s, step_pipeline_ms=0.0,
                   step_overhead_ms=br.overhead_s)
    elif isinstance(model, PipelineStepModel):
        # The cycle is a micro-batch's round trip (the model once, plus the hand-overs) or the
        # slowest stage's load (its parts scaled to the cycle, the hand-overs hidden under it).
        inner = model.inner.breakdown(model.micro_batch(shape))
        t_model, _, handovers_s, _ = model.cycle_parts(shape)
        cycle = model.iteration_s(shape)
        f, pipe = (1.0, handovers_s) if cycle <= t_model + handovers_s else (cycle / t_model, 0.0)
        out.update(step_ms=cycle, step_compute_ms=f * inner.compute_s, step_memory_ms=f * inner.memory_s,
                   step_allreduce_ms=f * inner.comm_s, step_all_to_all_ms=0.0, step_pipeline_ms=pipe,
                   step_overhead_ms=f * inner.overhead_s)
    elif isinstance(model, RooflineStepModel):
        one = model.breakdown(shape)
        out.update(step_ms=model.iteration_s(shape), step_compute_ms=one.compute_s, step_memory_ms=one.memory_s,
                   step_allreduce_ms=one.comm_s, step_all_to_all_ms=0.0, step_pipeline_ms=0.0,
                   step_overhead_ms=one.overhead_s)
    else:
        return out
    return {k: v * 1e3 for k, v in out.items()}
