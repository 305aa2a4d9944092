"""What a run records, as typed rows: the engine writes them, metrics reads them.

* `IterRecord`: one engine event of one replica: a single iteration, or a run of `steps`
  decode-only iterations with an unchanged batch (tokens and levels as in docs/metrics.md). A
  token counts at the instant it is sampled, the event's end: decode runs never span a boundary
  of the measurement window (the engine cuts them there), so every event's tokens lie on one side
  of it, and only single iterations (constant levels) straddle one.
* `LevelRecord`: the waiting-queue length and the running-set size of one replica from `t_s` on,
  written whenever either changes (a request is queued, admitted, preempted or finished: O(requests)
  records, so the cost of a run still grows with requests, not tokens). Levels are step functions
  of time, so their time averages are exact integrals, the same whether decode steps ran one event
  each or many at once.
* `LifecycleRecord`: when a replica was provisioned, ready, draining and gone (all replicas are
  provisioned for the whole run today; autoscaling will vary them). Cost and per-replica averages
  use provisioned replica-seconds from these.
* `Status`: where a request ended.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, NamedTuple, get_type_hints

import numpy as np


class Status(IntEnum):
    WAITING = 0
    RUNNING = 1
    DONE = 2
    REJECTED = 3


#: Status -> the `status` column of the requests table.
STATUS_NAMES = {Status.DONE: "completed", Status.REJECTED: "rejected", Status.WAITING: "in_flight",
                Status.RUNNING: "in_flight"}


class IterRecord(NamedTuple):
    replica: int
    t_start_s: float
    t_end_s: float
    steps: int                # iterations in the event (0: a swap transfer alone)
    batch_seqs: int           # sequences in each iteration (constant within an event)
    prompt_tokens: int        # prompt tokens processed for the first time (at t_end_s)
    recompute_tokens: int     # prefill redone after a preemption
    output_tokens: int        # tokens sampled
    swap_s: float             # seconds of KV transfer (swaps, stalled prefix loads) included in the span
    kv_blocks_peak: int       # KV blocks held during the event's last iteration (its maximum)
    kv_block_s: float         # KV blocks held, integrated over the span (block-seconds)
    running: int              # running set after the event
    waiting: int              # waiting queue after the event
    util_s: float             # seconds of the binding resource at its large-kernel rate (power.py)
    spec_seq_steps: int       # speculative decoding: sequences x steps that verified drafts
    proposed_tokens: int      # speculative decoding: draft tokens proposed
    accepted_tokens: int      # speculative decoding: draft tokens accepted (sampled tokens beyond one per step)
    draft_s: float            # speculative decoding: seconds of draft work included in the span
    cached_tokens: int        # prompt tokens taken from a prefix cache (HBM or loaded), first admissions


class LevelRecord(NamedTuple):
    t_s: float
    replica: int
    waiting: int
    running: int


class LifecycleRecord(NamedTuple):
    replica: int
    pool: str
    gpus: int
    t_provisioned_s: float
    t_ready_s: float
    t_drain_s: float          # inf: never drained
    t_gone_s: float           # inf: provisioned until the end of the run


class PackedLog:
    """Rows of one NamedTuple type of numbers, packed as doubles into one buffer (integers below
    2**53 are exact in a double). A run writes a few rows per request: packed, they take a third of
    the memory of tuples, give the garbage collector nothing to scan, and become columns at once.

    Hot paths append with `log.extend(log.pack(*fields))` (two C calls); `add` does the same."""

    __slots__ = ("row_type", "data", "pack", "extend", "_width", "_is_int")

    def __init__(self, row_type: type[tuple]) -> None:
        self.row_type = row_type
        hints = get_type_hints(row_type)
        self._is_int = {name: hints[name] is int for name in row_type._fields}  # type: ignore[attr-defined]
        self._width = len(self._is_int)
        self.data = bytearray()
        self.pack = struct.Struct(f"{self._width}d").pack
        self.extend = self.data.extend

    def add(self, *fields: float) -> None:
        self.extend(self.pack(*fields))

    def __len__(self) -> int:
        return len(self.data) // (8 * self._width)

    def table(self) -> np.ndarray:
        """The log as an (n, fields) array of doubles."""
        return np.frombuffer(bytes(self.data), dtype=float).reshape(-1, self._width)

    def columns(self) -> dict[str, np.ndarray]:
        """One array per field: int64 for the row type's `int` fields, float otherwise."""
        t = self.table()
        return {name: t[:, i].astype(np.int64) if is_int else t[:, i].copy()
                for i, (name, is_int) in enumerate(self._is_int.items())}

    def rows(self) -> list:
        """The log as row_type tuples (for inspection; metrics read `columns()`)."""
        casts = [int if is_int else float for is_int in self._is_int.values()]
        make: Any = self.row_type
        return [make(*(c(v) for c, v in zip(casts, row, strict=True))) for row in self.table().tolist()]


class IterLog(PackedLog):
    """Every replica's IterRecords, in the order the events end."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(IterRecord)


class LevelLog(PackedLog):
    """Level changes of every replica, in time order: one LevelRecord per change (each replica's
    scheduler skips rows that repeat its last one)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(LevelRecord)
