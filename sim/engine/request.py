"""One inference request and its life-cycle state inside a replica.

A request arrives with `input_tokens` of prompt and asks for `output_tokens`. The iteration that
finishes its prefill samples output token 1 (that instant is the first token, TTFT); each later
decode iteration feeds the last token back, writes its KV and samples one more. So a request's KV
holds prompt + generated - 1 tokens while decoding, and it finishes after output_tokens - 1 decode
steps. On preemption by recompute its prompt becomes prompt + generated and it is prefilled again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from sim.engine.spec_decode_set import Membership

from sim.metrics.records import Status


class Request:
    """Mutable per-request state (slots for speed: the engine touches these in its inner loop)."""

    __slots__ = (
        "id", "arrival_s", "input_tokens", "output_tokens", "replica", "status", "reject_reason",
        "generated", "prefill_target", "prefilled", "swapped_kv", "blocks", "admit_s", "first_token_s",
        "finish_s", "preemptions", "input_counted", "seq", "base", "finish_g", "in_decode", "on_done", "hash_ids",
        "sampled_before_start", "sampled_before_end", "spec_cum", "spec_pos", "spec_member", "pre_generated",
        "pinned", "cached_tokens", "loaded_tokens", "load_s", "ready_s", "swap_chunks", "tier_tokens",
        "pending_cached",
    )

    def __init__(self, rid: int, arrival_s: float, input_tokens: int, output_tokens: int,
                 on_done: Callable[[Request], None] | None = None,
                 hash_ids: tuple[int, ...] | None = None) -> None:
        self.id = rid
        self.arrival_s = arrival_s
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.replica = -1
        self.status = Status.WAITING
        self.reject_reason = ""
        self.generated = 0          # output tokens sampled so far
        self.pre_generated = 0      # of those, sampled before it reached this pool (a decode pool: 1)
        self.prefill_target = input_tokens  # tokens the current prefill must cover
        self.prefilled = 0          # tokens of prefill_target already in KV
        self.swapped_kv = 0         # KV tokens held in host memory after a swap preemption
        self.blocks = 0             # KV blocks held while not in the decode set
        self.admit_s = -1.0         # first time scheduled
        self.first_token_s = -1.0
        self.finish_s = -1.0
        self.preemptions = 0
        self.input_counted = 0      # prompt tokens already counted as processed input
        self.seq = 0                # admission order on its replica (LIFO preemption)
        self.base = 0               # decode set: kv_tokens = base + G (global decode step)
        self.finish_g = 0           # decode set: G at which the last token is sampled
        self.in_decode = False
        self.on_done = on_done
        self.hash_ids = hash_ids    # hashes of its KV's full chunks (kv_tiers.py), for prefix reuse
        self.pinned: list[int] | tuple[()] = ()  # prefix chunks it uses in the HBM prefix cache (shared blocks)
        self.cached_tokens = 0      # prompt tokens served for the first time from a cache (HBM or loaded)
        self.pending_cached = 0     # of those, taken at its last admission and not counted yet
        self.loaded_tokens = 0      # of those, loaded from a tier below HBM
        self.load_s = 0.0           # seconds it waited for those loads
        self.ready_s = 0.0          # when its loads end (while loading)
        self.swap_chunks = 0        # room it holds in the host tier while swapped out
        self.tier_tokens: list[int] | None = None   # of the loaded tokens, how many came from each tier
        # Output tokens sampled before the measurement window's start / end, noted at those
        # instants if the request was in the system then (-1: it was not).
        self.sampled_before_start = -1
        self.sampled_before_end = -1
        # Speculative decoding (spec_decode_set.py): tokens per verification step drawn for the whole
        # output (cumulative), the steps consumed so far, and the state of its current membership.
        self.spec_cum: np.ndarray | None = None
        self.spec_pos = 0
        self.spec_member: Membership | None = None
