"""KV block-seconds of decode runs, evaluated exactly after the simulation in one vectorized pass.

During step s (1..n) of a decode run the replica holds U0 + cum(s) KV blocks, where U0 is what it
held before the run and cum(s) the blocks the first s steps allocated. A sequence of the decode set
takes a new block every `block` steps, so cum(s) = (s // block) B + R[s % block], with B the batch
and R[r] the allocations in the first r steps of a period (decode_set.py). Step s lasts
alpha + beta s on each affine piece of the step-time model (perf.shape.Segment along the run's
linear context path), so the run's block-seconds are

    U0 T_n + sum over pieces of  alpha (G0(hi) - G0(lo)) + beta (G1(hi) - G1(lo)),
    G0(m) = sum_{s<=m} cum(s),   G1(m) = sum_{s<=m} s cum(s),

and with m = q block + rem both sums have closed forms in q, rem and the prefix sums of R over one
period (integers, so exact). This equals the per-step sum of (blocks held) x (step time) that a
simulation advancing one step per event accumulates.

The engine logs, per decode run, only the numbers the formula needs (`DecodeRunLog`: one packed
row of doubles per run, cheap to append and with no objects for the garbage collector to scan; the
allocation pattern is stored once per distinct pattern, which changes only when the decode set's
membership does), and the work is O(runs x block) numpy operations at the end instead of Python
arithmetic inside the event loop.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

import numpy as np

from sim.perf.roofline import DecodeCoeffs
from sim.perf.shape import DecodeRun, LinearPath, StepModel

#: Past this magnitude the sums are evaluated with Python integers instead of int64.
_INT64_SAFE = 2**62
#: Numbers logged per decode run; `pattern` indexes DecodeRunLog.patterns.
FIELDS = ("record", "held_before", "steps", "run_s", "batch", "path_first", "path_slope", "pattern", "phase")
_ROW = struct.Struct(f"{len(FIELDS)}d")


class DecodeRunLog:
    """Per decode run: the index of its IterRecord, the blocks held before it (U0), its steps n and
    seconds T_n, its batch, the first value and slope of its linear context path, and its allocation
    pattern: the decode set's histogram of members by base mod block and the phase s0, so that step
    r + 1 of the run allocates histogram[(s0 - r) mod block] blocks (DecodeSet.allocation_pattern).
    All integers are exact in doubles."""

    __slots__ = ("block_tokens", "data", "patterns", "_last_pattern", "_extend", "_pack")

    def __init__(self, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.data = bytearray()
        self.patterns: list[tuple[int, ...]] = []
        self._last_pattern: tuple[int, ...] | None = None
        # Packing with struct is several times cheaper than extending an array('d') from a tuple.
        self._extend = self.data.extend
        self._pack = _ROW.pack

    def add(self, record: int, held_blocks: int, steps: int, run_s: float, batch: int,
            path_first: float, path_slope: float, pattern: tuple[tuple[int, ...], int]) -> None:
        hist, phase = pattern
        # The decode set hands back the same tuple until its membership changes: compare identity.
        if hist is not self._last_pattern:
            self._last_pattern = hist
            self.patterns.append(hist)
        self._extend(self._pack(record, held_blocks, steps, run_s, batch, path_first, path_slope,
                                len(self.patterns) - 1, phase))

    def __len__(self) -> int:
        return len(self.data) // _ROW.size

    def runs(self) -> np.ndarray:
        """One row per run, the FIELDS only (what integrals that ignore KV allocation need)."""
        return np.frombuffer(bytes(self.data), dtype=float).reshape(-1, len(FIELDS))

    def tables(self, max_cells: int = 1 << 22) -> Iterator[np.ndarray]:
        """The runs in row blocks of at most `max_cells` numbers (so the evaluation's memory stays
        bounded however long the run and however large the block): one row per run, the FIELDS,
        then `block_tokens` allocation counts."""
        bt = self.block_tokens
        rows = self.runs()
        hist = np.fromiter(chain.from_iterable(self.patterns), dtype=np.int64,
                           count=len(self.patterns) * bt).reshape(-1, bt)
        step = max(1, max_cells // (len(FIELDS) + bt))
        for lo in range(0, len(rows), step):
            part = rows[lo:lo + step]
            pattern, phase = part[:, -2].astype(np.int64), part[:, -1].astype(np.int64)
            ahead = (phase[:, None] - np.arange(bt)) % bt      # allocations_ahead()[r] = hist[(s0 - r) % bt]
            yield np.hstack([part, hist[pattern[:, None], ahead]])


def block_seconds(log: DecodeRunLog, step_model: StepModel) -> tuple[np.ndarray, np.ndarray]:
    """(record indices, block-seconds) of every logged run, with step times from `step_model`."""
    parts = [_block_seconds(t, log.block_tokens, step_model) for t in log.tables()]
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _block_seconds(t: np.ndarray, bt: int, step_model: StepModel) -> tuple[np.ndarray, np.ndarray]:
    nf = len(FIELDS)
    record, held, run_s, first, slope = t[:, 0].astype(np.int64), t[:, 1], t[:, 3], t[:, 5], t[:, 6]
    alloc = t[:, nf:].astype(np.int64)
    batch = alloc.sum(axis=1)                                # every member allocates once a period
    R = np.zeros_like(alloc)                                 # R[r], r = 0..bt-1
    R[:, 1:] = np.cumsum(alloc[:, :-1], axis=1)
    p0 = np.cumsum(R, axis=1)                                # prefix sums of R[r] and r R[r]
    p1 = np.cumsum(R * np.arange(bt), axis=1)
    consts = (bt, batch, p0, p1)
    total = held * run_s
    for idx, lo, hi, a, b in run_pieces(t, step_model.decode_run):
        total[idx] += _piece(idx, lo, hi, a, b, first[idx], slope[idx], consts)
    return record, total


Pieces = Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def run_pieces(t: np.ndarray, run_for_batch: Callable[[int], DecodeRun]) -> Pieces:
    """The affine pieces of the runs in `t` (rows starting with FIELDS), as (run indices, lo, hi,
    a, b): steps lo <= j < hi of each of those runs take a + b S_j, with the step-time form
    `run_for_batch(batch)` gives (the step time, or the utilization of power.py). Roofline runs are
    split in one vectorized pass; other step models give their own pieces run by run."""
    steps, batch_col = t[:, 2].astype(np.int64), t[:, 4].astype(np.int64)
    first, slope = t[:, 5], t[:, 6]
    batches, which = np.unique(batch_col, return_inverse=True)
    runs = [run_for_batch(int(b)) for b in batches]
    linear = np.array([isinstance(r, DecodeCoeffs) for r in runs], dtype=bool)[which]
    if linear.any():
        idx = np.flatnonzero(linear)
        coeffs = np.array([(r.m0, r.m1, r.c0, r.c1, r.fixed_s) if isinstance(r, DecodeCoeffs) else (0.0,) * 5
                           for r in runs])
        for lo, hi, a, b in roofline_pieces(coeffs[which[idx]], first[idx], slope[idx], steps[idx]):
            yield idx, lo, hi, a, b
    for i in np.flatnonzero(~linear):
        path = LinearPath(float(first[i]), float(slope[i]))
        for lo_j, hi_j, a_j, b_j in runs[which[i]].segments(path, int(steps[i])):
            yield np.array([i]), np.array([lo_j]), np.array([hi_j]), np.array([a_j]), np.array([b_j])


def roofline_pieces(c: np.ndarray, first: np.ndarray, slope: np.ndarray,
                     steps: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The two pieces of max(m0 + m1 S, c0 + c1 S) + fixed along each run, c = rows of
    (m0, m1, c0, c1, fixed) (as DecodeCoeffs.segments: the flatter line left of the crossing, the
    steeper right of it; a piece may be empty)."""
    m0, m1, c0, c1, fixed = c.T
    mem_flat = m1 < c1
    flat0, flat1 = np.where(mem_flat, m0, c0), np.where(mem_flat, m1, c1)
    steep0, steep1 = np.where(mem_flat, c0, m0), np.where(mem_flat, c1, m1)
    parallel = m1 == c1
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = (steep0 - flat0) / (flat1 - steep1)
        k = np.clip(np.ceil((cross - first) / slope), 0, steps)
    # Parallel lines: one piece along the higher line.
    hi0 = np.where(m0 >= c0, m0, c0)
    k = np.where(parallel, steps, k).astype(np.int64)
    flat0, flat1 = np.where(parallel, hi0, flat0), np.where(parallel, m1, flat1)
    zero = np.zeros_like(steps)
    return [(zero, k, flat0 + fixed, flat1), (k, steps, steep0 + fixed, steep1)]


def _piece(idx: np.ndarray, lo: np.ndarray, hi: np.ndarray, a: np.ndarray, b: np.ndarray, first: np.ndarray,
           slope: np.ndarray, consts: tuple) -> np.ndarray:
    """alpha (G0(hi) - G0(lo)) + beta (G1(hi) - G1(lo)) for steps j in [lo, hi) lasting a + b S_j."""
    beta = b * slope
    alpha = a + b * first - beta                  # step s = j + 1 lasts alpha + beta s
    g0_hi, g1_hi = _growth_sums(idx, hi, consts)
    g0_lo, g1_lo = _growth_sums(idx, lo, consts)
    return alpha * (g0_hi - g0_lo) + beta * (g1_hi - g1_lo)


def _growth_sums(idx: np.ndarray, m: np.ndarray, consts: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(sum of cum(s), sum of s cum(s)) over s = 0..m for the runs `idx`, as floats of exact integers."""
    bt, batch, p0, p1 = consts
    b = batch[idx]
    q, rem = np.divmod(m, bt)
    pr0, pr1 = p0[idx, rem], p1[idx, rem]
    per0, per1 = p0[idx, bt - 1], p1[idx, bt - 1]
    big = (m.astype(float) ** 3 * np.maximum(b, 1)) > _INT64_SAFE
    if big.any():                                 # rare: evaluate those runs with Python integers
        obj = [np.asarray(x, dtype=object) for x in (q, rem, b, pr0, pr1, per0, per1)]
        g0o, g1o = _closed_forms(bt, *obj)
        g0i, g1i = _closed_forms(bt, *(np.where(big, 0, x) for x in (q, rem, b, pr0, pr1, per0, per1)))
        return (np.where(big, g0o.astype(float), g0i.astype(float)),
                np.where(big, g1o.astype(float), g1i.astype(float)))
    g0, g1 = _closed_forms(bt, q, rem, b, pr0, pr1, per0, per1)
    return g0.astype(float), g1.astype(float)


def _closed_forms(bt: int, q: Any, rem: Any, b: Any, pr0: Any, pr1: Any, per0: Any, per1: Any) -> tuple[Any, Any]:
    """G0 and G1 at m = q bt + rem: q whole periods (s = p bt + r, cum = p B + R[r]) plus the partial
    period r = 0..rem."""
    s1 = q * (q - 1) // 2                               # sum of p over whole periods
    s2 = (q - 1) * q * (2 * q - 1) // 6                 # sum of p^2
    g0 = bt * b * s1 + q * per0 + (rem + 1) * q * b + pr0
    g1 = (bt * bt * b * s2 + (bt * per0 + b * (bt * (bt - 1) // 2)) * s1 + q * per1
          + (rem + 1) * q * q * bt * b + q * bt * pr0 + q * b * (rem * (rem + 1) // 2) + pr1)
    return g0, g1
