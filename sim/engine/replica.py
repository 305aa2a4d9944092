"""One model replica (tp GPUs) as a SimPy process: iterations, decode runs and their records.

The batching policy is the scheduler's (scheduler.py) and the KV accounting the allocator's
(kv_cache.py); this module keeps time. Each iteration is one SimPy timeout whose length the step
model gives for the iteration's batch shape.

Speed: a run of decode-only iterations with no admission, completion or block shortage in between
is a single event. Its duration is summed in closed form along the decode set's context path
(`perf.shape.DecodeRun.run_s`), and so are the KV block-seconds it holds. An arrival that could
join the batch cuts such a run at the end of the step in progress, exactly as a per-step simulation
would admit it: the process is moved from the run's timeout to one that ends at that step, the way
SimPy's own `Process.interrupt` detaches a process, but without throwing into the generator (which
cost about a tenth of the benchmark's wall time). A run also stops short of each `mark` (the measurement
window's boundaries): the step that crosses a mark is an event of its own, as in a per-step
simulation, so every metric over the window is the same whether decode steps ran one event each
or many at once.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import simpy

from sim.engine.kv_cache import KvCache
from sim.engine.kv_integral import DecodeRunLog
from sim.engine.request import Request
from sim.engine.scheduler import BatchLimits, BatchScheduler, IterationPlan
from sim.engine.spec_decode_set import SPEC_HISTORY_STEPS
from sim.engine.spec_runs import SpecRunLog, concatenated, integrals
from sim.metrics.records import IterLog, LevelLog
from sim.perf.shape import (
    ContextPath,
    DecodeRun,
    DraftedRun,
    DraftWork,
    StepModel,
    StepShape,
    steps_bracket,
    steps_within,
)
from sim.speculation import Speculation

NAN = float("nan")


# Builds a NamedTuple from a tuple without its Python-level __new__: these are created a few times
# per request on the event loop's hottest path.
_make = tuple.__new__


class Replica:
    def __init__(self, env: simpy.Environment, idx: int, step: StepModel, kv: KvCache, limits: BatchLimits, *,
                 on_finish: Callable[[Request], None], records: IterLog, levels: LevelLog,
                 marks: Sequence[float] = (), allow_jumps: bool = True,
                 speculation: Speculation | None = None) -> None:
        self.env, self.idx, self.step_model = env, idx, step
        self.kv = kv
        self.scheduler = BatchScheduler(kv, limits, levels, idx, speculation.sampler if speculation else None)
        # A decode step computes q tokens per sequence after the draft work (speculative decoding:
        # q = k + 1 verified tokens, k draft passes), or one token and no drafts.
        self._q: int = speculation.k + 1 if speculation else 1
        self._draft: DraftWork | None = speculation.draft if speculation else None
        self._spec = speculation is not None
        self._spec_runs_by_batch: dict[int, DecodeRun] = {}
        self._spec_utils_by_batch: dict[int, DecodeRun] = {}
        self.on_finish = on_finish
        self.records = records
        self._record, self._pack_record = records.extend, records.pack   # IterRecord rows
        self.allow_jumps = allow_jumps  # False: one event per step (reference mode for tests)
        self.marks = sorted(marks)
        self.decode_runs = DecodeRunLog(kv.block_tokens)   # their kv_block_s is filled in after the run
        self.spec_runs = SpecRunLog()                      # the same for speculative decode runs
        self._spec_integrals: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._wakeup: simpy.Event | None = None
        self._interruptible = False
        self._jump_state: tuple[float, DecodeRun, ContextPath, int] | None = None
        self._run_timeout: simpy.Timeout | None = None   # what the process waits on during a decode run
        self._run_end: tuple[int, float] = (0, 0.0)      # (steps, seconds) of that run, shortened by a cut
        self.proc = env.process(self._loop())

    # ---- what the cluster reads ---------------------------------------------------------------
    def schedulers(self) -> list[BatchScheduler]:
        return [self.scheduler]

    @property
    def outstanding(self) -> int:
        return self.scheduler.outstanding

    # ---- intake (called by the router) ------------------------------------------------------
    def submit(self, r: Request) -> bool:
        """Accept a routed request into the waiting queue, or reject it (returns False)."""
        r.replica = self.idx
        if not self.scheduler.intake(r, self.env.now):
            self.on_finish(r)
            return False
        if self._wakeup is not None:
            if not self._wakeup.triggered:
                self._wakeup.succeed()
        elif self._interruptible:
            self._interruptible = False
            self._cut_decode_run()
        return True

    @property
    def kv_load_tokens(self) -> int:
        return self.current_used_blocks() * self.kv.block_tokens + self.scheduler.waiting_tokens

    def current_used_blocks(self) -> int:
        """Blocks allocated now. Inside a decode run the blocks of the steps done so far, and of
        the step in progress, are booked only at the run's end; count them as a per-step
        simulation would have."""
        if self._jump_state is None:
            return self.kv.used_blocks
        t0, run, path, n = self._jump_state
        k = steps_within(run, path, n, self.env.now - t0)
        return self.kv.used_blocks + self.scheduler.decode_set.blocks_needed(min(n, k + 1))

    def evicted_in_run(self) -> int:
        """Prefix chunks a per-step simulation would have evicted by now inside the current decode
        run (whose allocations, and so evictions, are booked at its end): the least recently used
        free ones, as many as the steps so far take beyond the free blocks holding no chunk."""
        tiers = self.scheduler.prefix
        if self._jump_state is None or tiers is None:
            return 0
        t0, run, path, n = self._jump_state
        k = steps_within(run, path, n, self.env.now - t0)
        hbm = tiers.hbm
        short = self.scheduler.decode_set.blocks_needed(min(n, k + 1)) - (self.kv.free_blocks - hbm.cached_free_blocks)
        return min(len(hbm.free_lru), -(-short // hbm.chunk_blocks)) if short > 0 else 0

    # ---- the SimPy process ------------------------------------------------------------------------
    def _hand_back_finished(self) -> None:
        """Report the requests the last event finished (closed-loop clients wait on them)."""
        done = self.scheduler.finished
        for r in done:
            self.on_finish(r)
        done.clear()

    def _loop(self) -> Generator[simpy.Event, Any, None]:
        env, sched = self.env, self.scheduler
        while True:
            if not (sched.running or sched.waiting):
                self._wakeup = env.event()
                yield self._wakeup
                self._wakeup = None
                continue
            if self.allow_jumps and sched.decode_run_stable(env.now):
                n = sched.decode_run_length()
                if n > 1:
                    size = sched.decode_set.size
                    run = self.spec_run(size) if self._spec else self.step_model.decode_run(size)
                    path = sched.decode_set.path()
                    n, total_s = self._steps_before_mark(run, path, n)
                    if sched.loading:
                        n, total_s = self._steps_until(run, path, n, total_s, sched.next_ready_s())
                    if n > 1:
                        yield from self._decode_run(run, path, n, total_s)
                        continue
            plan = sched.schedule(env.now)
            if sched.loading and plan.computes_nothing:
                yield from self._await_loads()
                continue
            if plan.idle:
                yield from self._free_stuck_prefill(plan)
                continue
            t0, held = env.now, self.kv.used_blocks   # blocks allocated for it, freed at its end
            step_s, util_s, draft_s = self._iteration_s(plan)
            yield env.timeout(step_s)
            self._end_iteration(plan, t0, held, util_s, draft_s)

    def _await_loads(self) -> Generator[simpy.Event, Any, None]:
        """Nothing to compute until a prefix load ends or a request arrives: wait for either."""
        env = self.env
        self._wakeup = env.event()
        yield self._wakeup | env.timeout(max(0.0, self.scheduler.next_ready_s() - env.now))
        self._wakeup = None

    def _steps_before_mark(self, run: DecodeRun, path: ContextPath, n: int) -> tuple[int, float]:
        """Steps of a decode run that end strictly before the next mark (all n if none), and
        their duration."""
        t0 = self.env.now
        marks = self.marks
        while marks and marks[0] <= t0:
            marks.pop(0)
        total_s = run.run_s(path, n)
        if not marks or t0 + total_s < marks[0]:
            return n, total_s
        m = marks[0]
        k, t_k, _ = steps_bracket(run, path, n, m - t0)
        while k > 0 and t0 + t_k >= m:
            k -= 1
            t_k = run.run_s(path, k)
        return k, t_k

    def _steps_until(self, run: DecodeRun, path: ContextPath, n: int, total_s: float,
                     ready_s: float) -> tuple[int, float]:
        """The steps of a decode run up to the first step boundary at or after ready_s (when a
        waiting request's load has ended, so a per-step simulation would schedule its prefill
        there), all n if it ends before; and their duration."""
        t0 = self.env.now
        if t0 + total_s < ready_s:
            return n, total_s
        k, t_k, t_next = steps_bracket(run, path, n, ready_s - t0)
        if not (k > 0 and t0 + t_k >= ready_s):
            k, t_k = k + 1, t_next      # the step in progress at ready_s ends the run
        while k > 1:                    # exactly the first boundary t0 + T(k) >= ready_s
            t_prev = run.run_s(path, k - 1)
            if t0 + t_prev < ready_s:
                break
            k, t_k = k - 1, t_prev
        return k, t_k

    def _free_stuck_prefill(self, plan: IterationPlan) -> Generator[simpy.Event, Any, None]:
        """Partial prefills hold all the KV and none can grow: free the newest one."""
        sched, env = self.scheduler, self.env
        if not sched.running:
            raise RuntimeError(f"replica {self.idx}: waiting request cannot be admitted into an empty replica")
        swap_s = plan.swap_s + sched.preempt_last()
        sched.note_levels(env.now)
        if swap_s:
            t0 = env.now
            held = self.kv.used_blocks
            yield env.timeout(swap_s)
            self._record(self._pack_record(self.idx, t0, env.now, 0, 0, 0, 0, 0, swap_s, held, held * swap_s,
                                           len(sched.running), len(sched.waiting), 0.0, 0, 0, 0, 0.0, 0))

    def _iteration_s(self, plan: IterationPlan) -> tuple[float, float, float]:
        """Seconds the planned iteration takes (its batch shape's step time plus KV transfers), its
        utilization-seconds (for power) and the seconds of draft work in it."""
        ds = self.scheduler.decode_set
        chunks = plan.chunk_shapes()
        draft_s = 0.0
        transfer_s = plan.swap_s + plan.load_wait_s
        if plan.decode:
            ctx = ds.next_ctx_sum()
            shape = _make(StepShape, (ds.size, ctx, self._q, chunks, self._draft))
            if self._spec:
                run = self.spec_run(ds.size)
                if isinstance(run, DraftedRun):
                    step_s, draft_s = run.step_parts(ctx)
                    if not chunks:      # a decode-only step: its cached run, as a decode run prices it
                        return step_s + transfer_s, self.spec_run_utilization(ds.size).step_s(ctx), draft_s
        else:
            shape = _make(StepShape, (0, 0, 1, chunks, None))
        step_s, util_s = self.step_model.iteration_with_utilization_s(shape)
        return step_s + transfer_s, util_s, draft_s

    def spec_run(self, batch: int) -> DecodeRun:
        """A speculative step of `batch` sequences: drafts and verification (cached by batch)."""
        run = self._spec_runs_by_batch.get(batch)
        if run is None:
            run = self._spec_runs_by_batch[batch] = self.step_model.decode_run(batch, self._q, self._draft)
        return run

    def _proposed(self, spec_seqs: int) -> int:
        """Drafts the event's verifications proposed: k per sequence, except at each finishing
        request's last step, which proposes only the tokens it still needed less its own."""
        if not spec_seqs:
            return 0
        ds = self.scheduler.decode_set
        unused = ds.unproposed      # type: ignore[union-attr]
        ds.unproposed = 0           # type: ignore[union-attr]
        return spec_seqs * (self._q - 1) - unused

    def _end_iteration(self, plan: IterationPlan, t0: float, held: int, util_s: float, draft_s: float) -> None:
        """Apply a finished iteration's effects and record it."""
        sched = self.scheduler
        ds = sched.decode_set
        decoding = ds.size if plan.decode else 0
        batch = decoding + len(plan.chunks)
        spec_seqs = accepted = 0
        if self._spec and decoding:
            # each verification samples one token of the target's own; the rest are accepted drafts
            spec_seqs, accepted = decoding, ds.tokens_sampled(1) - decoding
        now = self.env.now
        prompt, recompute, sampled, cached = sched.finish_iteration(plan, now)
        proposed = self._proposed(spec_seqs)
        self._record(self._pack_record(self.idx, t0, now, 1, batch, prompt, recompute, sampled,
                                       plan.swap_s + plan.load_wait_s, held, held * (now - t0), len(sched.running),
                                       len(sched.waiting), util_s, spec_seqs, proposed, accepted, draft_s, cached))
        if sched.finished:
            self._hand_back_finished()
        # Where decode runs are rare, single steps fill the history too (the check is two lookups).
        if self._spec and ds.g - ds.origin > SPEC_HISTORY_STEPS:  # type: ignore[union-attr]
            self._settle_spec_runs()

    def _cut_decode_run(self) -> None:
        """A newcomer arrived during a decode run: end the run at the step in progress, so the
        newcomer joins at the next step boundary as in step-by-step simulation. The process waits
        on a new timeout instead of the old one (see the module docstring)."""
        env = self.env
        assert self._jump_state is not None
        t0, run, path, n = self._jump_state
        elapsed = env.now - t0
        k, t_k, t_next = steps_bracket(run, path, n, elapsed)
        if k < n and not (k > 0 and t_k == elapsed):
            n, total_s = k + 1, t_next  # the step in progress completes before the newcomer can join
        else:
            n, total_s = k, t_k
        self._run_end = (n, total_s)
        # SimPy internals, used as Process.interrupt uses them (simpy 4.x, pinned in pyproject.toml);
        # the jump-versus-step exactness tests fail if this ever stops moving the process.
        resume = self.proc._resume
        assert self._run_timeout is not None and self._run_timeout.callbacks is not None
        self._run_timeout.callbacks.remove(resume)
        cut = env.timeout(max(0.0, t0 + total_s - env.now))
        cut.callbacks.append(resume)
        self.proc._target = cut

    def _settle_spec_runs(self) -> None:
        """Evaluate the logged speculative runs' integrals (their steps' contexts and blocks are
        final once a run is logged), keep the results, and let the decode set drop the steps done."""
        ds = self.scheduler.decode_set
        log = self.spec_runs
        if len(log):
            self._spec_integrals.append(integrals(log, ds.ctx, ds.held, self.spec_run,  # type: ignore[union-attr]
                                                  self.spec_run_utilization, ds.origin))  # type: ignore[union-attr]
            log.clear()
        ds.drop_history()                                                               # type: ignore[union-attr]

    def spec_run_integrals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(record indices, KV block-seconds, utilization-seconds, draft seconds) of every
        speculative decode run of this replica (spec_runs.py), at the end of the simulation."""
        if self._spec:
            self._settle_spec_runs()
        return concatenated(self._spec_integrals)

    def spec_run_utilization(self, batch: int) -> DecodeRun:
        """Utilization-seconds of a speculative step of `batch` sequences, in the decode-run form
        (cached by batch)."""
        util = self._spec_utils_by_batch.get(batch)
        if util is None:
            util = self._spec_utils_by_batch[batch] = self.step_model.decode_utilization(batch, self._q, self._draft)
        return util

    def _decode_run(self, run: DecodeRun, path: ContextPath, n: int, total_s: float) -> Generator[simpy.Event, Any, None]:
        env, sched = self.env, self.scheduler
        ds = sched.decode_set
        t0 = env.now
        self._jump_state = (t0, run, path, n)
        self._run_end = (n, total_s)
        if not sched.waiting and len(sched.running) < sched.limits.max_num_seqs:
            self._interruptible = True
            self._run_timeout = env.timeout(total_s)
            yield self._run_timeout
            self._interruptible = False
            self._run_timeout = None
            n, total_s = self._run_end
        else:
            yield env.timeout(total_s)
        self._jump_state = None
        if n == 0:
            return
        batch = ds.size
        # Its KV block-seconds and utilization-seconds (and draft seconds) are summed exactly after
        # the simulation (kv_integral.py, power.py, spec_runs.py).
        if self._spec:
            # blocks held during its step G: what the replica holds now, plus the decode set's growth
            self.spec_runs.add(len(self.records), self.kv.used_blocks - ds.held_now, batch, ds.g + 1, n)  # type: ignore[union-attr]
            if ds.g - ds.origin > SPEC_HISTORY_STEPS:  # type: ignore[union-attr]
                self._settle_spec_runs()
        else:
            self.decode_runs.add(len(self.records), self.kv.used_blocks, n, total_s, batch, path[0], path[1],  # type: ignore[index]
                                 ds.allocation_pattern())     # type: ignore[union-attr]
        sampled, peak = sched.finish_decode_run(n, env.now)
        spec_seqs = batch * n if self._spec else 0        # each step samples one token per sequence
        self._record(self._pack_record(self.idx, t0, t0 + total_s, n, batch, 0, 0, sampled, 0.0, peak, NAN,
                                       len(sched.running), len(sched.waiting), NAN,
                                       spec_seqs, self._proposed(spec_seqs), sampled - spec_seqs if self._spec else 0,
                                       NAN if self._spec else 0.0, 0))
        if sched.finished:
            self._hand_back_finished()
