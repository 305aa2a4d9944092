"""Speculative decode runs: their KV block-seconds, utilization-seconds and draft seconds,
evaluated after the simulation in one vectorized pass per batch size.

During step s (1..n) of a speculative decode run the replica holds U0 + A(s) KV blocks, where U0
is what it held before the run and A(s) the blocks its first s steps allocated (drafts' slots
included; the decode set's blocks held at that global step, less those it held before the run),
and the step lasts t(S_s) = verify(S_s) + k draft(S_s) along
the run's context path S (spec_decode_set.py). So the run's

    KV block-seconds      = sum_s (U0 + A(s)) t(S_s),
    utilization-seconds   = sum_s u(S_s)         (u: the same step at the large-kernel rates, power.py),
    draft seconds         = sum_s k draft(S_s),

the per-step sums a simulation advancing one step per event accumulates. The engine logs, per run,
the record it wrote, U0 less the decode set's blocks then, its batch, its first global step and
its steps; the decode set keeps every global step's summed context and blocks held
(spec_decode_set.py). The step times are evaluated
here, all the steps of one batch size at once (the roofline's two-line form, `coeff_row`), instead
of with Python arithmetic inside the event loop.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from sim.perf.shape import ArrayPath, DecodeRun, DraftedRun

FIELDS = ("record", "held_offset", "batch", "first_step", "steps")
_ROW = struct.Struct(f"{len(FIELDS)}d")


class SpecRunLog:
    """Per speculative decode run: record index, blocks the replica holds beyond the decode set's
    (so that during global step G it holds that plus the set's H[G]), batch, and its first global
    step and step count; one packed row of doubles per run (all integers, exact)."""

    __slots__ = ("data", "add_row", "_pack")

    def __init__(self) -> None:
        self.data = bytearray()
        self.add_row = self.data.extend
        self._pack = _ROW.pack

    def add(self, record: int, held_offset: int, batch: int, first_step: int, steps: int) -> None:
        self.add_row(self._pack(record, held_offset, batch, first_step, steps))

    def __len__(self) -> int:
        return len(self.data) // _ROW.size

    def clear(self) -> None:
        del self.data[:]

    def columns(self) -> tuple[np.ndarray, ...]:
        t = np.frombuffer(bytes(self.data), dtype=float).reshape(-1, len(FIELDS)).astype(np.int64)
        return tuple(t.T)


Integrals = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def concatenated(parts: list[Integrals]) -> Integrals:
    """Several `integrals` results as one (empty arrays if there are none)."""
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # type: ignore[return-value]


def integrals(log: SpecRunLog, ctx: np.ndarray, held_by_step: np.ndarray, run_for_batch: Callable[[int], DecodeRun],
              utilization_for_batch: Callable[[int], DecodeRun],
              origin: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(record indices, KV block-seconds, utilization-seconds, draft seconds) of every logged run,
    from the decode set's summed context `ctx` and blocks held `held_by_step` by global step
    (column 0 holding global step `origin`)."""
    n_runs = len(log)
    block_s, util_s, draft_s = np.zeros(n_runs), np.zeros(n_runs), np.zeros(n_runs)
    records, offset, batches, first, lengths = log.columns()
    for b in np.unique(batches):
        idx = np.flatnonzero((batches == b) & (lengths > 0))
        if not len(idx):
            continue
        n = lengths[idx]
        starts = np.concatenate([[0], np.cumsum(n)[:-1]])
        # Global step of every step of these runs, run after run.
        steps = np.repeat(first[idx] - origin - starts, n) + np.arange(int(n.sum()))
        blocks = np.repeat(offset[idx], n) + held_by_step[steps]
        run, util = run_for_batch(int(b)), utilization_for_batch(int(b))
        path = ArrayPath(ctx[steps])
        path.prefetch(run, util)
        times, utilization = path.step_times(run), path.step_times(util)
        drafting = run.weight * path.step_times(run.draft) if isinstance(run, DraftedRun) else np.zeros_like(times)
        block_s[idx] = np.add.reduceat(blocks * times, starts)
        util_s[idx] = np.add.reduceat(utilization, starts)
        draft_s[idx] = np.add.reduceat(drafting, starts)
    return records, block_s, util_s, draft_s
