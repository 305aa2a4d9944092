"""Pipeline parallelism: a replica's layers split into p consecutive stages, each on its own
tp GPUs, with the batch split into micro-batches that flow through the stages.

Schedule (what vLLM's virtual engines and TensorRT-LLM's pipeline executor do for serving): the
iteration's sequences are split into up to p micro-batches, and each micro-batch's next step can
start only when its previous step has left the last stage (the next token depends on it). With m
micro-batches circulating over p stages, the busiest stage computes each of them once per cycle,
and each micro-batch must cross every stage once, so

    cycle = max(m x t_max, sum_i t_i + H)

where t_i is stage i's time for one micro-batch (the largest micro-batch), t_max the slowest
stage's, and H the p - 1 hand-overs of a micro-batch's hidden states (tokens x hidden x 2 B,
BF16, each of a stage's tp GPUs sending its 1/tp slice to its peer; comm.stage_transfer_s: over
the scale-up link when both stages sit in one domain, over the scale-out network for a boundary
that leaves it). A cycle advances every sequence one step, so it is the iteration time the engine
uses. The busiest stage's GPUs work m x t_max of it:

    bubble fraction = 1 - m x t_max / cycle

With equal stages (t_i = t) that is (p - m) / p when m < p and hand-overs are free, and with
m = p only the hand-overs, (p - 1) x t_handover per cycle. (Training's GPipe bubble,
(p - 1) / (m + p - 1), is that of one flushed batch; serving keeps the pipeline full.)

The stages are priced by the whole model's roofline on one micro-batch, t_model: a stage of a
share s_i of the layers takes s_i x (t_model - t_lm) plus, on the last stage, the LM head t_lm
(per-iteration overheads are spread with the layers), so sum_i t_i = t_model and the slowest stage
is the last with the largest share s = ceil(L / p) / L: t_max = s x (t_model - t_lm) + t_lm.
m = min(p, sequences + prefill chunks): fewer micro-batches than stages have work when the batch
is small, and then a micro-batch's round trip sets the cycle (one sequence crosses the whole
model once), not p times the slowest stage.

A decode run stays piecewise affine in the summed context S (a micro-batch of b = ceil(B / p)
sequences holds S x b / B of it; the cycle is the larger of two affine forms of the same run,
which cross at most once on each of its pieces), so decode runs remain one event each.
"""

from __future__ import annotations

import math

from sim.parallelism import Parallelism
from sim.perf.comm import Links, stage_transfer_s
from sim.perf.roofline import RooflineStepModel
from sim.perf.shape import (
    Affine,
    ContextPath,
    DecodeRun,
    DraftWork,
    Segment,
    StepShape,
    affine_segments,
    pieces_run_s,
)

#: Bytes per element of the hidden state handed between stages (BF16 activations).
HANDOVER_BYTES = 2.0


def cycle_s(stage_s: float, handover_s: float, stages: int, micro_batches: int) -> float:
    """One pipeline cycle of equal stages (module docstring): every micro-batch through every stage once."""
    return max(micro_batches * stage_s, stages * stage_s + (stages - 1) * handover_s)


def bubble_fraction(stage_s: float, handover_s: float, stages: int, micro_batches: int) -> float:
    """Share of a cycle of equal stages that a stage's GPUs sit idle."""
    c = cycle_s(stage_s, handover_s, stages, micro_batches)
    return 1.0 - micro_batches * stage_s / c if c > 0 else 0.0


#: A form f x inner(S x scale) + add of a decode run's step time.
Form = tuple[float, float]


def _upper_envelope(affine: Affine, scale: float, forms: tuple[Form, ...]) -> Affine:
    """The pieces of max over `forms` of f x run(S x scale) + add, for a run with pieces `affine`
    in its own S: on each piece the forms are lines in S, and two lines cross at most once."""
    xs, pieces = affine
    bounds = [-math.inf, *(x / scale for x in xs), math.inf]
    out_x: list[float] = []
    out_p: list[tuple[float, float]] = []

    def emit(start: float, line: tuple[float, float]) -> None:
        if out_p and start > -math.inf:
            out_x.append(start)
        out_p.append(line)

    for i, (a, b) in enumerate(pieces):
        lo, hi = bounds[i], bounds[i + 1]
        lines = [(f * a + add, f * b * scale) for f, add in forms]
        if len(lines) == 1:
            emit(lo, lines[0])
            continue
        (a1, b1), (a2, b2) = lines
        if b1 == b2:
            emit(lo, lines[0] if a1 >= a2 else lines[1])
            continue
        flat, steep = (lines[0], lines[1]) if b1 < b2 else (lines[1], lines[0])
        cross = (steep[0] - flat[0]) / (flat[1] - steep[1])   # left of it the flatter line is larger
        if cross <= lo:
            emit(lo, steep)
        elif cross >= hi:
            emit(lo, flat)
        else:
            emit(lo, flat)
            emit(cross, steep)
    return tuple(out_x), tuple(out_p)


class PipelineRun:
    """Decode steps of B sequences through the pipeline: the larger of the `forms`
    f x inner(S x scale) + add, where inner is the micro-batch's decode run on the whole model and
    scale = b / B its share of the summed context. Piecewise affine in S on the inner run's pieces,
    moved by the scale and cut where the forms cross."""

    __slots__ = ("inner", "scale", "forms", "affine", "_batch")

    def __init__(self, inner: DecodeRun, batch: int, scale: float, forms: tuple[Form, ...]) -> None:
        self.inner, self._batch, self.scale, self.forms = inner, batch, scale, forms
        self.affine: Affine = _upper_envelope(inner.affine, scale, forms)  # type: ignore[attr-defined]

    @property
    def batch(self) -> int:
        return self._batch

    def step_s(self, ctx_sum: float) -> float:
        t = self.inner.step_s(ctx_sum * self.scale)
        return max(f * t + add for f, add in self.forms)

    def segments(self, path: ContextPath, n_steps: int) -> list[Segment]:
        return affine_segments(self.affine, path, n_steps)

    def run_s(self, path: ContextPath, n_steps: int) -> float:
        return pieces_run_s(self, path, n_steps) if n_steps > 0 else 0.0


class PipelineStepModel:
    """The step model of a pipeline-parallel replica (module docstring), around the roofline of
    the whole model at the stage's tensor parallelism."""

    def __init__(self, model: RooflineStepModel, par: Parallelism, links: Links) -> None:
        if par.pp < 2:
            raise ValueError("a pipeline needs at least two stages")
        self.inner, self.stages = model, par.pp
        layers = model.model.layers
        self.stage_share = par.stage_layers(layers) / layers
        self.links = links
        # Which of the p - 1 stage boundaries leave a scale-up domain: stage i holds GPUs
        # [i tp, (i + 1) tp), and hands over GPU j to GPU j of the next stage.
        domain, tp = model.gpu.scale_up_domain, par.tp
        crossing = [(i - 1) * tp // domain != (i * tp + tp - 1) // domain for i in range(1, par.pp)]
        self.crossings = sum(crossing)
        # Each of a stage's tp GPUs hands its 1/tp slice of the hidden states to its peer.
        self.handover_bytes_per_token = model.model.hidden * HANDOVER_BYTES / tp
        self._runs: dict[tuple[int, bool], PipelineRun] = {}

    # ---- the pieces ----------------------------------------------------------------------------
    def micro_batch(self, shape: StepShape) -> StepShape:
        """The largest of the p micro-batches an iteration splits into: ceil(B / p) of the
        decoding sequences (with their share of the context) and every p-th prefill chunk,
        largest first."""
        p, seqs = self.stages, shape.decode_seqs
        b = -(-seqs // p)
        ctx = shape.decode_ctx_sum * b / seqs if seqs else 0.0
        chunks = tuple(sorted(shape.chunks, key=lambda c: -c.new)[0::p])
        return StepShape(b, ctx, shape.query_tokens_per_seq, chunks, shape.draft)

    def filled(self, shape: StepShape) -> int:
        """Micro-batches with work: fewer than p when the batch has fewer sequences than stages."""
        return min(self.stages, shape.decode_seqs + len(shape.chunks))

    def handovers_s(self, micro_tokens: int) -> float:
        """A micro-batch's p - 1 hand-overs, over the scale-out network where they leave a domain."""
        if not micro_tokens:
            return 0.0
        nbytes = micro_tokens * self.handover_bytes_per_token
        outside = self.crossings * stage_transfer_s(nbytes, False, self.links)
        return outside + (self.stages - 1 - self.crossings) * stage_transfer_s(nbytes, True, self.links)

    def slowest_stage_form(self, filled: int, lm_s: float) -> Form:
        """filled x t_max as a form of t_model: filled x (s x t_model + (1 - s) x t_lm)."""
        s = self.stage_share
        return filled * s, filled * (1.0 - s) * lm_s

    def cycle_parts(self, shape: StepShape) -> tuple[float, float, float, int]:
        """(t_model of the largest micro-batch, its LM head, its hand-overs, filled micro-batches)."""
        micro = self.micro_batch(shape)
        samples = micro.decode_tokens + sum(1 for c in micro.chunks if c.samples)
        return (self.inner.iteration_s(micro), self.inner.lm_head_s(samples),
                self.handovers_s(micro.decode_tokens + micro.prefill_tokens), self.filled(shape))

    def bubble_fraction(self, shape: StepShape) -> float:
        """Share of the iteration the slowest stage's GPUs sit idle."""
        t_model, lm_s, _, m = self.cycle_parts(shape)
        cycle = self.iteration_s(shape)
        f, add = self.slowest_stage_form(m, lm_s)
        return 1.0 - (f * t_model + add) / cycle if cycle > 0 else 0.0

    # ---- StepModel ---------------------------------------------------------------------------------
    def iteration_s(self, shape: StepShape) -> float:
        return self.iteration_with_utilization_s(shape)[0]

    def utilization_s(self, shape: StepShape) -> float:
        return self.iteration_with_utilization_s(shape)[1]

    def iteration_with_utilization_s(self, shape: StepShape) -> tuple[float, float]:
        """A cycle (module docstring), and the slowest stage's busy time in it."""
        micro = self.micro_batch(shape)
        tokens = micro.decode_tokens + micro.prefill_tokens
        if not tokens:
            return 0.0, 0.0
        samples = micro.decode_tokens + sum(1 for c in micro.chunks if c.samples)
        t, u = self.inner.iteration_with_utilization_s(micro)
        m = self.filled(shape)
        f, add = self.slowest_stage_form(m, self.inner.lm_head_s(samples))
        cycle = max(f * t + add, t + self.handovers_s(tokens))
        fu, addu = self.slowest_stage_form(m, self.inner.lm_head_s(samples, pure=True))
        return cycle, fu * u + addu

    def decode_run(self, batch: int, query_tokens_per_seq: int = 1, draft: DraftWork | None = None) -> DecodeRun:
        return self._run(batch, query_tokens_per_seq, draft, utilization=False)

    def decode_utilization(self, batch: int, query_tokens_per_seq: int = 1,
                           draft: DraftWork | None = None) -> DecodeRun:
        return self._run(batch, query_tokens_per_seq, draft, utilization=True)

    def _run(self, batch: int, q: int, draft: DraftWork | None, utilization: bool) -> PipelineRun:
        if draft is not None or q != 1:
            raise ValueError("speculative decoding with pipeline parallelism is not priced")
        if batch < 1:
            raise ValueError("a decode run needs at least one sequence")
        key = (batch, utilization)
        run = self._runs.get(key)
        if run is None:
            b = -(-batch // self.stages)
            m = min(self.stages, batch)
            slowest = self.slowest_stage_form(m, self.inner.lm_head_s(b, pure=utilization))
            if utilization:
                run = PipelineRun(self.inner.decode_utilization(b), batch, b / batch, (slowest,))
            else:
                run = PipelineRun(self.inner.decode_run(b), batch, b / batch, (slowest, (1.0, self.handovers_s(b))))
            self._runs[key] = run
        return run
