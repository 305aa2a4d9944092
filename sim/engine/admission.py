"""Admission policies: whether a waiting request may join the running batch, beyond the token
budget, the sequence limit and the free blocks its first chunk needs (which every policy checks).

* `Optimistic` (vLLM; TensorRT-LLM's MAX_UTILIZATION): nothing more. Requests are admitted while
  their next chunk fits, and a decode step that finds no free block preempts the newest request
  (scheduler.py). Under KV pressure this trades preemptions and recomputation for occupancy.
* `GuaranteedNoEvict` (TensorRT-LLM's default capacity scheduler, GUARANTEED_NO_EVICT): a request
  is admitted only when the blocks it will hold at its last token, added to those every running
  request will hold at its own last token, fit in the KV cache. No running request can then run
  out of blocks, so none is ever preempted; the price is fewer concurrent requests while outputs
  are still short. Source: TensorRT-LLM docs, "Useful Runtime Options", Capacity Scheduler Policy
  (https://nvidia.github.io/TensorRT-LLM/performance/performance-tuning-guide/useful-runtime-flags.html):
  GUARANTEED_NO_EVICT is the default and guarantees "that a started request is never paused".
  TensorRT-LLM reserves up to the request's max_tokens; here that is its output length, which is
  what benchmarks set (fixed output, max_tokens = output length). Traffic whose max_tokens exceeds
  the real outputs would reserve more, and admit fewer, than modelled.

* `Conservative` (SGLang's PrefillAdder): a request is admitted only when its prompt (or chunk)
  plus its expected output, min(remaining output, 4,096), fit in the free KV tokens less what the
  running requests are expected to still need: new_token_ratio x min(remaining output, 4,096)
  each. The ratio starts at 0.7, falls by (0.7 - 0.098) / 600 after every decode step to 0.098
  (0.7 x 0.14), is reset to 0.7 when the replica idles, and after a preemption (SGLang's
  "retraction") becomes (tokens decoded + 20 x requests) / their outputs over the requests still
  running. Source: SGLang `schedule_policy.PrefillAdder` (`rem_total_tokens`, `add_one_req`) and
  `global_config` (`default_init_new_token_ratio` 0.7, `default_min_new_token_ratio_factor` 0.14,
  `default_new_token_ratio_decay_steps` 600, `retract_decode_steps` 20,
  `CLIP_MAX_NEW_TOKENS_ESTIMATION` 4,096). Because the ratio changes every step, whether the head
  of the queue may be admitted can change every step too: decode runs are not jumped while
  requests wait (they still are when nothing waits, or no sequence slot is free).

Every policy takes a request's output length as what the engine reserves for: benchmarks fix it
(max_tokens = output length, ignore_eos); the engines reserve for max_tokens, which real traffic
often sets higher.

A policy is a small object with a few hooks, so the scheduler's loop stays one and the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from sim.engine.kv_cache import KvCache
from sim.engine.request import Request

#: The running requests' (tokens still to generate, tokens generated, output length), as the
#: scheduler reports them.
RunningOutputs = Callable[[], Iterable[tuple[int, int, int]]]


class AdmissionPolicy(Protocol):
    name: str
    #: Whether "the head of the queue cannot be admitted" stays true while a decode run goes on
    #: (then the run can be one event); False when the policy's own state changes every step.
    stable_while_waiting: bool
    #: Whether waiting requests may be admitted in an iteration that had to preempt.
    admits_after_preemption: bool

    def begin_round(self) -> None:
        """A scheduling round starts (admissions in it are judged together)."""
        ...

    def allows(self, r: Request) -> bool:
        """May `r` be admitted now (beyond budget, slots and first-chunk blocks)?"""
        ...

    def admitted(self, r: Request) -> None: ...

    def admits_when_empty(self, r: Request) -> bool:
        """Would an empty replica ever admit `r`? (If not, it is rejected on arrival.)"""
        ...

    def left(self, r: Request) -> None:
        """`r` finished (or was preempted) and no longer holds its reservation."""
        ...

    def decoded(self, steps: int) -> None:
        """`steps` decode steps ran."""
        ...

    def preempted(self) -> None:
        """A running request was preempted (after it left the running set)."""
        ...

    def idle(self) -> None:
        """Nothing runs or waits any more."""
        ...


class _NoHooks:
    stable_while_waiting = True
    admits_after_preemption = True

    def begin_round(self) -> None:
        pass

    def admits_when_empty(self, r: Request) -> bool:
        return True        # the scheduler's KV-capacity check on arrival is this policy's too

    def admitted(self, r: Request) -> None:
        pass

    def left(self, r: Request) -> None:
        pass

    def decoded(self, steps: int) -> None:
        pass

    def preempted(self) -> None:
        pass

    def idle(self) -> None:
        pass


class Optimistic(_NoHooks):
    name = "optimistic"
    # vLLM V1 schedules waiting requests only when the running ones needed no preemption this step
    # (vllm/v1/core/sched/scheduler.py, Scheduler.schedule: "if not preempted_reqs:"); admitting
    # right after evicting only to evict again would thrash.
    admits_after_preemption = False

    def allows(self, r: Request) -> bool:
        return True


class GuaranteedNoEvict(_NoHooks):
    name = "no_evict"

    def __init__(self, kv: KvCache) -> None:
        self.kv = kv
        self.committed_blocks = 0   # blocks the running requests will hold at their last tokens

    def final_blocks(self, r: Request) -> int:
        return self.kv.final_blocks(r.input_tokens, r.output_tokens)

    def allows(self, r: Request) -> bool:
        return self.committed_blocks + self.final_blocks(r) <= self.kv.total_blocks

    def admitted(self, r: Request) -> None:
        self.committed_blocks += self.final_blocks(r)

    def left(self, r: Request) -> None:
        self.committed_blocks -= self.final_blocks(r)


class Conservative(_NoHooks):
    name = "conservative"
    stable_while_waiting = False
    INIT_RATIO = 0.7
    MIN_RATIO = 0.7 * 0.14
    DECAY_PER_STEP = (INIT_RATIO - MIN_RATIO) / 600
    CLIP_TOKENS = 4096
    RETRACT_STEPS = 20

    def __init__(self, kv: KvCache, running: RunningOutputs) -> None:
        self.kv, self.running = kv, running
        # ratio = max(MIN, base - DECAY x steps): an integer step count keeps jumps and single
        # steps bit-identical.
        self.base, self.steps = self.INIT_RATIO, 0
        self._reserved: float | None = None      # the running requests' expected needs, this round
        self._round_tokens = 0                   # expected outputs admitted in this round

    @property
    def ratio(self) -> float:
        return max(self.MIN_RATIO, self.base - self.DECAY_PER_STEP * self.steps)

    def begin_round(self) -> None:
        self._reserved, self._round_tokens = None, 0

    def allows(self, r: Request) -> bool:
        if self._reserved is None:
            self._reserved = self.ratio * sum(min(left, self.CLIP_TOKENS) for left, _, _ in self.running())
        need = (r.prefill_target - r.prefilled) + min(r.output_tokens - r.generated, self.CLIP_TOKENS)
        free_tokens = self.kv.free_blocks * self.kv.block_tokens
        return need < free_tokens - self._reserved - self._round_tokens

    def admitted(self, r: Request) -> None:
        self._round_tokens += min(r.output_tokens - r.generated, self.CLIP_TOKENS)

    def admits_when_empty(self, r: Request) -> bool:
        # SGLang's test is strict (need < free tokens): a request that needs the whole cache waits forever
        need = r.input_tokens + min(r.output_tokens, self.CLIP_TOKENS)
        return need < self.kv.total_blocks * self.kv.block_tokens

    def decoded(self, steps: int) -> None:
        self.steps += steps

    def preempted(self) -> None:
        outs = list(self.running())
        total = sum(out for _, _, out in outs)
        done = sum(gen for _, gen, _ in outs)
        self.base = min(1.0, (done + self.RETRACT_STEPS * len(outs)) / total) if total else self.INIT_RATIO
        self.steps = 0

    def idle(self) -> None:
        self.base, self.steps = self.INIT_RATIO, 0


def admission_policy(name: str, kv: KvCache, running: RunningOutputs) -> AdmissionPolicy:
    if name == "no_evict":
        return GuaranteedNoEvict(kv)
    if name == "optimistic":
        return Optimistic()
    if name == "conservative":
        return Conservative(kv, running)
    raise ValueError(f"unknown admission policy {name!r}")
