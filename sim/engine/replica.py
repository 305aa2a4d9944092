"""One model replica (tp GPUs) as a SimPy process: iterations, decode runs and their records.

The batching policy is the scheduler's (scheduler.py) and the KV accounting the allocator's
(kv_cache.py); this module keeps time. Each iteration is one SimPy timeout whose length the step
model gives for the iteration's batch shape.

Speed: a run of decode-only iterations with no admission, completion or block shortage in between
is a single event. Its duration is summed in closed form along the decode set's context path
(`perf.shape.DecodeRun.run_s`), and so are the KV block-seconds it holds. An arrival that could
join the batch interrupts such a run; the run is cut at the end of the step in progress, exactly as
a per-step simulation would admit it. A run also stops short of each `mark` (the measurement
window's boundaries): the step that crosses a mark is an event of its own, as in a per-step
simulation, so every metric over the window is the same whether decode steps ran one event each
or many at once.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import simpy

from sim.engine.kv_cache import KvCache
from sim.engine.request import Request
from sim.engine.scheduler import BatchLimits, BatchScheduler, IterationOutcome, IterationPlan
from sim.metrics.records import IterRecord, LevelLog, Status
from sim.perf.shape import Chunk, DecodeRun, LinearPath, StepModel, StepShape, steps_within


class Replica:
    def __init__(self, env: simpy.Environment, idx: int, step: StepModel, kv: KvCache, limits: BatchLimits, *,
                 on_finish: Callable[[Request], None], records: list[IterRecord], levels: LevelLog,
                 marks: Sequence[float] = (), allow_jumps: bool = True) -> None:
        self.env, self.idx, self.step_model = env, idx, step
        self.kv = kv
        self.scheduler = BatchScheduler(kv, limits, levels, idx)
        self.on_finish = on_finish
        self.records = records
        self.allow_jumps = allow_jumps  # False: one event per step (reference mode for tests)
        self.marks = sorted(marks)
        self._wakeup: simpy.Event | None = None
        self._interruptible = False
        self._jump_state: tuple[float, DecodeRun, LinearPath, int] | None = None
        self.proc = env.process(self._loop())

    # ---- intake (called by the router) ------------------------------------------------------
    def submit(self, r: Request) -> bool:
        """Accept a routed request into the waiting queue, or reject it (returns False)."""
        r.replica = self.idx
        sched = self.scheduler
        reason = sched.reject_reason(r)
        if reason:
            r.status = Status.REJECTED
            r.reject_reason = reason
            r.finish_s = self.env.now
            self.on_finish(r)
            return False
        sched.enqueue(r, self.env.now)
        if self._wakeup is not None:
            if not self._wakeup.triggered:
                self._wakeup.succeed()
        elif self._interruptible:
            self._interruptible = False
            self.proc.interrupt()
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

    # ---- the SimPy process ------------------------------------------------------------------------
    def _finished(self, out: IterationOutcome) -> None:
        for r in out.finished:
            self.on_finish(r)

    def _loop(self) -> Generator[simpy.Event, Any, None]:
        env, sched = self.env, self.scheduler
        while True:
            if not (sched.running or sched.waiting):
                self._wakeup = env.event()
                yield self._wakeup
                self._wakeup = None
                continue
            if self.allow_jumps and sched.decode_run_stable():
                n = sched.decode_run_length()
                if n > 1:
                    run = self.step_model.decode_run(sched.decode_set.size)
                    path = sched.decode_set.path()
                    n = self._steps_before_mark(run, path, n)
                    if n > 1:
                        yield from self._decode_run(run, path, n)
                        continue
            plan = sched.schedule(env.now)
            if plan.idle:
                yield from self._free_stuck_prefill(plan)
                continue
            yield from self._iteration(plan)

    def _steps_before_mark(self, run: DecodeRun, path: LinearPath, n: int) -> int:
        """Steps of a decode run that end strictly before the next mark (all n if none)."""
        t0 = self.env.now
        marks = self.marks
        while marks and marks[0] <= t0:
            marks.pop(0)
        if not marks or t0 + run.run_s(path, n) < marks[0]:
            return n
        m = marks[0]
        k = steps_within(run, path, n, m - t0)
        while k > 0 and t0 + run.run_s(path, k) >= m:
            k -= 1
        return k

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
            self.records.append(IterRecord(self.idx, t0, env.now, 0, 0, 0, 0, 0, swap_s, held, held * swap_s,
                                           len(sched.running), len(sched.waiting)))

    def _iteration(self, plan: IterationPlan) -> Generator[simpy.Event, Any, None]:
        env, sched = self.env, self.scheduler
        ds = sched.decode_set
        t0 = env.now
        decode_seqs = ds.size if plan.decode else 0
        shape = StepShape(decode_seqs, ds.next_ctx_sum() if plan.decode else 0, 1,
                          tuple(Chunk(r.prefilled, new, r.prefilled + new >= r.prefill_target)
                                for r, new in plan.chunks))
        dt = self.step_model.iteration_s(shape) + plan.swap_s
        batch = decode_seqs + len(plan.chunks)
        held = self.kv.used_blocks              # allocated for this iteration, freed at its end
        yield env.timeout(dt)
        out = sched.finish_iteration(plan, env.now)
        self.records.append(IterRecord(self.idx, t0, env.now, 1, batch, out.prompt_tokens, out.recompute_tokens,
                                       out.sampled_tokens, plan.swap_s, held, held * (env.now - t0),
                                       len(sched.running), len(sched.waiting)))
        self._finished(out)

    def _decode_run(self, run: DecodeRun, path: LinearPath, n: int) -> Generator[simpy.Event, Any, None]:
        env, sched = self.env, self.scheduler
        ds = sched.decode_set
        t0 = env.now
        total_s = run.run_s(path, n)
        self._jump_state = (t0, run, path, n)
        if not sched.waiting and len(sched.running) < sched.limits.max_num_seqs:
            self._interruptible = True
            try:
                yield env.timeout(total_s)
                self._interruptible = False
            except simpy.Interrupt:
                self._interruptible = False
                elapsed = env.now - t0
                k = steps_within(run, path, n, elapsed)
                if k < n and not (k > 0 and run.run_s(path, k) == elapsed):
                    k += 1  # the step in progress completes before the newcomer can join
                n = k
                total_s = run.run_s(path, n)
                if t0 + total_s > env.now:
                    yield env.timeout(t0 + total_s - env.now)
        else:
            yield env.timeout(total_s)
        self._jump_state = None
        if n == 0:
            return
        batch = ds.size
        held_before = self.kv.used_blocks
        peak = held_before + ds.blocks_needed(n)
        block_s = ds.block_seconds(run.segments(path, n), path, held_before, total_s)
        out = sched.finish_decode_run(n, env.now)
        self.records.append(IterRecord(self.idx, t0, t0 + total_s, n, batch, 0, 0, out.sampled_tokens, 0.0, peak,
                                       block_s, len(sched.running), len(sched.waiting)))
        self._finished(out)
