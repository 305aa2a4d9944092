"""Pipeline parallelism: a replica's layers split into p consecutive stages, each on its own
tp GPUs, with the batch split into micro-batches that flow through the stages.

Schedule (what vLLM's virtual engines and TensorRT-LLM's pipeline executor do for serving): the
iteration's sequences are split into m = p micro-batches, and each micro-batch's next step can
start only when its previous step has left the last stage (the next token depends on it). With m
micro-batches circulating over p stages, a stage computes each micro-batch once per cycle, so

    cycle = max(m x t_stage, p x t_stage + (p - 1) x t_handover)

where t_stage is one stage's time for one micro-batch (the largest micro-batch on the largest
stage) and t_handover moves a micro-batch's hidden states (tokens x hidden x 2 B, BF16) to the
next stage (comm.stage_transfer_s: over the scale-up link inside a domain, over the scale-out
network when the replica spans domains). A cycle advances every sequence one step, so it is the
iteration time the engine uses. Each stage GPU is busy m x t_stage of it:

    bubble fraction = 1 - m x t_stage / cycle

which is (p - m) / p when m < p and hand-overs are free, and 0 once m >= p; with m = p the
hand-overs are exposed, (p - 1) x t_handover per cycle. (Training's GPipe bubble,
(p - 1) / (m + p - 1), is that of one flushed batch; serving keeps the pipeline full.)

t_stage is priced by the whole model's roofline on one micro-batch, times the largest stage's
share of the layers, ceil(L / p) / L: the stage reads its layers' weights and KV and does their
FLOPs; the LM head, embedding and per-iteration overheads are spread over the stages with the
layers (an approximation: the last stage also runs the LM head). So with m = p,

    iteration = p x ceil(L / p) / L x t_model(micro-batch) + (p - 1) x t_handover

A decode run stays piecewise affine in the summed context S (a micro-batch of b = ceil(B / p)
sequences holds S x b / B of it), so decode runs remain one event each.
"""

from __future__ import annotations

from sim.parallelism import Parallelism
from sim.perf.comm import Links, stage_transfer_s
from sim.perf.roofline import RooflineStepModel
from sim.perf.shape import (
    Affine,
    ContextPath,
    DecodeRun,
    DraftWork,
    PrefixPath,
    Segment,
    StepShape,
    affine_segments,
    segments_run_s,
)

#: Bytes per element of the hidden state handed between stages (BF16 activations).
HANDOVER_BYTES = 2.0


def cycle_s(stage_s: float, handover_s: float, stages: int, micro_batches: int) -> float:
    """One pipeline cycle (module docstring): every micro-batch through every stage once."""
    return max(micro_batches * stage_s, stages * stage_s + (stages - 1) * handover_s)


def bubble_fraction(stage_s: float, handover_s: float, stages: int, micro_batches: int) -> float:
    """Share of a cycle a stage's GPUs sit idle."""
    c = cycle_s(stage_s, handover_s, stages, micro_batches)
    return 1.0 - micro_batches * stage_s / c if c > 0 else 0.0


class PipelineRun:
    """Decode steps of B sequences through the pipeline: factor x inner(S x scale) + add, where
    inner is the micro-batch's decode run on the whole model, scale = b / B its share of the
    summed context, factor = p x the largest stage's share of the layers and add the exposed
    hand-overs. Piecewise affine in S on the inner run's pieces, moved by the scale."""

    __slots__ = ("inner", "scale", "factor", "add", "affine", "_batch")

    def __init__(self, inner: DecodeRun, batch: int, scale: float, factor: float, add: float) -> None:
        self.inner, self._batch, self.scale, self.factor, self.add = inner, batch, scale, factor, add
        xs, pieces = inner.affine  # type: ignore[attr-defined]   # roofline runs know their pieces
        self.affine: Affine = (tuple(x / scale for x in xs),
                               tuple((factor * a + add, factor * b * scale) for a, b in pieces))

    @property
    def batch(self) -> int:
        return self._batch

    def step_s(self, ctx_sum: float) -> float:
        return self.factor * self.inner.step_s(ctx_sum * self.scale) + self.add

    def segments(self, path: ContextPath, n_steps: int) -> list[Segment]:
        return affine_segments(self.affine, path, n_steps)

    def run_s(self, path: ContextPath, n_steps: int) -> float:
        if n_steps <= 0:
            return 0.0
        if isinstance(path, PrefixPath):
            return path.run_s(self, n_steps)
        return segments_run_s(self.segments(path, n_steps), path)


class PipelineStepModel:
    """The step model of a pipeline-parallel replica (module docstring), around the roofline of
    the whole model at the stage's tensor parallelism."""

    def __init__(self, model: RooflineStepModel, par: Parallelism, links: Links) -> None:
        if par.pp < 2:
            raise ValueError("a pipeline needs at least two stages")
        self.inner, self.stages = model, par.pp
        self.micro_batches = par.pp
        layers = model.model.layers
        self.stage_share = par.stage_layers(layers) / layers
        self.factor = self.micro_batches * self.stage_share
        self.links = links
        # The replica spans scale-up domains: some hand-over crosses the scale-out network, and
        # every cycle waits for the slowest.
        self.same_domain = par.gpus <= model.gpu.scale_up_domain
        self.handover_bytes_per_token = model.model.hidden * HANDOVER_BYTES / par.tp
        self._runs: dict[tuple[int, bool], PipelineRun] = {}

    # ---- the pieces ----------------------------------------------------------------------------
    def micro_batch(self, shape: StepShape) -> StepShape:
        """The largest of the p micro-batches an iteration splits into: ceil(B / p) of the
        decoding sequences (with their share of the context) and every p-th prefill chunk,
        largest first."""
        p, seqs = self.micro_batches, shape.decode_seqs
        b = -(-seqs // p)
        ctx = shape.decode_ctx_sum * b / seqs if seqs else 0.0
        chunks = tuple(sorted(shape.chunks, key=lambda c: -c.new)[0::p])
        return StepShape(b, ctx, shape.query_tokens_per_seq, chunks, shape.draft)

    def handover_s(self, tokens: int) -> float:
        return stage_transfer_s(tokens * self.handover_bytes_per_token, self.same_domain, self.links)

    def exposed_handover_s(self, micro_tokens: int) -> float:
        """Hand-over time a cycle exposes beyond the stages' compute, with m = p micro-batches."""
        return (self.stages - 1) * self.handover_s(micro_tokens) if micro_tokens else 0.0

    def bubble_fraction(self, shape: StepShape) -> float:
        """Share of the iteration the stage GPUs sit idle."""
        micro = self.micro_batch(shape)
        stage_s = self.inner.iteration_s(micro) * self.stage_share
        return bubble_fraction(stage_s, self.handover_s(micro.decode_tokens + micro.prefill_tokens),
                               self.stages, self.micro_batches)

    # ---- StepModel ---------------------------------------------------------------------------------
    def iteration_s(self, shape: StepShape) -> float:
        micro = self.micro_batch(shape)
        tokens = micro.decode_tokens + micro.prefill_tokens
        if not tokens:
            return 0.0
        return self.factor * self.inner.iteration_s(micro) + self.exposed_handover_s(tokens)

    def utilization_s(self, shape: StepShape) -> float:
        return self.factor * self.inner.utilization_s(self.micro_batch(shape))

    def iteration_with_utilization_s(self, shape: StepShape) -> tuple[float, float]:
        micro = self.micro_batch(shape)
        tokens = micro.decode_tokens + micro.prefill_tokens
        if not tokens:
            return 0.0, 0.0
        t, u = self.inner.iteration_with_utilization_s(micro)
        return self.factor * t + self.exposed_handover_s(tokens), self.factor * u

    def decode_run(self, batch: int, query_tokens_per_seq: int = 1, draft: DraftWork | None = None) -> DecodeRun:
        return self._run(batch, query_tokens_per_seq, draft, utilization=False)

    def decode_utilization(self, batch: int, query_tokens_per_seq: int = 1,
                           draft: DraftWork | None = None) -> DecodeRun:
        return self._run(batch, query_tokens_per_seq, draft, utilization=True)

    def _run(self, batch: int, q: int, draft: DraftWork | None, utilization: bool) -> PipelineRun:
        if draft is not None or q != 1:
            raise ValueError("speculative decoding with pipeline parallelism is not priced")
        key = (batch, utilization)
        run = self._runs.get(key)
        if run is None:
            b = -(-batch // self.micro_batches)
            inner = self.inner.decode_utilization(b) if utilization else self.inner.decode_run(b)
            add = 0.0 if utilization else self.exposed_handover_s(b)
            run = self._runs[key] = PipelineRun(inner, batch, b / batch if batch else 1.0, self.factor, add)
        return run

