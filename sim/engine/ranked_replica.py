"""A replica of attention ranks that share expert layers (attention data parallelism, "DEP"), as a
SimPy process.

Each of the d ranks is a batch queue of its own, as in SGLang's and TensorRT-LLM's DP attention:
its own scheduler (scheduler.py: admission, chunked prefill, preemption) over its own KV cache,
with the scenario's batching limits per rank. A request goes to the rank with the fewest
outstanding requests among those whose waiting queue has room (ties to the lowest index). The ranks
step together: every iteration, each rank plans its own work (an idle rank plans an empty batch and
still runs the expert layers for the others), and the iteration lasts what
`perf.ranks.RankedRoofline` prices for all ranks' batch shapes together (the slowest rank, the
shared experts, the all-to-all), plus the longest KV swap.

One event per iteration: a decode run is not advanced as one event here (at rack scale some rank
admits or finishes a request almost every step), so a DEP replica simulates more slowly than a
tensor-parallel one. With speculative decoding every rank drafts and verifies its own sequences
(each with its own draws of accepted lengths, as on a plain replica) and the iteration starts with
the draft passes, priced for all ranks together (`RankedRoofline.draft_pass_s`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy

from sim.cache_aware import choose, least_loaded
from sim.engine.kv_cache import KvCache
from sim.engine.request import Request
from sim.engine.scheduler import BatchLimits, BatchScheduler, IterationPlan
from sim.engine.spec_decode_set import SPEC_HISTORY_STEPS, SpecDecodeSet
from sim.metrics.records import IterLog, LevelLog
from sim.perf.ranks import RankedRoofline
from sim.perf.shape import StepShape
from sim.speculation import Speculation

_make = tuple.__new__


def cache_aware_rank(ranks: list[BatchScheduler], r: Request) -> BatchScheduler:
    """The rank the cache-aware router's rule picks (sim/cache_aware.py), as it picks a replica."""
    tiers = ranks[0].prefix
    chain = r.hash_ids
    loads = [s.outstanding for s in ranks]
    if tiers is None or not chain:
        return ranks[least_loaded(loads)]
    usable = tiers.usable_chunks(chain, r.input_tokens)
    hits = [s.prefix.hbm.head_hits(chain, usable) if s.prefix is not None else 0 for s in ranks]
    return ranks[choose(hits, loads, tiers.chunk_tokens, r.input_tokens)]


class RankedReplica:
    """d attention ranks stepping together (see the module docstring)."""

    def __init__(self, env: simpy.Environment, idx: int, pricing: RankedRoofline, kvs: list[KvCache],
                 limits: BatchLimits, *, on_finish: Callable[[Request], None], records: IterLog,
                 levels: LevelLog, speculation: Speculation | None = None) -> None:
        self.env, self.idx, self.pricing = env, idx, pricing
        self.kvs = kvs
        # Each rank logs its levels privately; the replica logs the ranks' totals.
        sampler = speculation.sampler if speculation else None
        self.ranks = [BatchScheduler(kv, limits, LevelLog(), idx, sampler) for kv in kvs]
        self._spec = speculation is not None
        self._q = speculation.k + 1 if speculation else 1
        self._draft = speculation.draft if speculation else None
        self.levels = levels
        self._log_level, self._pack_level = levels.extend, levels.pack
        self._noted = (0, 0)
        # the ranks' queues and running sets (never replaced), summed on every change of level
        self._waitings = [s.waiting for s in self.ranks]
        self._runnings = [s.running for s in self.ranks]
        self.on_finish = on_finish
        self.records = records
        self._record, self._pack_record = records.extend, records.pack
        self._wakeup: simpy.Event | None = None
        #: With the cache-aware router, a request goes to the rank holding most of its prompt's
        #: head (cluster.py), as the router picks the replica.
        self.rank_by_cache = False
        self.proc = env.process(self._loop())

    # ---- what the cluster reads -----------------------------------------------------------------
    def schedulers(self) -> list[BatchScheduler]:
        return self.ranks

    @property
    def outstanding(self) -> int:
        return sum(s.outstanding for s in self.ranks)

    @property
    def kv_load_tokens(self) -> int:
        return sum(kv.used_blocks * kv.block_tokens + s.waiting_tokens for kv, s in zip(self.kvs, self.ranks, strict=True))

    # ---- intake -----------------------------------------------------------------------------------
    def submit(self, r: Request) -> bool:
        """Queue a routed request at the rank with the fewest outstanding requests among those whose
        waiting queue has room (the bound is per rank), or reject it."""
        r.replica = self.idx
        limit = self.ranks[0].limits.max_waiting
        with_room = [s for s in self.ranks if limit is None or len(s.waiting) < limit] or self.ranks
        if self.rank_by_cache:
            sched = cache_aware_rank(with_room, r)
        else:
            sched = min(with_room, key=lambda s: s.outstanding)     # the first of the least loaded
        if not sched.intake(r, self.env.now):
            self.on_finish(r)
            return False
        self._note_levels()
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()
        return True

    def _note_levels(self) -> None:
        waiting = sum(map(len, self._waitings))
        running = sum(map(len, self._runnings))
        if (waiting, running) != self._noted:
            self._noted = (waiting, running)
            self._log_level(self._pack_level(self.env.now, self.idx, waiting, running))

    # ---- the SimPy process ------------------------------------------------------------------------
    def _loop(self) -> Generator[simpy.Event, Any, None]:
        env, ranks = self.env, self.ranks
        while True:
            if not any(s.running or s.waiting for s in ranks):
                self._wakeup = env.event()
                yield self._wakeup
                self._wakeup = None
                continue
            plans = [s.schedule(env.now) for s in ranks]
            if any(s.loading for s in ranks) and all(p.computes_nothing for p in plans):
                # nothing to compute until a prefix load ends or a request arrives
                self._note_levels()
                self._wakeup = env.event()
                ready_s = min(s.next_ready_s() for s in ranks)
                yield self._wakeup | env.timeout(max(0.0, ready_s - env.now))
                self._wakeup = None
                continue
            swap_s = self._free_stuck_ranks(plans)
            self._note_levels()                  # admissions and preemptions change the levels now
            t0, held = env.now, sum(kv.used_blocks for kv in self.kvs)
            if all(p.idle for p in plans):
                if swap_s:
                    yield env.timeout(swap_s)
                    self._record(self._pack_record(self.idx, t0, env.now, 0, 0, 0, 0, 0, swap_s, held, held * swap_s,
                                                   self._noted[1], self._noted[0], 0.0, 0, 0, 0, 0.0, 0))
                continue
            shapes = [self._shape(s, p) for s, p in zip(ranks, plans, strict=True)]
            b = self.pricing.breakdown(shapes)
            swap_s = max(swap_s, *(p.swap_s + p.load_wait_s for p in plans))
            yield env.timeout(b.step_s + swap_s)
            self._end_iteration(plans, shapes, t0, held, b.util_s, swap_s, b.draft_s)

    def _free_stuck_ranks(self, plans: list[IterationPlan]) -> float:
        """A rank whose partial prefills hold all its KV and none can grow frees its newest one
        (as the plain replica does); returns the longest swap-out."""
        swap_s = 0.0
        for s, p in zip(self.ranks, plans, strict=True):
            if p.idle and s.waiting and not s.running:
                raise RuntimeError(f"replica {self.idx}: waiting request cannot be admitted into an empty rank")
            if p.idle and s.running and not s.loading:
                swap_s = max(swap_s, p.swap_s + s.preempt_last())
        return swap_s

    def _shape(self, s: BatchScheduler, plan: IterationPlan) -> StepShape:
        chunks = plan.chunk_shapes()
        if plan.decode:
            ds = s.decode_set
            return _make(StepShape, (ds.size, ds.next_ctx_sum(), self._q, chunks, self._draft))
        return _make(StepShape, (0, 0, 1, chunks, None))

    def _end_iteration(self, plans: list[IterationPlan], shapes: list[StepShape], t0: float, held: int,
                       util_s: float, swap_s: float, draft_s: float) -> None:
        now = self.env.now
        prompt = recompute = sampled = cached = 0
        spec_seqs = accepted = proposed = 0
        for s, p in zip(self.ranks, plans, strict=True):
            ds = s.decode_set
            decoding = ds.size if (self._spec and p.decode) else 0
            if decoding:
                # each verification samples one token of the target's own; the rest are accepted drafts
                accepted += ds.tokens_sampled(1) - decoding
            done = s.finish_iteration(p, now)
            prompt, recompute, sampled, cached = (prompt + done[0], recompute + done[1], sampled + done[2],
                                                  cached + done[3])
            if isinstance(ds, SpecDecodeSet):
                # drafts proposed: k per verification, less what finishing requests' last steps left
                proposed += decoding * (self._q - 1) - ds.unproposed
                ds.unproposed = 0
                spec_seqs += decoding
                if ds.g - ds.origin > SPEC_HISTORY_STEPS:    # no decode run here reads past steps
                    ds.drop_history()
        batch = sum(sh.sequences for sh in shapes)
        self._note_levels()
        waiting, running = self._noted
        self._record(self._pack_record(self.idx, t0, now, 1, batch, prompt, recompute, sampled, swap_s, held,
                                       held * (now - t0), running, waiting, util_s, spec_seqs, proposed, accepted,
                                       draft_s, cached))
        for s in self.ranks:
            for r in s.finished:
                self.on_finish(r)
            s.finished.clear()
