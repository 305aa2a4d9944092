"""One model replica (tp GPUs): iteration-level continuous batching over paged KV blocks.

Scheduling follows vLLM's policy (V1 with chunked prefill, V0 without):

* chunked prefill on: each iteration runs every decoding sequence (one token each), then
  continues partial prefills, then admits waiting requests FCFS, cutting prompts into chunks so
  the iteration holds at most `max_num_batched_tokens` tokens and `max_num_seqs` sequences;
* chunked prefill off: an iteration is either prefill-only (whole prompts, FCFS, within the token
  budget; a lone prompt above the budget runs by itself) or decode-only, prefills first;
* KV is paged in blocks of `block_tokens`; a request is admitted only if its first chunk fits
  while keeping `watermark_fraction` of the blocks free;
* when a decode step needs a block and none is free, the most recently admitted running request
  is preempted (LIFO): `recompute` frees its blocks and prefills prompt + generated tokens again
  later; `swap` copies its KV to host memory over the host link and back when resumed;
* the waiting queue is bounded (`max_waiting`, online traffic only: an offline burst is queued whole);
  a request is rejected, with its reason counted,
  when the queue is full, when prompt + output exceed the model's context, or when it could not
  fit in this replica's KV cache even alone.

Speed: one SimPy event per iteration, and a run of decode-only iterations with no admission,
completion or block shortage in between is a single event whose duration is summed in closed form
(`perf.shape.DecodeRun.run_s` along the decode set's context path). An arrival that could join the batch interrupts such a run; the run
is cut at the end of the step in progress, exactly as a per-step simulation would admit it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

from sim.engine.decode_set import DecodeSet
from sim.engine.request import Request, Status
from sim.perf.shape import Chunk, DecodeRun, LinearPath, StepModel, StepShape, steps_within

#: One iteration record: (replica, t_start_s, t_end_s, steps, batch_seqs, prompt_tokens,
#: recompute_tokens, output_tokens, running, waiting, kv_blocks_used)
IterRecord = tuple[int, float, float, int, int, int, int, int, int, int, int]


@dataclass(slots=True)
class Plan:
    """What the next iteration does: prefill chunks, swapped-in decodes, a decode step or not,
    seconds of KV transfer, and how many waiting requests were admitted."""

    chunks: list[tuple[Request, int]] = field(default_factory=list)
    resumed: list[Request] = field(default_factory=list)
    decode: bool = False
    swap_s: float = 0.0
    admitted: int = 0


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Replica:
    def __init__(self, env: simpy.Environment, idx: int, step: StepModel, total_blocks: int, *,
                 block_tokens: int, sliding_blocks: int, max_num_seqs: int, max_num_batched_tokens: int,
                 chunked_prefill: bool, max_waiting: int | None, preemption: str, watermark_fraction: float,
                 max_context_tokens: int, swap_bytes_per_kv_token: float,
                 host_link_bytes_per_s: float, on_finish: Callable[[Request], None],
                 records: list[IterRecord], allow_jumps: bool = True) -> None:
        self.env, self.idx, self.step = env, idx, step
        self.bt = block_tokens
        self.sliding_blocks = sliding_blocks
        self.total_blocks = total_blocks
        self.used_blocks = 0
        self.watermark_blocks = int(watermark_fraction * total_blocks)
        self.max_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.chunked = chunked_prefill
        self.max_waiting = max_waiting
        self.swap = preemption == "swap"
        self.max_context = max_context_tokens
        self.swap_bytes_per_kv_token = swap_bytes_per_kv_token
        self.host_link_bytes_per_s = host_link_bytes_per_s
        self.on_finish = on_finish
        self.records = records
        self.allow_jumps = allow_jumps  # False: one event per step (reference mode for tests)

        self.ds = DecodeSet(block_tokens)
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}   # insertion order = admission order
        self.prefilling: list[Request] = []      # running requests still in prefill, admission order
        self.waiting_tokens = 0
        self._seq = 0
        self._wakeup: simpy.Event | None = None
        self._interruptible = False
        self._jump_state: tuple[float, DecodeRun, LinearPath, int] | None = None
        self.proc = env.process(self._loop())

    # ---- intake ---------------------------------------------------------------------------
    def reject_reason(self, r: Request) -> str:
        if r.input_tokens + r.output_tokens > self.max_context:
            return "context_too_long"
        if self._blocks_for(r.input_tokens + r.output_tokens - 1) > self.total_blocks:
            return "exceeds_kv_capacity"
        if self.max_waiting is not None and len(self.waiting) >= self.max_waiting:
            return "queue_full"
        return ""

    def submit(self, r: Request) -> bool:
        """Accept a routed request into the waiting queue, or reject it (returns False)."""
        r.replica = self.idx
        reason = self.reject_reason(r)
        if reason:
            r.status = Status.REJECTED
            r.reject_reason = reason
            r.finish_s = self.env.now
            self.on_finish(r)
            return False
        self.waiting.append(r)
        self.waiting_tokens += r.input_tokens
        if self._wakeup is not None:
            if not self._wakeup.triggered:
                self._wakeup.succeed()
        elif self._interruptible:
            self._interruptible = False
            self.proc.interrupt()
        return True

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running)

    @property
    def kv_load_tokens(self) -> int:
        return self.current_used_blocks() * self.bt + self.waiting_tokens

    def current_used_blocks(self) -> int:
        """Blocks allocated now. Inside a decode jump the blocks of the steps done so far, and of
        the step in progress, are booked only at the jump's end; count them as a per-step
        simulation would have."""
        if self._jump_state is None:
            return self.used_blocks
        t0, run, path, n = self._jump_state
        k = steps_within(run, path, n, self.env.now - t0)
        return self.used_blocks + self.ds.blocks_needed(min(n, k + 1))

    # ---- KV helpers -------------------------------------------------------------------------
    def _blocks_for(self, kv_tokens: int) -> int:
        return _ceil_div(kv_tokens, self.bt) + (self.sliding_blocks if kv_tokens > 0 else 0)

    def transfer_s(self, kv_tokens: int) -> float:
        """Seconds to move a request's KV between GPU and host memory (swap)."""
        return kv_tokens * self.swap_bytes_per_kv_token / self.host_link_bytes_per_s

    @property
    def free_blocks(self) -> int:
        return self.total_blocks - self.used_blocks

    def _admit(self, r: Request) -> None:
        self.waiting.popleft()
        self.waiting_tokens -= r.input_tokens
        self._seq += 1
        r.seq = self._seq
        r.status = Status.RUNNING
        if r.admit_s < 0:
            r.admit_s = self.env.now
        self.running[r.id] = r

    def _preempt_last(self) -> float:
        """Preempt the most recently admitted running request; returns swap-out seconds."""
        victim = next(reversed(self.running.values()))
        del self.running[victim.id]
        swap_s = 0.0
        if victim.in_decode:
            kv = self.ds.remove(victim)
            self.used_blocks -= self._blocks_for(kv)
            if self.swap:
                victim.swapped_kv = kv
                swap_s = self.transfer_s(kv)
            else:
                victim.prefill_target = victim.input_tokens + victim.generated
                victim.prefilled = 0
        else:
            self.prefilling.remove(victim)
            self.used_blocks -= victim.blocks
            if self.swap and victim.prefilled:
                victim.swapped_kv = victim.prefilled
                swap_s = self.transfer_s(victim.prefilled)
            else:
                victim.prefilled = 0
        victim.blocks = 0
        victim.status = Status.WAITING
        victim.preemptions += 1
        self.waiting.appendleft(victim)
        self.waiting_tokens += victim.input_tokens
        return swap_s

    # ---- scheduling (one iteration) -----------------------------------------------------------
    def _chunk_blocks(self, r: Request, new: int) -> int:
        return self._blocks_for(r.prefilled + new) - self._blocks_for(r.prefilled)

    def _fit_tokens(self, r: Request, free: int) -> int:
        """Most new prefill tokens for r that `free` blocks can hold."""
        if r.prefilled == 0:
            free -= self.sliding_blocks
        return max(0, (_ceil_div(r.prefilled, self.bt) + free) * self.bt - r.prefilled)

    def _schedule(self) -> Plan:
        """Decide the next iteration. Allocates the blocks it needs and preempts when a decode
        step cannot get blocks."""
        plan = Plan()
        if not self.chunked:
            self._admit_waiting(plan, self.budget, whole_prompts=True)
            if plan.admitted:
                return plan
        if self.ds.size:
            need = self.ds.blocks_needed(1)
            while need > self.free_blocks:
                plan.swap_s += self._preempt_last()
                need = self.ds.blocks_needed(1)
            plan.decode = self.ds.size > 0
            self.used_blocks += need
        if not self.chunked:
            return plan
        budget = self.budget - self.ds.size
        for r in self.prefilling:
            if budget <= 0:
                break
            new = self._add_chunk(plan, r, budget, self.free_blocks)
            if new <= 0:
                break
            budget -= new
        if budget > 0:
            self._admit_waiting(plan, budget, whole_prompts=False)
        return plan

    def _add_chunk(self, plan: Plan, r: Request, budget: int, free: int) -> int:
        """Schedule the next prefill chunk of running request r within budget and free blocks."""
        new = min(r.prefill_target - r.prefilled, budget, self._fit_tokens(r, free))
        if new > 0:
            blocks = self._chunk_blocks(r, new)
            r.blocks += blocks
            self.used_blocks += blocks
            plan.chunks.append((r, new))
        return new

    def _admit_waiting(self, plan: Plan, budget: int, whole_prompts: bool) -> None:
        """Admit waiting requests FCFS into `plan` while budget, sequence slots and blocks allow."""
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            r = self.waiting[0]
            margin = self.watermark_blocks if self.running else 0
            if r.swapped_kv:
                blocks = self._blocks_for(r.swapped_kv)
                if self.free_blocks - blocks < margin:
                    break
                self._admit(r)
                plan.admitted += 1
                self.used_blocks += blocks
                plan.swap_s += self.transfer_s(r.swapped_kv)
                if r.prefilled < r.prefill_target:     # swapped out mid-prefill: continue it now
                    r.blocks = blocks
                    r.swapped_kv = 0
                    self.prefilling.append(r)
                    budget -= max(0, self._add_chunk(plan, r, budget, self.free_blocks))
                else:
                    plan.resumed.append(r)
                continue
            new = r.prefill_target - r.prefilled
            if whole_prompts:
                if new > budget and plan.admitted:
                    break
            else:
                new = min(new, budget, self._fit_tokens(r, self.free_blocks - margin))
                if new <= 0:
                    break
            blocks = self._chunk_blocks(r, new)
            if self.free_blocks - blocks < margin:
                break
            self._admit(r)
            plan.admitted += 1
            r.blocks = blocks
            self.used_blocks += blocks
            self.prefilling.append(r)
            plan.chunks.append((r, new))
            budget -= new

    # ---- effects of a finished iteration ----------------------------------------------------------
    def _complete(self, r: Request, blocks: int) -> None:
        r.status = Status.DONE
        r.finish_s = self.env.now
        del self.running[r.id]
        self.used_blocks -= blocks
        self.on_finish(r)

    def _finish_decode_steps(self) -> None:
        for r, kv in self.ds.pop_finished():
            self._complete(r, self._blocks_for(kv))

    def _apply(self, chunks: list[tuple[Request, int]], resumed: list[Request], decode: bool) -> tuple[int, int, int]:
        """Apply an iteration's effects; returns (prompt tokens, recompute tokens, sampled tokens)."""
        now = self.env.now
        sampled = 0
        if decode:
            sampled += self.ds.tokens_sampled(1)
            self.ds.advance(1)
            self._finish_decode_steps()
        prompt = recompute = 0
        for r, new in chunks:
            first = r.prefilled
            r.prefilled += new
            counted = min(r.prefilled, r.input_tokens)
            fresh = max(0, counted - max(first, r.input_counted))
            r.input_counted = max(r.input_counted, counted)
            prompt += fresh
            recompute += new - fresh
            if r.prefilled < r.prefill_target:
                continue
            self.prefilling.remove(r)
            r.generated += 1
            sampled += 1
            if r.first_token_s < 0:
                r.first_token_s = now
            if r.generated >= r.output_tokens:
                self._complete(r, r.blocks)
            else:
                r.blocks = 0
                self.ds.add(r, r.prefilled)
        for r in resumed:
            self.ds.add(r, r.swapped_kv)
            r.swapped_kv = 0
        return prompt, recompute, sampled

    # ---- the SimPy process ------------------------------------------------------------------------
    def _loop(self):
        env = self.env
        while True:
            if not self.running and not self.waiting:
                self._wakeup = env.event()
                yield self._wakeup
                self._wakeup = None
                continue
            if self.allow_jumps and self._can_jump():
                n = self.ds.safe_steps(self.free_blocks, self.ds.steps_to_next_finish())
                if n > 1:
                    yield from self._jump(n)
                    continue
            plan = self._schedule()
            chunks, resumed, decode, swap_s = plan.chunks, plan.resumed, plan.decode, plan.swap_s
            if not chunks and not decode and not plan.admitted:
                # Partial prefills hold all the KV and none can grow: free the newest one.
                if not self.running:
                    raise RuntimeError(f"replica {self.idx}: waiting request cannot be admitted into an empty replica")
                swap_s += self._preempt_last()
                if swap_s:
                    t0 = env.now
                    yield env.timeout(swap_s)
                    self.records.append((self.idx, t0, env.now, 0, 0, 0, 0, 0, len(self.running),
                                         len(self.waiting), self.used_blocks))
                continue
            t0 = env.now
            shape = StepShape(self.ds.size if decode else 0, self.ds.next_ctx_sum() if decode else 0, 1,
                              tuple(Chunk(r.prefilled, new, r.prefilled + new >= r.prefill_target) for r, new in chunks))
            dt = self.step.iteration_s(shape) + swap_s
            batch = (self.ds.size if decode else 0) + len(chunks)
            yield env.timeout(dt)
            prompt, recompute, sampled = self._apply(chunks, resumed, decode)
            self.records.append((self.idx, t0, env.now, 1, batch, prompt, recompute, sampled,
                                 len(self.running), len(self.waiting), self.used_blocks))

    def _can_jump(self) -> bool:
        """Decode-only and nothing could be admitted: only arrivals (handled by interrupt),
        completions or block shortage change the batch."""
        if self.prefilling or self.ds.size == 0:
            return False
        if not self.waiting:
            return True
        if len(self.running) >= self.max_seqs:
            return True
        r = self.waiting[0]
        margin = self.watermark_blocks
        need = self._blocks_for(r.swapped_kv) if r.swapped_kv else self._blocks_for(
            min(r.prefill_target, 1 if self.chunked else r.prefill_target))
        return self.free_blocks - need < margin

    def _jump(self, n: int):
        env, ds = self.env, self.ds
        run = self.step.decode_run(ds.size)
        path = ds.path()
        t0 = env.now
        total_s = run.run_s(path, n)
        self._jump_state = (t0, run, path, n)
        if not self.waiting and len(self.running) < self.max_seqs:
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
        self.used_blocks += ds.blocks_needed(n)
        batch = ds.size
        sampled = ds.tokens_sampled(n)
        ds.advance(n)
        self._finish_decode_steps()
        self.records.append((self.idx, t0, t0 + total_s, n, batch, 0, 0, sampled,
                             len(self.running), len(self.waiting), self.used_blocks))
