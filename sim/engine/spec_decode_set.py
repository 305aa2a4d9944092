"""The decode set under speculative decoding: every step verifies k drafts per sequence and each
sequence gains its own, pre-sampled, number of tokens.

A member's tokens per verification step are drawn when it first decodes (speculation.py), so from
the moment it joins its whole future is known: at its own step j (1..L) it computes q = k + 1
query tokens over a context of kv_(j-1) + q tokens (its KV before the step, plus the last token
and the k drafts the step writes), holds the blocks of that context (the drafts take KV slots
while they are verified), and has sampled tok_j tokens since it joined, finishing at step L.

When a member joins, the set adds its future into three arrays indexed by the global step G (one
numpy operation each over its own steps): the summed context S[G], the blocks held H[G] and the
tokens sampled since joining Tok[G], each summed over the members active at step G. With the
current totals of the last two (`held_now`, `tok_now`), every question the engine asks about the
steps ahead is a lookup or a search: the blocks the next n steps allocate are H[g + n] - held_now,
the tokens they sample Tok[g + n] - tok_now, the steps that fit in the free blocks a search in H,
and the context path a view of S (`PrefixPath`). A stable batch still runs as one event whose
duration costs a few array operations (C loops over its steps), never Python work per step. Steps
that are done never change again, so the arrays double as the history from which the runs' KV
block-seconds and utilization are evaluated in batches (spec_runs.py), after which the engine drops
it (`drop_history`): memory stays bounded however long the simulation.

Same interface as decode_set.DecodeSet (the engine does not know which it has); both keep their
finishes in order with decode_set.FinishOrder. Plain Python and numpy, no SimPy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from sim.engine.decode_set import FinishOrder
from sim.engine.request import Request
from sim.perf.shape import PrefixPath
from sim.speculation import AcceptanceSampler

_INITIAL = 4096
CTX, HELD, TOK = 0, 1, 2


#: Done steps the speculative decode set keeps before they are dropped (its owner evaluates the
#: integrals of the runs over them first); 24 bytes each, and the array doubles as it grows, so at
#: most about 50 MB per decode set. Dropping copies the steps ahead: done this rarely, its cost per
#: step stays negligible.
SPEC_HISTORY_STEPS = 1 << 20

class Membership(NamedTuple):
    """A member's stay in the set (Request.spec_member)."""

    join_step: int          # the global step counter when it joined
    kv_tokens: int          # KV tokens it held then
    generated: int          # output tokens it had sampled then
    own: np.ndarray         # columns CTX, HELD, TOK over its own steps 1..L (row j: step j + 1)
    held_blocks: int        # blocks it held when it joined
    last_tokens: int        # tokens its last step samples (what is left of its output by then)


class SpecDecodeSet(FinishOrder):
    """Decoding sequences under speculative decoding (see the module docstring)."""

    def __init__(self, block_tokens: int, blocks_for: Callable[[int], int], sampler: AcceptanceSampler) -> None:
        self.bt = block_tokens
        self.blocks_for = blocks_for
        self.sampling = sampler
        self.k = sampler.k
        self.q = sampler.k + 1
        self.g = 0
        self.origin = 0         # the global step in column 0 of the arrays (steps before it dropped)
        self.size = 0
        self._heap: list[tuple[int, int, Request]] = []
        # By global step G (column G; step 0 never runs), over the members active at step G: summed
        # context, blocks held, tokens sampled since each joined (rows CTX, HELD, TOK).
        # One row per step, its three numbers side by side: a member's steps are one contiguous block.
        self.by_step = np.zeros((_INITIAL, 3), dtype=np.int64)
        self.ctx, self.held, self.tok = self.by_step.T
        self.held_now = 0       # blocks the members hold now
        self.tok_now = 0        # tokens the members have sampled since joining
        # Drafts not proposed at finishing members' last steps (k + 1 - the tokens they still needed),
        # since the engine last read it.
        self.unproposed = 0
        self._version = 0
        self._path_key: tuple[int, int] = (-1, -1)
        self._path: PrefixPath | None = None
        # the sliding-window blocks blocks_for adds to any non-empty KV
        self._fixed_blocks = blocks_for(1) - 1

    def _ensure(self, last_g: int) -> None:
        """Room for global steps up to last_g (the arrays double)."""
        cap = self.by_step.shape[0]
        if last_g - self.origin < cap:
            return
        new = np.zeros((max(2 * cap, last_g - self.origin + 1), 3), dtype=np.int64)
        new[:cap] = self.by_step
        self.by_step = new
        self.ctx, self.held, self.tok = new.T

    def drop_history(self) -> None:
        """Forget the steps done (after their runs' integrals were evaluated): the arrays keep the
        steps ahead only, so their memory stays bounded however long the simulation."""
        drop = self.g + 1 - self.origin
        if drop <= 0:
            return
        buf = self.by_step
        keep = buf.shape[0] - drop
        buf[:keep] = buf[drop:]                 # numpy copies overlapping slices correctly
        buf[keep:] = 0
        self.origin += drop
        self._path_key = (-1, -1)

    # ---- membership -------------------------------------------------------------------------
    def add(self, r: Request, kv_tokens: int) -> None:
        """Join with `kv_tokens` in KV and r.generated tokens already sampled."""
        if r.spec_cum is None:
            r.spec_cum = self.sampling.cumulative_tokens(r.id, r.output_tokens - r.generated)
            r.spec_pos = 0
        cum, pos = r.spec_cum, r.spec_pos
        left = r.output_tokens - r.generated
        base = int(cum[pos])
        steps = int(cum.searchsorted(base + left)) - pos
        own = np.empty((steps, 3), dtype=np.int64)   # its columns CTX, HELD, TOK over its steps
        ctx, held, after = own.T
        np.add(cum[pos:pos + steps], kv_tokens + self.q - base, out=ctx)   # KV before the step + the q it writes
        np.add(ctx, self.bt - 1 + self._fixed_blocks * self.bt, out=held)  # blocks held during the step
        held //= self.bt                                                    # (the drafts' slots included)
        np.subtract(cum[pos + 1:pos + steps + 1], base, out=after)          # tokens sampled since joining
        after[-1] = left                              # the last step yields only what is left
        g = self.g
        self._ensure(g + steps)
        col = g + 1 - self.origin
        self.by_step[col:col + steps] += own
        held0 = self.blocks_for(kv_tokens)
        self.held_now += held0
        last = left - (int(cum[pos + steps - 1]) - base) if steps > 1 else left
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (once per request).
        r.spec_member = tuple.__new__(Membership, (g, kv_tokens, r.generated, own, held0, last))
        r.finish_g = g + steps
        r.in_decode = True
        self.size += 1
        self._version += 1
        self._schedule_finish(r)

    def _own(self, r: Request) -> tuple[int, int]:
        """(tokens sampled since joining, blocks held) of a member now."""
        m = r.spec_member
        assert m is not None, "not in the decode set"
        join, _, _, own, held0, _ = m
        j = self.g - join
        return (int(own[j - 1, TOK]), int(own[j - 1, HELD])) if j else (0, held0)

    def remove(self, r: Request) -> int:
        """Leave the set (completion or preemption); returns the KV tokens it held."""
        return self._leave(r)[0]

    def _leave(self, r: Request) -> tuple[int, int]:
        """Leave the set: (KV tokens, blocks) it held."""
        m = r.spec_member
        assert m is not None, "not in the decode set"
        join, kv0, gen0, own, _, _ = m
        j = self.g - join
        tok, blocks = self._own(r)
        steps = own.shape[0]
        if j < steps:                                # preempted: take its future back out
            o = self.origin
            self.by_step[self.g + 1 - o:join + 1 + steps - o] -= own[j:]
        self.held_now -= blocks
        self.tok_now -= tok
        r.in_decode = False
        r.generated = gen0 + tok
        r.spec_pos += j
        self.size -= 1
        self._version += 1
        return kv0 + tok, blocks

    def held_blocks(self, r: Request) -> int:
        """Blocks a member holds now (its KV, and the drafts' slots of its last step)."""
        return self._own(r)[1]

    def kv_tokens(self, r: Request) -> int:
        """KV tokens a member holds now."""
        tok = self._own(r)[0]
        assert r.spec_member is not None
        return r.spec_member.kv_tokens + tok

    def generated(self, r: Request) -> int:
        """Output tokens a member has sampled so far."""
        tok = self._own(r)[0]
        assert r.spec_member is not None
        return r.spec_member.generated + tok

    # ---- queries ------------------------------------------------------------------------------
    def next_ctx_sum(self) -> int:
        """Summed context of the next step (its new tokens included)."""
        return int(self.ctx[self.g + 1 - self.origin])

    def path(self) -> PrefixPath:
        """Summed context at steps j = 0, 1, ... of a run starting with the next step, up to the
        next finish."""
        key = (self._version, self.g)
        if self._path_key != key or self._path is None:
            self._path = PrefixPath(self.ctx, self.g + 1 - self.origin, self.steps_to_next_finish())
            self._path_key = key
        return self._path

    def tokens_sampled(self, n_steps: int) -> int:
        """Output tokens the next n steps sample (members never finish inside them: n <= the steps
        to the next finish)."""
        return int(self.tok[self.g + n_steps - self.origin]) - self.tok_now if n_steps > 0 and self.size else 0

    def blocks_needed(self, n_steps: int) -> int:
        """New KV blocks the next n steps allocate (n <= the steps to the next finish)."""
        return int(self.held[self.g + n_steps - self.origin]) - self.held_now if n_steps > 0 and self.size else 0

    def safe_steps(self, free_blocks: int, cap: int) -> int:
        """Largest n <= cap such that the next n steps need at most free_blocks new blocks."""
        if self.size == 0 or cap <= 0:
            return max(cap, 0)
        col = self.g - self.origin
        limit = free_blocks + self.held_now
        if self.held[col + cap] <= limit:       # the usual case: every step up to the cap fits
            return cap
        return int(self.held[col + 1:col + 1 + cap].searchsorted(limit, side="right"))

    # ---- progress ---------------------------------------------------------------------------
    def advance(self, n_steps: int) -> None:
        """n steps happened (no member joined or left in between)."""
        if n_steps > 0 and self.size:
            self.g += n_steps
            self.held_now = int(self.held[self.g - self.origin])
            self.tok_now = int(self.tok[self.g - self.origin])
        else:
            self.g += n_steps

    def _retire(self, r: Request) -> int:
        # Its last step proposed only the drafts it needed: k + 1 - those tokens fewer than k.
        assert r.spec_member is not None
        self.unproposed += self.q - r.spec_member.last_tokens
        blocks = self._leave(r)[1]
        r.spec_cum = r.spec_member = None      # done: its draws are no longer needed
        return blocks
