"""The set of decoding sequences of one replica, advanced in O(block size) per jump.

Every sequence in the decode set gains one KV token per decode step, so the replica keeps a
global step counter G and stores, per sequence, `base` with kv_tokens = base + G. From that:

* summed context at the step that brings the counter to G' is  sum(base) + B x G'  (linear);
* a sequence needs a new KV block at step G' exactly when (base + G') mod block == 1, so a
  histogram of base mod block (invariant while decoding) gives the blocks a run of steps needs
  without touching each sequence. In any `block` consecutive steps each sequence needs exactly
  one, so the blocks the next s steps need are  cum(s) = (s // block) B + R[s % block], where
  R[r] counts the allocations in the first r steps of a period;
* completions come off a heap keyed by the step at which the last token is sampled.

The KV a run holds over time follows from the same pattern (`allocation_pattern`); its exact
block-seconds are evaluated after the simulation (kv_integral.py).

The engine sees only the interface: membership (`add`, `remove`), the run ahead (`path`,
`blocks_needed`, `safe_steps`, `steps_to_next_finish`, `tokens_sampled`, `allocations_ahead`,
`allocation_pattern`) and
progress (`advance`, `pop_finished`). It never assumes one token per sequence per step itself, so
a speculative decode set (several tokens per step, drawn per request) can implement the same
interface.

Plain Python, no SimPy: it is unit-tested on its own.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate

from sim.engine.request import Request
from sim.perf.shape import LinearPath


class FinishOrder:
    """The finishes of a decode set's members, in order: a heap keyed by the global step at which
    each samples its last token (entries of members that left early are dropped lazily). Both decode
    sets keep `g` (the global step counter) and `_heap`, and say how a finished member leaves
    (`_retire`: it leaves the set and hands back the KV blocks it held)."""

    g: int
    _heap: list[tuple[int, int, Request]]

    def _retire(self, r: Request) -> int:
        raise NotImplementedError

    def _schedule_finish(self, r: Request) -> None:
        heapq.heappush(self._heap, (r.finish_g, r.seq, r))

    def steps_to_next_finish(self) -> int:
        """Steps until the next member samples its last token (0 if none)."""
        h = self._heap
        while h and not (h[0][2].in_decode and h[0][2].finish_g == h[0][0]):
            heapq.heappop(h)
        return h[0][0] - self.g if h else 0

    def pop_finished(self) -> list[tuple[Request, int]]:
        """Members whose last token was sampled at the current step, with the KV blocks they
        held; removed from the set."""
        out = []
        h = self._heap
        while h:
            fg, _, r = h[0]
            if not (r.in_decode and r.finish_g == fg):
                heapq.heappop(h)
                continue
            if fg > self.g:
                break
            heapq.heappop(h)
            out.append((r, self._retire(r)))
        return out


class DecodeSet(FinishOrder):
    """Decoding sequences that each gain one KV token and one output token per step."""

    def __init__(self, block_tokens: int, blocks_for: Callable[[int], int] | None = None) -> None:
        self.bt = block_tokens
        self.blocks_for = blocks_for or (lambda tokens: -(-tokens // block_tokens))
        self.g = 0                          # global decode step counter
        self.size = 0
        self.base_sum = 0
        self.hist = [0] * block_tokens      # count of members by base mod block
        self._heap: list[tuple[int, int, Request]] = []
        self._version = 0                   # bumped on every membership change
        self._hist_version = -1
        self._hist_tuple: tuple[int, ...] = ()

    # ---- membership -------------------------------------------------------------------------
    def add(self, r: Request, kv_tokens: int) -> None:
        """Join with `kv_tokens` in KV and r.generated tokens already sampled."""
        r.base = kv_tokens - self.g
        r.finish_g = self.g + (r.output_tokens - r.generated)
        r.in_decode = True
        self.size += 1
        self.base_sum += r.base
        self.hist[r.base % self.bt] += 1
        self._version += 1
        self._schedule_finish(r)

    def remove(self, r: Request) -> int:
        """Leave the set (completion or preemption); returns the KV tokens it held.
        Heap entries are dropped lazily."""
        r.in_decode = False
        self.size -= 1
        self.base_sum -= r.base
        self.hist[r.base % self.bt] -= 1
        self._version += 1
        r.generated = r.output_tokens - (r.finish_g - self.g)
        return r.base + self.g

    def held_blocks(self, r: Request) -> int:
        """KV blocks a member holds now."""
        return self.blocks_for(r.base + self.g)

    def kv_tokens(self, r: Request) -> int:
        """KV tokens a member holds now."""
        return r.base + self.g

    def generated(self, r: Request) -> int:
        """Output tokens a member has sampled so far."""
        return r.output_tokens - (r.finish_g - self.g)

    # ---- queries ------------------------------------------------------------------------------
    def ctx_sum_at(self, g_after: int) -> int:
        """Summed KV length over members at the step that brings the counter to g_after."""
        return self.base_sum + self.size * g_after

    def next_ctx_sum(self) -> int:
        """Summed KV length of the next step (its new tokens included)."""
        return self.base_sum + self.size * (self.g + 1)

    def path(self) -> LinearPath:
        """Summed context at steps j = 0, 1, ... of a run starting with the next step."""
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (once per decode run).
        return tuple.__new__(LinearPath, (float(self.base_sum + self.size * (self.g + 1)), float(self.size)))

    def tokens_sampled(self, n_steps: int) -> int:
        """Output tokens the next n steps sample (one per member per step)."""
        return self.size * n_steps

    def allocations_ahead(self) -> tuple[int, ...]:
        """Blocks allocated at each of the next `block` steps (steps g+1 .. g+block); the same
        pattern repeats every `block` steps while the membership is unchanged."""
        hist, s0 = self.allocation_pattern()
        # Step g+1+r allocates for members with base = s0 - r (mod bt): the histogram read
        # backwards from index s0 (slices keep this in C).
        return hist[s0::-1] + hist[:s0:-1]

    def allocation_pattern(self) -> tuple[tuple[int, ...], int]:
        """(histogram, s0): members by base mod block, as a tuple that stays the same object until
        the membership changes, and the phase s0 = -g mod block. Step g+1+r allocates
        histogram[(s0 - r) mod block] blocks, i.e. allocations_ahead()[r]."""
        if self._hist_version != self._version:
            self._hist_version = self._version
            self._hist_tuple = tuple(self.hist)
        return self._hist_tuple, -self.g % self.bt

    def blocks_needed(self, n_steps: int) -> int:
        """New KV blocks the next n steps allocate (steps g+1 .. g+n)."""
        if n_steps <= 0 or self.size == 0:
            return 0
        bt = self.bt
        s0 = -self.g % bt
        if n_steps == 1:                            # every single iteration asks for one step
            return self.hist[s0] if bt > 1 else self.size
        full, rest = divmod(n_steps, bt)
        if rest == 0:
            return full * self.size
        # Steps g+1 .. g+rest allocate for bases s0, s0-1, .., s0-rest+1 (mod bt): a window of the
        # histogram, summed by slices in C.
        hist, lo = self.hist, s0 - rest + 1
        part = sum(hist[lo:s0 + 1]) if lo >= 0 else sum(hist[:s0 + 1]) + sum(hist[lo + bt:])
        return full * self.size + part

    def safe_steps(self, free_blocks: int, cap: int) -> int:
        """Largest n <= cap such that the next n steps need at most free_blocks new blocks."""
        if self.size == 0:
            return cap
        full = free_blocks // self.size
        if full * self.bt >= cap:
            return cap
        left = free_blocks - full * self.size
        # Allocations within a period are non-decreasing in the step and reach size > left:
        # the last r in [0, bt) whose first r steps need at most `left`.
        cum = [0, *accumulate(self.allocations_ahead())]
        rest = bisect_right(cum, left, 0, self.bt) - 1
        return min(cap, full * self.bt + rest)

    # ---- progress ---------------------------------------------------------------------------
    def advance(self, n_steps: int) -> None:
        """n decode steps happened: every member gained n KV and n output tokens."""
        self.g += n_steps

    def _retire(self, r: Request) -> int:
        return self.blocks_for(self.remove(r))
