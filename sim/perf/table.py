"""Measured step-time tables: interpolate a CSV of iteration times instead of the roofline.

CSV columns: ``decode_seqs`` (sequences decoding one token each), ``context_tokens`` (their mean
KV length), ``prefill_tokens`` (prompt tokens computed in the same iteration), ``step_time_s``.
The rows must form a full grid: every combination of the distinct values of the three inputs,
at least two values each, with finite times > 0 that never fall as any input grows (a step with
more work never takes less time; average noisy measurements first). Interpolation is multilinear
(``scipy.interpolate.RegularGridInterpolator``), exact at table points. Above the grid it
extrapolates linearly from the edge cells; below it, it holds the edge value (linear extrapolation
downwards could reach zero or negative times). Either is recorded, so results can say how far
they left the measured range. With non-decreasing rows, every step time is at least the table's
smallest, so simulated time always advances.

For a fixed number of decoding sequences B and no prefill, step time is piecewise linear in the
mean context, with breakpoints at the table's context values, hence piecewise linear in the
summed context S = B x mean. A run of n decode steps along a context path therefore still has a
closed-form duration: a sum of linear pieces (`shape.Segment`), one per table segment the run
crosses.

The table has no axis for several query tokens per decoding sequence (speculative verification):
such an iteration is looked up as one decode token per sequence plus the extra tokens as prefill.
Chunked prefills are looked up by their token count only: a chunk late in a long prompt costs the
same as the first (the table has no prefix axis).

Draft work (`shape.DraftWork`) has no axis either: a draft pass running a share f of the layers is
priced as f times a one-token decode step of the same batch at the same context. The measured step
holds the whole LM head, of which this counts only the share f, so it under-prices a one-layer
drafter's pass next to the roofline (which counts the whole head per pass: a pass of Llama-3.1-8B's
one-layer drafter is 0.03 of a step here, 0.05-0.10 in the roofline).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sim.csvio import read_csv
from sim.errors import InputError
from sim.perf.shape import (
    ContextPath,
    DecodeRun,
    DraftedRun,
    DraftWork,
    LinearPath,
    Segment,
    StepModel,
    StepShape,
    lin_sum,
    pieces_run_s,
)

COLUMNS = ("decode_seqs", "context_tokens", "prefill_tokens", "step_time_s")
AXES = COLUMNS[:3]


@dataclass
class Coverage:
    """Smallest and largest value asked for on each axis, against the table's range."""

    grid: dict[str, tuple[float, float]]
    seen: dict[str, list[float]] = field(default_factory=dict)

    def note(self, axis: str, lo: float, hi: float) -> None:
        cur = self.seen.get(axis)
        self.seen[axis] = [lo, hi] if cur is None else [min(cur[0], lo), max(cur[1], hi)]

    def extrapolated(self) -> dict[str, tuple[float, float]]:
        """Axes where requests left the table: {axis: (lowest asked, highest asked)}."""
        out = {}
        for axis, (lo, hi) in self.seen.items():
            g_lo, g_hi = self.grid[axis]
            if lo < g_lo - 1e-9 or hi > g_hi + 1e-9:
                out[axis] = (lo, hi)
        return out


def read_step_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    df = read_csv(p, "step table CSV")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{p}: step table lacks column(s) {missing}; needs {list(COLUMNS)}")
    for c in COLUMNS:
        vals = pd.to_numeric(df[c], errors="coerce")
        finite = np.isfinite(vals.to_numpy(dtype=float, na_value=np.nan))
        bad = ~finite | (vals < 0) | ((vals <= 0) if c == "step_time_s" else False)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{p}: line {i + 2}: column {c!r} must be a finite number "
                             f"{'> 0' if c == 'step_time_s' else '>= 0'}, got {df[c].iloc[i]!r}")
        df[c] = vals.astype(float)
    if df.duplicated(list(AXES)).any():
        i = int(np.flatnonzero(df.duplicated(list(AXES)).to_numpy())[0])
        raise InputError(f"{p}: line {i + 2}: duplicate row for {dict(df.loc[i, list(AXES)])}")
    sizes = {a: df[a].nunique() for a in AXES}
    few = [a for a, n in sizes.items() if n < 2]
    if few:
        raise InputError(f"{p}: step table needs at least two distinct values of {few}")
    if len(df) != math.prod(sizes.values()):
        raise InputError(f"{p}: step table is not a full grid: {len(df)} rows for "
                         f"{' x '.join(str(n) for n in sizes.values())} combinations of {list(AXES)}")
    _check_non_decreasing(df, p)
    return df


def _check_non_decreasing(df: pd.DataFrame, p: Path) -> None:
    """Refuse a table whose step time falls as one input grows with the others fixed."""
    for axis in AXES:
        others = [a for a in AXES if a != axis]
        rows = df.reset_index().sort_values([*others, axis], kind="stable")
        prev = rows.groupby(others, sort=False)["step_time_s"].shift()
        falls = (rows["step_time_s"] < prev).to_numpy()
        if falls.any():
            j = int(np.flatnonzero(falls)[0])
            r = rows.iloc[j]
            at = ", ".join(f"{a}={r[a]:g}" for a in others)
            raise InputError(f"{p}: line {int(r['index']) + 2}: step_time_s falls to {r['step_time_s']:g} s as {axis} "
                             f"grows to {r[axis]:g} (at {at}), from {prev.iloc[j]:g} s; a step with more work must "
                             "not take less time: average noisy measurements first")


class PiecewiseDecode:
    """Decode step time for B sequences: a_k + b_k * S on segment k of the summed context S
    (segment k spans [bounds[k-1], bounds[k]); the first and last extend to infinity)."""

    def __init__(self, bounds: tuple[float, ...], a: tuple[float, ...], b: tuple[float, ...], batch: int,
                 coverage: Coverage) -> None:
        self.bounds, self.a, self.b, self.batch, self.coverage = bounds, a, b, batch, coverage

    def _segment(self, s: float) -> int:
        return bisect_right(self.bounds, s)

    def step_s(self, ctx_sum: float) -> float:
        self.coverage.note("context_tokens", ctx_sum / self.batch, ctx_sum / self.batch)
        k = self._segment(ctx_sum)
        return self.a[k] + self.b[k] * ctx_sum

    def segments(self, path: ContextPath, n_steps: int) -> list[Segment]:
        out: list[Segment] = []
        j = 0
        while j < n_steps:
            k = self._segment(path.at(j))
            # Steps until S reaches the next breakpoint.
            end = n_steps if k >= len(self.bounds) else \
                min(n_steps, max(j + 1, path.first_step_at_least(self.bounds[k], n_steps)))
            out.append((j, end, self.a[k], self.b[k]))
            j = end
        return out

    def run_s(self, path: ContextPath, n_steps: int) -> float:
        if n_steps <= 0:
            return 0.0
        bt = float(self.batch)
        self.coverage.note("context_tokens", path.at(0) / bt, path.at(n_steps - 1) / bt)
        if not isinstance(path, LinearPath):
            return pieces_run_s(self, path, n_steps)
        first, slope = path.first, path.slope
        if slope <= 0:                      # every step at the same context
            k = self._segment(first)
            return n_steps * (self.a[k] + self.b[k] * first)
        total, j = 0.0, 0
        while j < n_steps:
            k = self._segment(first + j * slope)
            if k < len(self.bounds):  # steps until S reaches the next breakpoint
                end = min(n_steps, max(j + 1, math.ceil((self.bounds[k] - first) / slope)))
            else:
                end = n_steps
            total += lin_sum(self.a[k] + self.b[k] * first, self.b[k] * slope, j, end)
            j = end
        return total


class ScaledRun:
    """A decode run whose every step takes `factor` times another's."""

    __slots__ = ("run", "factor")

    def __init__(self, run: DecodeRun, factor: float) -> None:
        self.run, self.factor = run, factor

    @property
    def batch(self) -> int:
        return self.run.batch

    def step_s(self, ctx_sum: float) -> float:
        return self.factor * self.run.step_s(ctx_sum)

    def segments(self, path: ContextPath, n_steps: int) -> list[Segment]:
        f = self.factor
        return [(lo, hi, f * a, f * b) for lo, hi, a, b in self.run.segments(path, n_steps)]

    def run_s(self, path: ContextPath, n_steps: int) -> float:
        return self.factor * self.run.run_s(path, n_steps)


class TableStepModel:
    """Step times from a measured table (implements shape.StepModel)."""

    def __init__(self, table: pd.DataFrame, path: str = "", drafter: StepModel | None = None) -> None:
        from scipy.interpolate import RegularGridInterpolator

        self.path = path
        self.drafter = drafter      # a separate draft model's step model (speculative decoding)
        self.axes = [np.sort(table[a].unique()) for a in AXES]
        grid = table.set_index(list(AXES))["step_time_s"]
        values = np.array([[[grid[(b, c, p)] for p in self.axes[2]] for c in self.axes[1]] for b in self.axes[0]])
        self._interp = RegularGridInterpolator(self.axes, values, method="linear", bounds_error=False, fill_value=None)
        self.coverage = Coverage({a: (float(ax[0]), float(ax[-1])) for a, ax in zip(AXES, self.axes, strict=True)})
        self._decode_cache: dict[tuple[int, int], PiecewiseDecode] = {}
        self._lo = tuple(float(ax[0]) for ax in self.axes)

    def _at(self, b: float, c: float, p: float) -> float:
        lo = self._lo    # below the grid, hold the edge value (see the module docstring)
        return float(self._interp([[max(b, lo[0]), max(c, lo[1]), max(p, lo[2])]])[0])

    def iteration_s(self, shape: StepShape) -> float:
        decode_seqs, decode_ctx_sum, q = shape.decode_seqs, shape.decode_ctx_sum, shape.query_tokens_per_seq
        if not shape.chunks:
            return self.decode_run(decode_seqs, q, shape.draft).step_s(decode_ctx_sum) if decode_seqs else 0.0
        draft_s = 0.0
        if shape.draft is not None and shape.draft.passes > 0 and decode_seqs:
            draft_s = shape.draft.passes * self._draft_run(decode_seqs, shape.draft).step_s(decode_ctx_sum)
        prefill = float(shape.prefill_tokens + decode_seqs * (q - 1))
        mean_ctx = decode_ctx_sum / decode_seqs if decode_seqs else float(self.axes[1][0])
        cov = self.coverage
        cov.note("decode_seqs", decode_seqs, decode_seqs)
        cov.note("prefill_tokens", prefill, prefill)
        if decode_seqs:
            cov.note("context_tokens", mean_ctx, mean_ctx)
        return max(0.0, self._at(decode_seqs, mean_ctx, prefill)) + draft_s

    def utilization_s(self, shape: StepShape) -> float:
        """A measured table knows times, not bytes or FLOPs: the whole step counts as busy at full
        utilization (the power model's former busy-fraction assumption)."""
        return self.iteration_s(shape)

    def iteration_with_utilization_s(self, shape: StepShape) -> tuple[float, float]:
        t = self.iteration_s(shape)
        return t, t

    def decode_utilization(self, batch: int, query_tokens_per_seq: int = 1,
                           draft: DraftWork | None = None) -> DecodeRun:
        return self.decode_run(batch, query_tokens_per_seq, draft)

    def decode_run(self, batch: int, query_tokens_per_seq: int = 1, draft: DraftWork | None = None) -> DecodeRun:
        if draft is not None and draft.passes > 0:
            return DraftedRun(self._plain_run(batch, query_tokens_per_seq), self._draft_run(batch, draft), draft.passes)
        return self._plain_run(batch, query_tokens_per_seq)

    def _draft_run(self, batch: int, draft: DraftWork) -> DecodeRun:
        """One draft pass: a step of the separate draft model, or a share of a measured step."""
        if self.drafter is not None:
            return self.drafter.decode_run(batch)
        return ScaledRun(self._plain_run(batch, 1), draft.layer_share)

    def _plain_run(self, batch: int, query_tokens_per_seq: int) -> PiecewiseDecode:
        key = (batch, query_tokens_per_seq)
        d = self._decode_cache.get(key)
        if d is not None:
            return d
        self.coverage.note("decode_seqs", batch, batch)
        cs = self.axes[1]
        extra = float(batch * (query_tokens_per_seq - 1))
        if extra:
            self.coverage.note("prefill_tokens", extra, extra)
        v = np.array([self._at(batch, c, extra) for c in cs])
        slopes_c = np.diff(v) / np.diff(cs)
        # Segments in S = batch x mean context: below the first point, between points, above the last.
        seg_slope_c = np.concatenate([[0.0], slopes_c, [slopes_c[-1]]])   # flat below the first point
        seg_origin = np.concatenate([[0], np.arange(len(cs) - 1), [len(cs) - 2]])
        a, b = [], []
        for sc, o in zip(seg_slope_c, seg_origin, strict=True):
            # t = v[o] + sc * (S / batch - cs[o])  ->  intercept + slope * S
            a.append(float(v[o] - sc * cs[o]))
            b.append(float(sc / batch))
        bounds = tuple(float(c * batch) for c in cs)
        d = PiecewiseDecode(bounds, tuple(a), tuple(b), batch, self.coverage)
        self._decode_cache[key] = d
        return d
