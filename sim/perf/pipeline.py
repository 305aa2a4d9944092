"""Pipeline parallelism: a replica's layers split into p consecutive stages, each on its own
tp GPUs, with the batch split into micro-batches that flow through the stages.

Schedule (what vLLM's virtual engines and TensorRT-LLM's pipeline executor do for serving): the
iteration's sequences are split into m = p micro-batches, and each micro-batch's next step can
start only when its previous step has left the last stage (the next token depends on it). With m
micro-batches circulating over p stages, a stage computes each micro-batch once per cycle, so

    cycle = max(m x t_stage, p x t_stage + (p - 1) x t_handover)

where t_stage is the slowest stage's time for one micro-batch (the largest micro-batch on the last
stage) and t_handover moves a micro-batch's hidden states (tokens x hidden x 2 B, BF16, each of a
stage's tp GPUs sending its 1/tp slice to its peer) to the next stage (comm.stage_transfer_s: over
the scale-up link when both stages sit in one domain, over the scale-out network for a boundary
that leaves it). A cycle advances every sequence one step, so it is the iteration time the engine
uses. Each stage GPU is busy m x t_stage of it:

    bubble fraction = 1 - m x t_stage / cycle

which is (p - m) / p when m < p and hand-overs are free, and 0 once m >= p; with m = p the
hand-overs are exposed, (p - 1) x t_handover per cycle. (Training's GPipe bubble,
(p - 1) / (m + p - 1), is that of one flushed batch; serving keeps the pipeline full.)

t_stage is priced by the whole model's roofline on one micro-batch, times the largest stage's
share of the layers, s = ceil(L / p) / L (the stage reads its layers' weights and KV and does
their FLOPs; per-iteration overheads are spread with the layers), with the LM head, which the last
stage runs whole, moved out of the share: t_stage = s x t_model + (1 - s) x t_lm_head. So with m = p,

    iteration = p x (s x t_model(micro-batch) + (1 - s) x t_lm_head) + the p - 1 hand-overs

When the batch has fewer sequences than stages, only that many micro-batches have work: the cycle
is the same (a micro-batch still crosses every stage) and the GPUs' busy time counts the filled
ones (utilization, bubble).

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
        p, seqs = self.micro_batches, shape.decode_seqs
        b = -(-seqs // p)
        ctx = shape.decode_ctx_sum * b / seqs if seqs else 0.0
        chunks = tuple(sorted(shape.chunks, key=lambda c: -c.new)[0::p])
        return StepShape(b, ctx, shape.query_tokens_per_seq, chunks, shape.draft)

    def filled(self, shape: StepShape) -> int:
        """Micro-batches with work: fewer than p when the batch has fewer sequences than stages."""
        return min(self.micro_batches, shape.decode_seqs + len(shape.chunks))

    def exposed_handover_s(self, micro_tokens: int) -> float:
        """Hand-over time a cycle exposes beyond the stages' compute (m = p micro-batches): the
        p - 1 boundaries, over the scale-out network where they leave a domain."""
        if not micro_tokens:
            return 0.0
        nbytes = micro_tokens * self.handover_bytes_per_token
        outside = self.crossings * stage_transfer_s(nbytes, False, self.links)
        return outside + (self.stages - 1 - self.crossings) * stage_transfer_s(nbytes, True, self.links)

    def lm_head_s(self, samples: int, pure: bool = False) -> float:
        """The LM head of `samples` sampled positions, which the last stage runs on top of its layers."""
        m = self.inner
        return max(m._lm_flops(samples, pure) / m.flops_per_s, m.lm_head_bytes / m.bytes_per_s) if samples else 0.0

    def stage_s(self, micro: StepShape, model_s: float, pure: bool = False) -> float:
        """The last (slowest) stage's time for a micro-batch: its share of the model's time, with
        the LM head whole rather than shared."""
        samples = micro.decode_tokens + sum(1 for c in micro.chunks if c.samples)
        return self.stage_share * model_s + (1.0 - self.stage_share) * self.lm_head_s(samples, pure)

    def bubble_fraction(self, shape: StepShape) -> float:
        """Share of the iteration the last stage's GPUs sit idle."""
        micro = self.micro_batch(shape)
        tokens = micro.decode_tokens + micro.prefill_tokens
        if not tokens:
            return 0.0
        stage = self.stage_s(micro, self.inner.iteration_s(micro))
        return 1.0 - self.filled(shape) * stage / self.iteration_s(shape)

    # ---- StepModel ---------------------------------------------------------------------------------
    def iteration_s(self, shape: StepShape) -> float:
        return self.iteration_with_utilization_s(shape)[0]

    def utilization_s(self, shape: StepShape) -> float:
        return self.iteration_with_utilization_s(shape)[1]

    def iteration_with_utilization_s(self, shape: StepShape) -> tuple[float, float]:
        """A cycle: p passes of the largest micro-batch through the slowest stage plus the exposed
        hand-overs; the stage's GPUs work on the micro-batches that have work."""
        micro = self.micro_batch(shape)
        tokens = micro.decode_tokens + micro.prefill_tokens
        if not tokens:
            return 0.0, 0.0
        t, u = self.inner.iteration_with_utilization_s(micro)
        cycle = self.micro_batches * self.stage_s(micro, t) + self.exposed_handover_s(tokens)
        return cycle, self.filled(shape) * self.stage_s(micro, u, pure=True)

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
            b = -(-batch // self.micro_batches)
            lm = (1.0 - self.stage_share) * self.lm_head_s(b, pure=utilization)
            if utilization:     # the stage's GPUs work on the filled micro-batches only
                m = min(self.micro_batches, batch)
                run = PipelineRun(self.inner.decode_utilization(b), batch, b / batch, m * self.stage_share, m * lm)
            else:
                run = PipelineRun(self.inner.decode_run(b), batch, b / batch, self.factor,
                                  self.micro_batches * lm + self.exposed_handover_s(b))
            self._runs[key] = run
        return run
