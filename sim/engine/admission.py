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

A policy is a small object with three hooks, so the scheduler's loop stays one and the same.
"""

from __future__ import annotations

from typing import Protocol

from sim.engine.kv_cache import KvCache
from sim.engine.request import Request


class AdmissionPolicy(Protocol):
    name: str

    def allows(self, r: Request) -> bool:
        """May `r` be admitted now (beyond budget, slots and first-chunk blocks)?"""
        ...

    def admitted(self, r: Request) -> None: ...

    def left(self, r: Request) -> None:
        """`r` finished (or was preempted) and no longer holds its reservation."""
        ...


class Optimistic:
    name = "optimistic"

    def allows(self, r: Request) -> bool:
        return True

    def admitted(self, r: Request) -> None:
        pass

    def left(self, r: Request) -> None:
        pass


class GuaranteedNoEvict:
    name = "no_evict"

    def __init__(self, kv: KvCache) -> None:
        self.kv = kv
        self.committed_blocks = 0   # blocks the running requests will hold at their last tokens

    def final_blocks(self, r: Request) -> int:
        return self.kv.blocks_for(r.input_tokens + r.output_tokens - 1)

    def allows(self, r: Request) -> bool:
        return self.committed_blocks + self.final_blocks(r) <= self.kv.total_blocks

    def admitted(self, r: Request) -> None:
        self.committed_blocks += self.final_blocks(r)

    def left(self, r: Request) -> None:
        self.committed_blocks -= self.final_blocks(r)


def admission_policy(name: str, kv: KvCache) -> AdmissionPolicy:
    if name == "no_evict":
        return GuaranteedNoEvict(kv)
    if name == "optimistic":
        return Optimistic()
    raise ValueError(f"unknown admission policy {name!r}")
