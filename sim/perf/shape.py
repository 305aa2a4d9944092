"""What the engine asks a step-time model: batch shapes, context paths and decode runs.

* A **batch shape** (`StepShape`) is one iteration: `decode_seqs` sequences each computing
  `query_tokens_per_seq` tokens (1 for plain decoding; k + 1 when a speculative step verifies k
  drafts) over a summed KV length `decode_ctx_sum` (this step's tokens included), plus prefill
  chunks (`Chunk`: `new` tokens on top of `prefix` tokens already in KV), plus the iteration's
  draft work (`DraftWork`: sequential draft passes over every decoding sequence, each proposing one
  token per sequence, as speculative decoding's drafter does before verification).
* A **context path** gives the summed KV length of a fixed set of decoding sequences at each step
  j = 0, 1, ... of a run. Plain decoding adds one token per sequence per step, so the path is
  linear, S_j = S_0 + B j (`LinearPath`); speculative decoding adds a random number of tokens per
  sequence per step, drawn in advance, so its path is read step by step from the decode set's
  arrays (`PrefixPath`, with a running sum); any monotone path works with the same interface.
* A **decode run** (`DecodeRun`) is the step time of a fixed batch as a function of the summed
  context. On each of a few segments of the context it is affine, t_j = a + b S_j, so a run of n
  steps along a path is a sum of a few linear pieces: `run_s` sums them in closed form and
  `steps_within` inverts it (how many steps fit in some elapsed time), which is what lets the
  engine advance many decode steps in one event.

Both step-time models (`roofline.RooflineStepModel`, `table.TableStepModel`) implement `StepModel`.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import NamedTuple, Protocol

import numpy as np


class Chunk(NamedTuple):
    """A prefill chunk: `new` tokens computed on top of `prefix` tokens already in KV."""

    prefix: int
    new: int
    samples: bool  # the chunk ends the prompt, so its last position is sampled


class DraftWork(NamedTuple):
    """Draft work of one iteration: `passes` sequential forward passes of a drafter over every
    decoding sequence, each pass proposing one token per sequence over the sequence's context.

    `layer_share` is the share of the priced model's transformer layers one pass runs: 1.0 when the
    drafter is a whole model priced by its own step model (a separate draft model), about 1 / layers
    when it is one extra layer of the target (an EAGLE head, a DeepSeek MTP module). Every pass also
    runs the LM head, which turns the drafter's hidden state into the proposed token."""

    passes: int
    layer_share: float = 1.0


class StepShape(NamedTuple):
    """The work of one iteration (see the module docstring). A NamedTuple: the engine builds one
    per iteration, and tuples are the cheapest immutable values to build."""

    decode_seqs: int = 0
    decode_ctx_sum: float = 0.0
    query_tokens_per_seq: int = 1
    chunks: tuple[Chunk, ...] = ()
    draft: DraftWork | None = None

    @property
    def decode_tokens(self) -> int:
        return self.decode_seqs * self.query_tokens_per_seq

    @property
    def prefill_tokens(self) -> int:
        return sum(ch.new for ch in self.chunks)

    @property
    def sequences(self) -> int:
        return self.decode_seqs + len(self.chunks)


def decode_shape(decode_seqs: int, decode_ctx_sum: float, chunks: Sequence[Chunk] = ()) -> StepShape:
    """A one-token-per-sequence decode step plus optional prefill chunks."""
    return StepShape(decode_seqs, decode_ctx_sum, 1, tuple(chunks))


class ContextPath(Protocol):
    """Summed KV length of a fixed batch at steps j = 0, 1, ... of a decode run (non-decreasing)."""

    def at(self, j: int) -> float: ...

    def total(self, lo: int, hi: int) -> float:
        """sum of at(j) for lo <= j < hi."""
        ...

    def first_step_at_least(self, ctx_sum: float, n: int) -> int:
        """Smallest j in [0, n] with at(j) >= ctx_sum (n if none)."""
        ...


class LinearPath(NamedTuple):
    """S_j = first + slope x j: every sequence gains `slope / batch` tokens per step."""

    first: float
    slope: float

    def at(self, j: int) -> float:
        return self.first + self.slope * j

    def total(self, lo: int, hi: int) -> float:
        return lin_sum(self.first, self.slope, lo, hi)

    def first_step_at_least(self, ctx_sum: float, n: int) -> int:
        if self.slope <= 0:
            return 0 if self.first >= ctx_sum else n
        return min(n, max(0, math.ceil((ctx_sum - self.first) / self.slope)))


class ArrayPath:
    """Summed contexts given step by step, `values[j]` = S_j, to evaluate step times on as arrays
    (speculative runs after the simulation, spec_runs.py). A path for `segments` must be
    non-decreasing; `step_times` works on any values.

    A run's step times along it are evaluated once, as arrays (`step_times`, several runs' together
    with `prefetch`), and cached."""

    __slots__ = ("values", "_prefix", "_times")

    def __init__(self, values: np.ndarray) -> None:
        self.values = values                                  # int64, one per step
        self._prefix: np.ndarray | None = None
        self._times: dict[int, np.ndarray] = {}               # by id of the run (runs are cached objects)

    def at(self, j: int) -> float:
        return float(self.values[j])

    def total(self, lo: int, hi: int) -> float:
        if hi <= lo:
            return 0.0
        if self._prefix is None:
            self._prefix = np.zeros(len(self.values) + 1, dtype=np.int64)
            np.cumsum(self.values, out=self._prefix[1:])
        return float(self._prefix[hi] - self._prefix[lo])

    def first_step_at_least(self, ctx_sum: float, n: int) -> int:
        return int(np.searchsorted(self.values[:n], ctx_sum, side="left"))

    def prefetch(self, *runs: DecodeRun) -> None:
        """Evaluate the step times of several runs at once: their two-line pieces (`coeff_row`,
        the roofline's form) in one set of array operations."""
        leaves = [leaf for run in runs for leaf in _leaves(run)
                  if id(leaf) not in self._times and getattr(leaf, "coeff_row", None) is not None]
        if not leaves:
            return
        c = np.array([leaf.coeff_row for leaf in leaves])  # type: ignore[attr-defined]  # rows (m0, m1, c0, c1, fixed)
        v = self.values.astype(float)
        times = np.maximum(c[:, 0:1] + c[:, 1:2] * v, c[:, 2:3] + c[:, 3:4] * v)
        times += c[:, 4:5]
        for leaf, t in zip(leaves, times, strict=True):
            self._times[id(leaf)] = t

    def step_times(self, run: DecodeRun) -> np.ndarray:
        """Every step's duration along this path (cached per run)."""
        t = self._times.get(id(run))
        if t is None:
            if isinstance(run, DraftedRun):
                t = self.step_times(run.target) + run.weight * self.step_times(run.draft)
            else:
                self.prefetch(run)
                t = self._times.get(id(run))
                if t is None:                   # no two-line form: its affine pieces, along the
                    t = _pieces_elementwise(run, self.values)    # values in order
            self._times[id(run)] = t
        return t


def _pieces_elementwise(run: DecodeRun, values: np.ndarray) -> np.ndarray:
    """Each value's step time from the run's affine pieces (which need a non-decreasing path: the
    values are sorted first and the times put back in their places)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    path = ArrayPath(ordered)
    t = np.empty(len(values))
    for lo, hi, a, b in run.segments(path, len(values)):
        t[lo:hi] = a + b * ordered[lo:hi]
    out = np.empty_like(t)
    out[order] = t
    return out


def _leaves(run: DecodeRun) -> tuple[DecodeRun, ...]:
    return (run.target, run.draft) if isinstance(run, DraftedRun) else (run,)


class PrefixPath:
    """A context path read from a per-step array that its owner keeps (speculative decoding's
    decode set): S_j = values[start + j] for steps j = 0 .. length - 1, non-decreasing. The steps
    are read once into a Python list with their running sum, so `at`, `total` and the crossing
    searches are list lookups and `bisect`; a run's pieces along it are found once and cached, so
    after that one O(steps) read (in C) a run's duration costs a few lookups. Valid until the owner's
    membership changes (the owner makes a new path for each run)."""

    __slots__ = ("values", "start", "length", "_list", "_prefix", "_pieces")

    def __init__(self, values: np.ndarray, start: int, length: int) -> None:
        self.values, self.start, self.length = values, start, length
        self._list: list[int] | None = None
        self._prefix: list[int] | None = None
        self._pieces: dict[int, list[Segment]] = {}

    def _steps(self) -> list[int]:
        if self._list is None:
            self._list = self.values[self.start:self.start + self.length].tolist()
        return self._list

    def __getitem__(self, j: int) -> float:                   # path[0]: the first step's context
        return float(self.values[self.start + j])

    def at(self, j: int) -> float:
        return float(self._steps()[j])

    def _running(self) -> list[int]:
        if self._prefix is None:
            self._prefix = [0, *accumulate(self._steps())]
        return self._prefix

    def total(self, lo: int, hi: int) -> float:
        if hi <= lo:
            return 0.0
        p = self._running()
        return float(p[hi] - p[lo])

    def first_step_at_least(self, ctx_sum: float, n: int) -> int:
        return bisect_left(self._steps(), ctx_sum, 0, min(n, self.length))

    def pieces(self, run: DecodeRun) -> list[Segment]:
        """The run's affine pieces over the whole path (cached per run)."""
        p = self._pieces.get(id(run))
        if p is None:
            p = self._pieces[id(run)] = run.segments(self, self.length)
        return p

    def run_s(self, run: DecodeRun, n_steps: int) -> float:
        """Seconds of the first n steps of `run`: its cached pieces, cut at n, with O(1) totals."""
        total = 0.0
        p = self._prefix if self._prefix is not None else self._running()
        pieces = self._pieces.get(id(run))
        if pieces is None:
            pieces = self.pieces(run)
        for lo, hi, a, b in pieces:
            if lo >= n_steps:
                break
            hi = min(hi, n_steps)
            total += a * (hi - lo) + b * float(p[hi] - p[lo])
        return total

    def estimate_steps(self, run: DecodeRun, n_max: int, elapsed_s: float) -> int:
        """Steps done by elapsed_s: the piece it falls in, then a bisection over the piece's
        cumulative time a m + b (sum of S over its first m steps), each an O(1) lookup."""
        done_s = 0.0
        p = self._running()
        for lo, hi, a, b in self.pieces(run):
            if lo >= n_max:
                break
            hi = min(hi, n_max)
            piece_s = a * (hi - lo) + b * float(p[hi] - p[lo])
            if done_s + piece_s <= elapsed_s:
                done_s += piece_s
                continue
            left = elapsed_s - done_s
            m_lo, m_hi = 0, hi - lo                 # time(m_lo) <= left < time(m_hi)
            while m_hi - m_lo > 1:
                mid = (m_lo + m_hi) // 2
                if a * mid + b * float(p[lo + mid] - p[lo]) <= left:
                    m_lo = mid
                else:
                    m_hi = mid
            return lo + m_lo
        return n_max


#: A piece of a decode run, (lo, hi, a, b): steps lo <= j < hi each take a + b x path.at(j)
#: seconds. A plain tuple: the engine builds one or two per decode run.
Segment = tuple[int, int, float, float]


class DecodeRun(Protocol):
    """Step time of a fixed batch of decoding sequences as a function of their summed context."""

    @property
    def batch(self) -> int: ...

    def step_s(self, ctx_sum: float) -> float: ...

    def segments(self, path: ContextPath, n_steps: int) -> list[Segment]:
        """The run's steps 0 <= j < n_steps split into pieces that are affine in path.at(j)."""
        ...

    def run_s(self, path: ContextPath, n_steps: int) -> float:
        """Total seconds of the first n_steps steps along `path`."""
        ...


class StepModel(Protocol):
    """Iteration time from batch shape: the roofline or a measured table."""

    def iteration_s(self, shape: StepShape) -> float: ...

    def decode_run(self, batch: int, query_tokens_per_seq: int = 1, draft: DraftWork | None = None) -> DecodeRun:
        """Coefficients of decode-only steps of `batch` sequences, with the iteration's draft work
        (cached per shape)."""
        ...

    def utilization_s(self, shape: StepShape) -> float:
        """Seconds of the iteration's binding resource at its large-kernel rate (for power)."""
        ...

    def decode_utilization(self, batch: int, query_tokens_per_seq: int = 1,
                           draft: DraftWork | None = None) -> DecodeRun:
        """`utilization_s` of decode steps of `batch` sequences (q tokens each, after the draft
        work if any), in the decode-run form."""
        ...

    def iteration_with_utilization_s(self, shape: StepShape) -> tuple[float, float]:
        """(`iteration_s`, `utilization_s`) of one iteration, its work priced once."""
        ...


class DraftedRun:
    """Decode steps with draft work: each step takes target(S) + weight x draft(S), with S the summed
    context of the batch. The sum of two piecewise-affine runs is piecewise affine on the union of
    their pieces, and its duration is the weighted sum of theirs, so it stays closed-form."""

    __slots__ = ("target", "draft", "weight", "affine")

    def __init__(self, target: DecodeRun, draft: DecodeRun, weight: float) -> None:
        self.target, self.draft, self.weight = target, draft, weight
        # Both parts piecewise affine in S with known breakpoints (the roofline's form): the sum's
        # pieces, found once.
        t, d = getattr(target, "affine", None), getattr(draft, "affine", None)
        self.affine: Affine | None = add_affine(t, d, weight) if t is not None and d is not None else None

    @property
    def batch(self) -> int:
        return self.target.batch

    def step_s(self, ctx_sum: float) -> float:
        return self.target.step_s(ctx_sum) + self.weight * self.draft.step_s(ctx_sum)

    def step_parts(self, ctx_sum: float) -> tuple[float, float]:
        """(the step's seconds, the seconds of its draft work): `step_s` and its draft part at once."""
        draft_s = self.weight * self.draft.step_s(ctx_sum)
        return self.target.step_s(ctx_sum) + draft_s, draft_s

    def segments(self, path: ContextPath, n_steps: int) -> list[Segment]:
        if self.affine is not None and not isinstance(path, LinearPath):
            return affine_segments(self.affine, path, n_steps)
        return add_segments(self.target.segments(path, n_steps), self.draft.segments(path, n_steps), self.weight)

    def run_s(self, path: ContextPath, n_steps: int) -> float:
        if isinstance(path, PrefixPath):
            return path.run_s(self, n_steps)
        return self.target.run_s(path, n_steps) + self.weight * self.draft.run_s(path, n_steps)


#: A step time piecewise affine in the summed context S: breakpoints x_1 < ... < x_m and m + 1
#: pieces (a, b), piece i holding for x_i <= S < x_(i+1) (x_0 = -inf, x_(m+1) = inf).
Affine = tuple[tuple[float, ...], tuple[tuple[float, float], ...]]


def add_affine(first: Affine, second: Affine, weight: float) -> Affine:
    """first(S) + weight x second(S), on the union of their breakpoints."""
    xs = tuple(sorted(set(first[0]) | set(second[0])))
    pieces = []
    for i in range(len(xs) + 1):
        # A point inside piece i of the union picks the piece of each part that holds there.
        a1, b1 = first[1][_piece_at(first[0], xs, i)]
        a2, b2 = second[1][_piece_at(second[0], xs, i)]
        pieces.append((a1 + weight * a2, b1 + weight * b2))
    return xs, tuple(pieces)


def _piece_at(breaks: tuple[float, ...], union: tuple[float, ...], i: int) -> int:
    """Which piece of a function with `breaks` holds on piece i of the `union` of breakpoints."""
    if i == 0:
        return 0
    return bisect_right(breaks, union[i - 1])


def affine_segments(affine: Affine, path: ContextPath, n_steps: int) -> list[Segment]:
    """The steps 0 <= j < n_steps of a non-decreasing path, cut where S_j crosses a breakpoint."""
    xs, pieces = affine
    if n_steps <= 0:
        return []
    # Usually the whole run lies in one piece (the context grows little over a run): two lookups.
    first = bisect_right(xs, path.at(0))
    if first == bisect_right(xs, path.at(n_steps - 1)):
        a, b = pieces[first]
        return [(0, n_steps, a, b)]
    out: list[Segment] = []
    lo = 0
    for x, (a, b) in zip(xs, pieces, strict=False):
        hi = path.first_step_at_least(x, n_steps)
        if hi > lo:
            out.append((lo, hi, a, b))
            lo = hi
    if lo < n_steps:
        a, b = pieces[-1]
        out.append((lo, n_steps, a, b))
    return out


def lin_sum(a: float, b: float, lo: int, hi: int) -> float:
    """sum_{j=lo}^{hi-1} (a + b j)."""
    n = hi - lo
    if n <= 0:
        return 0.0
    return n * a + b * (lo + hi - 1) * n / 2.0


def add_segments(first: Sequence[Segment], second: Sequence[Segment], weight: float = 1.0) -> list[Segment]:
    """The pieces of t_j = first(j) + weight x second(j), for two runs split over the same steps:
    the pieces start wherever either run's pieces start."""
    out: list[Segment] = []
    i = k = 0
    while i < len(first) and k < len(second):
        lo1, hi1, a1, b1 = first[i]
        lo2, hi2, a2, b2 = second[k]
        lo, hi = max(lo1, lo2), min(hi1, hi2)
        if lo < hi:
            out.append((lo, hi, a1 + weight * a2, b1 + weight * b2))
        if hi1 <= hi2:
            i += 1
        if hi2 <= hi1:
            k += 1
    return out


def segments_run_s(segments: Sequence[Segment], path: ContextPath) -> float:
    """Seconds of a run given its affine pieces."""
    return sum(a * (hi - lo) + b * path.total(lo, hi) for lo, hi, a, b in segments)


def pieces_run_s(run: DecodeRun, path: ContextPath, n_steps: int) -> float:
    """Seconds of n steps of a run along a path without a closed form of its own: a prefix path
    sums the run's cached pieces, any other its segments."""
    if isinstance(path, PrefixPath):
        return path.run_s(run, n_steps)
    return segments_run_s(run.segments(path, n_steps), path)


def steps_within(run: DecodeRun, path: ContextPath, n_max: int, elapsed_s: float) -> int:
    """Largest n <= n_max with run.run_s(path, n) <= elapsed_s."""
    return steps_bracket(run, path, n_max, elapsed_s)[0]


def steps_bracket(run: DecodeRun, path: ContextPath, n_max: int, elapsed_s: float) -> tuple[int, float, float]:
    """(k, T(k), T(k + 1)): the largest k <= n_max whose cumulative time T(k) = run.run_s(path, k)
    is <= elapsed_s, with the times at it and one step later (inf when k = n_max).

    On a linear path each piece's cumulative time is quadratic in n, so the answer is a root; on a
    prefix path a bisection over O(1) cumulative times; either is corrected by a step or two
    against run_s itself (so the answer is exactly what bisection over run_s would give); other
    paths bisect."""
    if n_max <= 0:
        return 0, 0.0, math.inf
    if isinstance(path, LinearPath | PrefixPath):
        guess = _linear_estimate(run.segments(path, n_max), path, elapsed_s) if isinstance(path, LinearPath) \
            else path.estimate_steps(run, n_max, elapsed_s)
        k = min(n_max, max(0, guess))
        t_k = run.run_s(path, k)
        while k > 0 and t_k > elapsed_s:
            k -= 1
            t_k = run.run_s(path, k)
    else:
        lo, hi = 0, n_max
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if run.run_s(path, mid) <= elapsed_s:
                lo = mid
            else:
                hi = mid - 1
        k, t_k = lo, run.run_s(path, lo)
    t_next = run.run_s(path, k + 1) if k < n_max else math.inf
    while t_next <= elapsed_s:
        k, t_k = k + 1, t_next
        t_next = run.run_s(path, k + 1) if k < n_max else math.inf
    return k, t_k, t_next


def _linear_estimate(segments: Sequence[Segment], path: LinearPath, elapsed_s: float) -> int:
    """Steps done by elapsed_s on a linear path, from the quadratic cumulative time of the piece
    the time falls in (may be off by one through rounding)."""
    done_s = 0.0
    k = 0
    for lo, hi, a, b in segments:
        alpha = a + b * path.first          # step j of this piece takes alpha + beta j
        beta = b * path.slope
        piece_s = lin_sum(alpha, beta, lo, hi)
        if done_s + piece_s <= elapsed_s:
            done_s += piece_s
            k = hi
            continue
        left = elapsed_s - done_s
        first = alpha + beta * lo           # duration of the piece's first step
        if beta == 0.0:
            m = left / first if first > 0 else float(hi - lo)
        else:
            # beta/2 m^2 + (first - beta/2) m - left = 0
            c1 = first - beta / 2.0
            disc = c1 * c1 + 2.0 * beta * left
            m = (-c1 + math.sqrt(max(0.0, disc))) / beta
        return lo + int(math.floor(max(0.0, m)))
    return k
