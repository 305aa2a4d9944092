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

from enum import IntEnum
from typing import NamedTuple


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
    swap_s: float             # seconds of KV transfer to or from host memory included in the span
    kv_blocks_peak: int       # KV blocks held during the event's last iteration (its maximum)
    kv_block_s: float         # KV blocks held, integrated over the span (block-seconds)
    running: int              # running set after the event
    waiting: int              # waiting queue after the event


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


class LevelLog:
    """Level changes of every replica, in time order (appended by the engine as they happen)."""

    __slots__ = ("rows", "_last")

    def __init__(self) -> None:
        self.rows: list[LevelRecord] = []
        self._last: dict[int, tuple[int, int]] = {}

    def record(self, t_s: float, replica: int, waiting: int, running: int) -> None:
        """Note the levels of `replica` from t_s on (no row when nothing changed)."""
        if self._last.get(replica) != (waiting, running):
            self._last[replica] = (waiting, running)
            self.rows.append(LevelRecord(t_s, replica, waiting, running))
