"""The set of decoding sequences of one replica, advanced in O(block size) per jump.

Every sequence in the decode set gains one KV token per decode step, so the replica keeps a
global step counter G and stores, per sequence, `base` with kv_tokens = base + G. From that:

* summed context at the step that brings the counter to G' is  sum(base) + B x G'  (linear);
* a sequence needs a new KV block at step G' exactly when (base + G') mod block == 1, so a
  histogram of base mod block (invariant while decoding) gives the blocks a run of steps needs
  without touching each sequence; in any `block` consecutive steps each sequence needs exactly one;
* completions come off a heap keyed by the step at which the last token is sampled.

The engine sees only the interface: membership (`add`, `remove`), the run ahead (`path`,
`blocks_needed`, `safe_steps`, `steps_to_next_finish`, `tokens_sampled`) and progress (`advance`,
`pop_finished`). It never assumes one token per sequence per step itself, so a speculative decode
set (several tokens per step, drawn per request) can implement the same interface.

Plain Python, no SimPy: it is unit-tested on its own.
"""

from __future__ import annotations

import heapq

from sim.engine.request import Request
from sim.perf.shape import LinearPath


class DecodeSet:
    """Decoding sequences that each gain one KV token and one output token per step."""

    def __init__(self, block_tokens: int) -> None:
        self.bt = block_tokens
        self.g = 0                          # global decode step counter
        self.size = 0
        self.base_sum = 0
        self.hist = [0] * block_tokens      # count of members by base mod block
        self._heap: list[tuple[int, int, Request]] = []

    # ---- membership -------------------------------------------------------------------------
    def add(self, r: Request, kv_tokens: int) -> None:
        """Join with `kv_tokens` in KV and r.generated tokens already sampled."""
        r.base = kv_tokens - self.g
        r.finish_g = self.g + (r.output_tokens - r.generated)
        r.in_decode = True
        self.size += 1
        self.base_sum += r.base
        self.hist[r.base % self.bt] += 1
        heapq.heappush(self._heap, (r.finish_g, r.seq, r))

    def remove(self, r: Request) -> int:
        """Leave the set (completion or preemption); returns the KV tokens it held.
        Heap entries are dropped lazily."""
        r.in_decode = False
        self.size -= 1
        self.base_sum -= r.base
        self.hist[r.base % self.bt] -= 1
        r.generated = r.output_tokens - (r.finish_g - self.g)
        return r.base + self.g

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
        return LinearPath(float(self.ctx_sum_at(self.g + 1)), float(self.size))

    def tokens_sampled(self, n_steps: int) -> int:
        """Output tokens the next n steps sample (one per member per step)."""
        return self.size * n_steps

    # ---- progress ---------------------------------------------------------------------------
    def advance(self, n_steps: int) -> None:
        """n decode steps happened: every member gained n KV and n output tokens."""
        self.g += n_steps

    def steps_to_next_finish(self) -> int:
        h = self._heap
        while h and not (h[0][2].in_decode and h[0][2].finish_g == h[0][0]):
            heapq.heappop(h)
        return h[0][0] - self.g if h else 0

    def blocks_needed(self, n_steps: int) -> int:
        """New KV blocks the next n steps allocate (steps g+1 .. g+n)."""
        if n_steps <= 0 or self.size == 0:
            return 0
        full, rest = divmod(n_steps, self.bt)
        total = full * self.size
        bt, hist, g = self.bt, self.hist, self.g + full * self.bt
        for s in range(1, rest + 1):
            total += hist[(1 - (g + s)) % bt]
        return total

    def safe_steps(self, free_blocks: int, cap: int) -> int:
        """Largest n <= cap such that the next n steps need at most free_blocks new blocks."""
        if self.size == 0:
            return cap
        full = free_blocks // self.size
        if full * self.bt >= cap:
            return cap
        left = free_blocks - full * self.size
        n = full * self.bt
        bt, hist = self.bt, self.hist
        g = self.g + n
        while n < cap:
            need = hist[(1 - (g + 1)) % bt]
            if need > left:
                break
            left -= need
            n += 1
            g += 1
        return n

    def pop_finished(self) -> list[tuple[Request, int]]:
        """Members whose last token was sampled at the current step, with the KV tokens they
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
            out.append((r, self.remove(r)))
        return out
