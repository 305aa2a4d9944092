"""The set of decoding sequences of one replica, advanced in O(block size) per jump.

Every sequence in the decode set gains one KV token per decode step, so the replica keeps a
global step counter G and stores, per sequence, `base` with kv_tokens = base + G. From that:

* summed context at the step that brings the counter to G' is  sum(base) + B x G'  (linear);
* a sequence needs a new KV block at step G' exactly when (base + G') mod block == 1, so a
  histogram of base mod block (invariant while decoding) gives the blocks a run of steps needs
  without touching each sequence. In any `block` consecutive steps each sequence needs exactly
  one, so the blocks the next s steps need are  cum(s) = (s // block) B + R[s % block], where
  R[r] (the "period profile") counts the allocations in the first r steps of a period;
* completions come off a heap keyed by the step at which the last token is sampled.

KV held over a run, exactly: during step s of a run the replica holds U0 + cum(s) blocks, and the
step lasts a + b S_{s-1} on each affine piece of the step-time model (perf.shape.Segment), so the
block-seconds of the run are  U0 T_n + sum_s (alpha + beta s) cum(s), and sums of cum(s) and
s cum(s) over any range have closed forms in the period profile (integer arithmetic, so no
rounding): O(block) per run, the same as a per-step simulation's sum of level x step time.

The engine sees only the interface: membership (`add`, `remove`), the run ahead (`path`,
`blocks_needed`, `safe_steps`, `steps_to_next_finish`, `tokens_sampled`, `block_seconds`) and
progress (`advance`, `pop_finished`). It never assumes one token per sequence per step itself, so
a speculative decode set (several tokens per step, drawn per request) can implement the same
interface.

Plain Python, no SimPy: it is unit-tested on its own.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Sequence

from sim.engine.request import Request
from sim.perf.shape import LinearPath, Segment


class DecodeSet:
    """Decoding sequences that each gain one KV token and one output token per step."""

    def __init__(self, block_tokens: int) -> None:
        self.bt = block_tokens
        self.g = 0                          # global decode step counter
        self.size = 0
        self.base_sum = 0
        self.hist = [0] * block_tokens      # count of members by base mod block
        self._heap: list[tuple[int, int, Request]] = []
        self._version = 0                   # bumped on every membership change
        self._profile_key: tuple[int, int] = (-1, -1)
        self._profile: tuple[list[int], list[int], list[int]] = ([], [], [])

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
        heapq.heappush(self._heap, (r.finish_g, r.seq, r))

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

    def steps_to_next_finish(self) -> int:
        h = self._heap
        while h and not (h[0][2].in_decode and h[0][2].finish_g == h[0][0]):
            heapq.heappop(h)
        return h[0][0] - self.g if h else 0

    def _period(self) -> tuple[list[int], list[int], list[int]]:
        """The period profile from the next step on: R[r] = blocks the first r steps allocate
        (r = 0..block), and the prefix sums of R[r] and r R[r] (r = 0..block-1)."""
        key = (self.g % self.bt, self._version)
        if key != self._profile_key:
            bt, hist, g = self.bt, self.hist, self.g
            R = [0] * (bt + 1)
            p0 = [0] * bt
            p1 = [0] * bt
            acc = s0 = s1 = 0
            for t in range(1, bt + 1):
                acc += hist[(1 - (g + t)) % bt]
                R[t] = acc
                if t < bt:
                    s0 += acc
                    s1 += t * acc
                    p0[t] = s0
                    p1[t] = s1
            self._profile_key, self._profile = key, (R, p0, p1)
        return self._profile

    def blocks_needed(self, n_steps: int) -> int:
        """New KV blocks the next n steps allocate (steps g+1 .. g+n)."""
        if n_steps <= 0 or self.size == 0:
            return 0
        full, rest = divmod(n_steps, self.bt)
        return full * self.size + self._period()[0][rest]

    def safe_steps(self, free_blocks: int, cap: int) -> int:
        """Largest n <= cap such that the next n steps need at most free_blocks new blocks."""
        if self.size == 0:
            return cap
        full = free_blocks // self.size
        if full * self.bt >= cap:
            return cap
        left = free_blocks - full * self.size
        # R is non-decreasing and R[bt] = size > left: the last r in [0, bt) with R[r] <= left.
        rest = bisect_right(self._period()[0], left, 0, self.bt) - 1
        return min(cap, full * self.bt + rest)

    def _growth_sums(self, n: int) -> tuple[int, int]:
        """(sum of cum(s), sum of s cum(s)) over steps s = 0..n, cum(s) = blocks_needed(s)."""
        if n <= 0:
            return 0, 0
        R, p0, p1 = self._period()
        bt, b = self.bt, self.size
        q, rem = divmod(n, bt)
        per0, per1 = p0[bt - 1], p1[bt - 1]           # sums over one period (r = 0..bt-1)
        s1, s2 = q * (q - 1) // 2, (q - 1) * q * (2 * q - 1) // 6
        g0 = bt * b * s1 + q * per0 + (rem + 1) * q * b + p0[rem]
        g1 = (bt * bt * b * s2 + (bt * per0 + b * (bt * (bt - 1) // 2)) * s1 + q * per1
              + (rem + 1) * q * q * bt * b + q * bt * p0[rem] + q * b * (rem * (rem + 1) // 2) + p1[rem])
        return g0, g1

    def block_seconds(self, segments: Sequence[Segment], path: LinearPath, used_before: int, run_s: float) -> float:
        """Block-seconds of KV held over a run of steps along `path` whose step times are the
        affine `segments`, starting with `used_before` blocks allocated (see the module docstring)."""
        total = used_before * run_s
        for lo, hi, a, b in segments:
            # Step s = j + 1 (j in [lo, hi)) lasts a + b (first + slope (s - 1)) = alpha + beta s.
            beta = b * path.slope
            alpha = a + b * path.first - beta
            g0_hi, g1_hi = self._growth_sums(hi)
            g0_lo, g1_lo = self._growth_sums(lo)
            total += alpha * (g0_hi - g0_lo) + beta * (g1_hi - g1_lo)
        return total

    # ---- progress ---------------------------------------------------------------------------
    def advance(self, n_steps: int) -> None:
        """n decode steps happened: every member gained n KV and n output tokens."""
        self.g += n_steps

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
