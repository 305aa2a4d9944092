"""Iteration-level continuous batching over paged KV: which requests run in the next iteration.

The policy follows vLLM's scheduler (V1 with chunked prefill, V0 without):

* chunked prefill on: each iteration runs every decoding sequence (one token each, or k + 1 under
  speculative decoding: the last token and the k drafts it verifies), then
  continues partial prefills, then admits waiting requests FCFS, cutting prompts into chunks so
  the iteration holds at most `max_num_batched_tokens` tokens and `max_num_seqs` sequences;
* chunked prefill off, `separate` (vLLM V0): an iteration is either prefill-only (whole prompts,
  FCFS, within the token budget; a lone prompt above the budget runs by itself) or decode-only,
  prefills first;
* chunked prefill off, `mixed` (TensorRT-LLM's in-flight batching without chunked context): each
  iteration runs every decoding sequence and adds whole prompts FCFS while they fit in the rest of
  the token budget; a prompt longer than the whole budget is rejected, as TensorRT-LLM's LLM API
  rejects it (a prompt regrown past the budget by a recompute runs alone);
* a request is admitted only if its first chunk fits while keeping the watermark of KV blocks free,
  and its admission policy allows it (admission.py: optimistic as vLLM, or guaranteed-no-evict as
  TensorRT-LLM's default, which reserves the blocks of every running request's whole output);
* when a decode step needs a block and none is free, the most recently admitted running request
  is preempted (LIFO): `recompute` frees its blocks and prefills prompt + generated tokens again
  later; `swap` copies its KV to host memory and back when it is resumed;
* with prefix caching (kv_tiers.py), a request admitted for the first time takes the head of its
  prompt from the caches: chunks resident in HBM are shared, chunks in a lower tier are loaded over
  its link (when that beats recomputing them). Its prefill starts after them. A load either
  overlaps the batch (the request waits, `loading`, while the others run) or stalls the iteration
  that admits it. Chunks a request computes join the HBM cache (and the write-through tiers); when
  it leaves, they stay cached in free blocks until an allocation evicts them;
* the waiting queue is bounded (`max_waiting`, online traffic only: an offline burst is queued
  whole); a request is rejected, with its reason, when the queue is full, when prompt + output
  exceed the model's context, when it could not fit in the KV cache even alone, or (mixed whole
  prompts) when its prompt exceeds the token budget.

No SimPy here: `schedule(now)` decides an iteration from the state and allocates its blocks,
`finish_iteration(plan, now)` applies its effects when it ends, and `finish_decode_run(n, now)` does
the same for n decode-only steps at once; the requests they finish are left in `finished`. The
replica process (replica.py) calls them and keeps time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sim.engine.admission import admission_policy
from sim.engine.decode_set import DecodeSet
from sim.engine.kv_cache import KvCache
from sim.engine.request import Request
from sim.engine.spec_decode_set import SpecDecodeSet
from sim.metrics.records import LevelLog, Status
from sim.perf.shape import Chunk
from sim.speculation import AcceptanceSampler


@dataclass(slots=True)
class IterationPlan:
    """What the next iteration does: prefill chunks, swapped-in decodes, a decode step or not,
    seconds of KV transfer, and how many waiting requests were admitted."""

    chunks: list[tuple[Request, int]] = field(default_factory=list)
    resumed: list[Request] = field(default_factory=list)
    decode: bool = False
    swap_s: float = 0.0
    admitted: int = 0
    load_wait_s: float = 0.0   # the iteration waits this long for its link transfers (loads, swaps)

    @property
    def idle(self) -> bool:
        return not self.chunks and not self.decode and not self.admitted

    @property
    def computes_nothing(self) -> bool:
        """No prefill, decode, resumed swap or transfer: only admissions whose loads are in flight."""
        return not self.chunks and not self.decode and not self.resumed and not self.swap_s and not self.load_wait_s

    def chunk_shapes(self) -> tuple[Chunk, ...]:
        """The prefill chunks as the step model prices them (prefix, new tokens, samples a token)."""
        # tuple.__new__ skips the NamedTuple's Python-level __new__ (a few per iteration).
        return tuple([tuple.__new__(Chunk, (r.prefilled, new, r.prefilled + new >= r.prefill_target))
                      for r, new in self.chunks])


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool
    max_waiting: int | None          # None: unbounded (offline bursts)
    preemption: str                  # "recompute" or "swap"
    max_context_tokens: int
    admission: str = "optimistic"    # admission.py: "optimistic", "no_evict" or "conservative"
    mixed_prefill: bool = False      # without chunking: whole prompts join the decodes' iteration
    kv_arrives: bool = False         # a decode pool: each request arrives with its prompt's KV made
    #                                  by a prefill pool elsewhere, and its first token


def arrive_with_kv(r: Request) -> None:
    """A request reaching a decode pool: a prefill pool has computed its prompt's KV and sampled its
    first token, so it holds the prompt's KV ready to load (as a swapped-out request does, without
    the transfer: the KV came with it) and has one token generated elsewhere."""
    r.prefilled = r.prefill_target = r.input_tokens
    r.swapped_kv = r.input_tokens
    r.input_counted = r.input_tokens        # its prompt was processed by the prefill pool
    r.generated = r.pre_generated = 1


def _seq_of(r: Request) -> int:
    return r.seq


class BatchScheduler:
    """The queues and running set of one replica, and the vLLM-style policy over them."""

    def __init__(self, kv: KvCache, limits: BatchLimits, levels: LevelLog | None = None, replica: int = 0,
                 speculation: AcceptanceSampler | None = None) -> None:
        self.kv = kv
        self.levels = levels if levels is not None else LevelLog()
        self._log_level, self._pack_level = self.levels.extend, self.levels.pack
        self.replica = replica
        self._noted_waiting, self._noted_running = 0, 0   # levels last logged
        self.finished: list[Request] = []        # finished by the last call; the replica drains it
        self.limits = limits
        self.swap = limits.preemption == "swap"
        self.admission = admission_policy(limits.admission, kv, self._running_outputs)
        self.decode_set: DecodeSet | SpecDecodeSet = DecodeSet(kv.block_tokens, kv.blocks_for) if speculation is None \
            else SpecDecodeSet(kv.block_tokens, kv.blocks_for, speculation)
        # Tokens a decoding sequence puts in an iteration's token budget: its last token, and the
        # k drafts it verifies under speculative decoding (vLLM counts both as scheduled tokens).
        self.q = 1 if speculation is None else speculation.k + 1
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}   # insertion order = admission order
        self.prefilling: list[Request] = []      # running requests still in prefill, admission order
        self.waiting_tokens = 0
        self.outstanding = 0                     # accepted and not finished: waiting + running
        self._seq = 0
        # Prefix caching and the tiers below HBM (None: neither).
        self.tiers = kv.tiers
        self.prefix = kv.tiers if kv.tiers is not None and kv.tiers.prefix_caching else None
        self.loading: list[Request] = []         # admitted, waiting for their loads (overlapped loads)
        self._transfer_end = 0.0                 # the latest link transfer this round waits for

    # ---- intake ---------------------------------------------------------------------------
    def reject_reason(self, r: Request) -> str:
        lim = self.limits
        if r.input_tokens + r.output_tokens > lim.max_context_tokens:
            return "context_too_long"
        if self.kv.final_blocks(r.input_tokens, r.output_tokens) > self.kv.total_blocks \
                or not self.admission.admits_when_empty(r):
            return "exceeds_kv_capacity"
        if lim.mixed_prefill and not lim.kv_arrives and r.input_tokens > lim.max_num_batched_tokens:
            # TensorRT-LLM without chunked context refuses such a prompt ("should not exceed max_num_tokens");
            # a decode pool never prefills it.
            return "prompt_exceeds_token_budget"
        if lim.max_waiting is not None and len(self.waiting) >= lim.max_waiting:
            return "queue_full"
        return ""

    def _running_outputs(self) -> list[tuple[int, int, int]]:
        """(tokens still to generate, generated, output length) of every running request."""
        ds = self.decode_set
        out = []
        for r in self.running.values():
            gen = ds.generated(r) if r.in_decode else r.generated
            out.append((r.output_tokens - gen, gen, r.output_tokens))
        return out

    def intake(self, r: Request, now: float) -> bool:
        """Queue a routed request, or mark it rejected with its reason; whether it was queued."""
        reason = self.reject_reason(r)
        if reason:
            r.status = Status.REJECTED
            r.reject_reason = reason
            r.finish_s = now
            return False
        if self.limits.kv_arrives:
            arrive_with_kv(r)
        self.enqueue(r, now)
        return True

    def enqueue(self, r: Request, now: float) -> None:
        self.waiting.append(r)
        self.waiting_tokens += r.input_tokens
        self.outstanding += 1
        self.note_levels(now)

    def note_levels(self, now: float) -> None:
        """Log the waiting and running counts from `now` on (called after the calls that changed
        them; a row only when they differ from the last one logged)."""
        waiting, running = len(self.waiting), len(self.running)
        if waiting != self._noted_waiting or running != self._noted_running:
            self._noted_waiting, self._noted_running = waiting, running
            self._log_level(self._pack_level(now, self.replica, waiting, running))

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    # ---- admission and preemption ------------------------------------------------------------
    def _admit(self, r: Request, now: float) -> None:
        self.admission.admitted(r)
        self.waiting.popleft()
        self.waiting_tokens -= r.input_tokens
        self._seq += 1
        r.seq = self._seq
        r.status = Status.RUNNING
        if r.admit_s < 0:
            r.admit_s = now
        self.running[r.id] = r

    def preempt_last(self) -> float:
        """Preempt the most recently admitted running request; returns swap-out seconds."""
        victim = next(reversed(self.running.values()))
        del self.running[victim.id]
        self.admission.left(victim)
        swap_s = 0.0
        if victim.in_decode:
            blocks = self.decode_set.held_blocks(victim)
            kv = self.decode_set.remove(victim)
            self._release(victim, blocks, kv)
            if self.swap and self._swap_out(victim, kv):
                swap_s = self._swap_s(kv)
            else:
                victim.prefill_target = victim.input_tokens + victim.generated
                victim.prefilled = 0
        elif victim in self.loading:
            self.loading.remove(victim)
            self._release(victim, victim.blocks + self._pinned_blocks(victim), 0)
            victim.prefilled = 0
        else:
            self.prefilling.remove(victim)
            self._release(victim, victim.blocks + self._pinned_blocks(victim), victim.prefilled)
            if self.swap and victim.prefilled and self._swap_out(victim, victim.prefilled):
                victim.swapped_kv = victim.prefilled
                swap_s = self._swap_s(victim.prefilled)
            else:
                victim.prefilled = 0
        victim.blocks = 0
        victim.status = Status.WAITING
        victim.preemptions += 1
        self.waiting.appendleft(victim)
        self.waiting_tokens += victim.input_tokens
        self.admission.preempted()
        return swap_s

    def _swap_out(self, r: Request, kv_tokens: int) -> bool:
        """Room for a swapped-out request's KV in host memory: unbounded without tiers, else held
        in the first tier (evicting cached chunks); False if it cannot fit (then it is recomputed)."""
        tiers = self.tiers
        if tiers is None or not tiers.stores:
            r.swapped_kv = kv_tokens
            return True
        chunks = -(-kv_tokens // tiers.chunk_tokens)
        gone = tiers.stores[0].reserve(chunks, self.kv.now)
        if gone is None:
            return False
        tiers.pass_down(0, [], gone, self.kv.now)
        r.swap_chunks = chunks
        r.swapped_kv = kv_tokens
        return True

    def _swap_s(self, kv_tokens: int) -> float:
        """Seconds a swap transfer adds to the iteration: serial over the host link without tiers,
        else booked on the first tier's link (the iteration waits for the latest transfer)."""
        tiers = self.tiers
        if tiers is None or not tiers.stores:
            return self.kv.transfer_s(kv_tokens)
        now = self.kv.now
        end = tiers.links[0].write(now, kv_tokens * tiers.bytes_per_token)
        self._transfer_end = max(self._transfer_end, end)
        return 0.0

    def _swap_in_s(self, r: Request) -> float:
        tiers = self.tiers
        if tiers is None or not tiers.stores:
            return self.kv.transfer_s(r.swapped_kv)
        now = self.kv.now
        end = tiers.links[0].read(now, r.swapped_kv * tiers.bytes_per_token)
        tiers.stores[0].unreserve(r.swap_chunks, now)
        r.swap_chunks = 0
        self._transfer_end = max(self._transfer_end, end)
        return 0.0

    def transfer_wait_s(self, now: float) -> float:
        """Seconds from now until the link transfers booked since the last call end (then reset)."""
        end, self._transfer_end = self._transfer_end, 0.0
        return max(0.0, end - now)

    def _loads_ready(self, now: float) -> None:
        """Requests whose loads have ended continue their prefill, in admission order."""
        ready = [r for r in self.loading if r.ready_s <= now]
        if ready:
            self.loading = [r for r in self.loading if r.ready_s > now]
            self.prefilling.extend(ready)
            self.prefilling.sort(key=_seq_of)

    def next_ready_s(self) -> float:
        """When the next overlapped load ends (inf if none)."""
        return min((r.ready_s for r in self.loading), default=float("inf"))

    # ---- one iteration --------------------------------------------------------------------------
    def schedule(self, now: float) -> IterationPlan:
        """Decide the next iteration. Allocates the blocks it needs and preempts when a decode
        step cannot get blocks."""
        plan = IterationPlan()
        lim, ds, kv = self.limits, self.decode_set, self.kv
        kv.now = now
        if self.loading:
            self._loads_ready(now)
        self.admission.begin_round()
        if not lim.chunked_prefill and not lim.mixed_prefill:
            self._admit_waiting(plan, lim.max_num_batched_tokens, whole_prompts=True, now=now)
            if plan.admitted:
                if self._transfer_end:
                    plan.load_wait_s = self.transfer_wait_s(now)
                self.note_levels(now)
                return plan
        preempted = False
        if ds.size:
            need = ds.blocks_needed(1)
            while need > kv.free_blocks:
                plan.swap_s += self.preempt_last()
                preempted = True
                need = ds.blocks_needed(1)
            plan.decode = ds.size > 0
            kv.allocate(need)
        if not lim.chunked_prefill:
            if lim.mixed_prefill:
                self._admit_waiting(plan, lim.max_num_batched_tokens - ds.size * self.q, whole_prompts=True, now=now,
                                    alone_ok=not plan.decode)
            if self._transfer_end:
                plan.load_wait_s = self.transfer_wait_s(now)
            self.note_levels(now)
            return plan
        budget = lim.max_num_batched_tokens - ds.size * self.q
        for r in self.prefilling:
            if budget <= 0:
                break
            new = self._add_chunk(plan, r, budget, kv.free_blocks)
            if new <= 0:
                break
            budget -= new
        if budget > 0 and (self.admission.admits_after_preemption or not preempted):
            self._admit_waiting(plan, budget, whole_prompts=False, now=now)
        if self._transfer_end:
            plan.load_wait_s = self.transfer_wait_s(now)
        self.note_levels(now)
        return plan

    def _add_chunk(self, plan: IterationPlan, r: Request, budget: int, free: int) -> int:
        """Schedule the next prefill chunk of running request r within budget and free blocks."""
        new = min(r.prefill_target - r.prefilled, budget, self.kv.fit_tokens(r.prefilled, free))
        if new > 0:
            blocks = self.kv.growth_blocks(r.prefilled, new)
            r.blocks += blocks
            self.kv.allocate(blocks)
            plan.chunks.append((r, new))
        return new

    def _admit_waiting(self, plan: IterationPlan, budget: int, whole_prompts: bool, now: float,
                       alone_ok: bool = True) -> None:
        """Admit waiting requests FCFS into `plan` while budget, sequence slots and blocks allow.
        With whole prompts, a prompt above the budget runs only alone (`alone_ok`: nothing else in
        the iteration)."""
        kv = self.kv
        while self.waiting and budget > 0 and len(self.running) < self.limits.max_num_seqs:
            r = self.waiting[0]
            if not self.admission.allows(r):
                break
            margin = kv.watermark_blocks if self.running else 0
            if r.swapped_kv:
                blocks = kv.blocks_for(r.swapped_kv)
                if kv.free_blocks - blocks < margin:
                    break
                arrived = r.admit_s < 0        # a decode pool's request: its KV came with it
                self._admit(r, now)
                plan.admitted += 1
                kv.allocate(blocks)
                if arrived and r.generated >= r.output_tokens:     # a decode pool's request with nothing to decode
                    r.first_token_s = now
                    r.swapped_kv = 0
                    self._complete(r, blocks, now)
                    continue
                if not arrived:
                    plan.swap_s += self._swap_in_s(r)
                if r.prefilled < r.prefill_target:     # swapped out mid-prefill: continue it now
                    r.blocks = blocks
                    r.swapped_kv = 0
                    self.prefilling.append(r)
                    budget -= max(0, self._add_chunk(plan, r, budget, kv.free_blocks))
                else:
                    plan.resumed.append(r)
                continue
            if self.prefix is not None and r.hash_ids and r.prefilled == 0:
                taken = self._admit_with_prefix(plan, r, budget, whole_prompts, alone_ok, margin, now)
                if taken < 0:
                    break
                budget -= taken
                continue
            new = r.prefill_target - r.prefilled
            if whole_prompts:
                if new > budget and (plan.admitted or not alone_ok):
                    break
            else:
                new = min(new, budget, kv.fit_tokens(r.prefilled, kv.free_blocks - margin))
                if new <= 0:
                    break
            blocks = kv.growth_blocks(r.prefilled, new)
            if kv.free_blocks - blocks < margin:
                break
            self._admit(r, now)
            plan.admitted += 1
            r.blocks = blocks
            kv.allocate(blocks)
            self.prefilling.append(r)
            plan.chunks.append((r, new))
            budget -= new

    def _admit_with_prefix(self, plan: IterationPlan, r: Request, budget: int, whole_prompts: bool,
                           alone_ok: bool, margin: int, now: float) -> int:
        """Admit r taking the head of its prompt from the caches (see the module docstring): the
        prompt tokens of the budget its first chunk takes, or -1 if it cannot be admitted now."""
        kv, tiers = self.kv, self.prefix
        assert tiers is not None and r.hash_ids is not None
        hit = tiers.lookup(r.hash_ids, r.prefill_target, now)
        skip = hit.chunks * tiers.chunk_tokens
        load_blocks = tiers.load_blocks(hit)
        cached = tiers.pin_blocks(hit) + load_blocks
        # With whole prompts the prompt runs in the iteration that admits it: its loads stall it.
        in_flight = bool(hit.loads) or hit.hbm_ready_s > now
        waits = in_flight and tiers.overlap_loads and self.limits.chunked_prefill
        new = 0 if waits else r.prefill_target - skip
        if whole_prompts:
            if new > budget and (plan.admitted or not alone_ok):
                return -1
        elif not waits:
            new = min(new, budget, kv.fit_tokens(skip, kv.free_blocks - margin - cached))
            if new <= 0:
                return -1
        blocks = kv.growth_blocks(skip, new) if new else 0
        if kv.free_blocks - cached - blocks < margin:
            return -1
        self._admit(r, now)
        plan.admitted += 1
        kv.take_cached(tiers.hbm.pin(hit.hbm))
        r.pinned, end = tiers.commit(hit, now)   # the loads are under way before blocks are taken
        kv.allocate(load_blocks + blocks)
        r.prefilled = skip
        # Prompt tokens served for the first time from a cache count as cached input when the
        # request's next chunk ends (after a recompute, only those it had not computed before).
        r.pending_cached = max(0, min(skip, r.input_tokens) - r.input_counted)
        if r.admit_s == now and r.preemptions == 0:     # its first admission: what it loaded, and how long
            r.loaded_tokens = sum(hit.tier_tokens)
            r.tier_tokens = hit.tier_tokens
            r.load_s = end - now
        r.blocks = blocks
        if waits:
            r.ready_s = end
            self.loading.append(r)
            return 0
        if end > now:
            self._transfer_end = max(self._transfer_end, end)
        self.prefilling.append(r)
        plan.chunks.append((r, new))
        return new

    # ---- effects of a finished iteration ----------------------------------------------------------
    def _complete(self, r: Request, blocks: int, now: float) -> None:
        r.status = Status.DONE
        r.finish_s = now
        del self.running[r.id]
        self.admission.left(r)
        if not self.running and not self.waiting:
            self.admission.idle()
        self.outstanding -= 1
        if self.prefix is None:
            self.kv.release(blocks)
        else:
            self._release(r, blocks, r.input_tokens + r.output_tokens - 1)
        self.finished.append(r)

    def _release(self, r: Request, blocks: int, kv_tokens: int) -> None:
        """Free the `blocks` blocks a leaving request holds (`kv_tokens` of KV). With prefix
        caching, its shared chunks are unpinned and its own full chunks stay cached in free blocks."""
        tiers = self.prefix
        if tiers is None:
            self.kv.release(blocks)
            return
        hbm = tiers.hbm
        own = blocks - len(r.pinned) * hbm.chunk_blocks
        freed = hbm.unpin(r.pinned)
        r.pinned = ()
        self.kv.release(own + freed)
        chain = r.hash_ids
        if chain:
            refs = hbm.refs
            kept = [h for h in chain[:min(len(chain), kv_tokens // tiers.chunk_tokens)] if h not in refs]
            if kept:
                hbm.add_free(kept)
                tiers.computed(kept, self.kv.now)
            hbm.occupancy.note(self.kv.now, len(refs))

    def _pinned_blocks(self, r: Request) -> int:
        """Blocks of the shared prefix chunks a request uses (held through the prefix cache)."""
        return len(r.pinned) * self.prefix.hbm.chunk_blocks if self.prefix is not None else 0

    def _cache_computed(self, r: Request) -> None:
        """A prefill finished: its full chunks after those it took from caches join the HBM cache,
        pinned by it (and the write-through tiers). A chunk another request cached meanwhile stays
        the request's own, and so do the chunks after it."""
        tiers, chain = self.prefix, r.hash_ids
        if tiers is None or not chain:
            return
        hbm = tiers.hbm
        refs = hbm.refs
        full = min(len(chain), r.prefilled // tiers.chunk_tokens)
        new = []
        for h in chain[len(r.pinned):full]:
            if h in refs:
                break
            new.append(h)
        if new:
            hbm.add_pinned(new)
            r.pinned = [*r.pinned, *new]
            r.blocks -= len(new) * hbm.chunk_blocks      # those blocks are held through the cache now
            tiers.computed(new, self.kv.now)
            hbm.occupancy.note(self.kv.now, len(refs))

    def _finish_decode_steps(self, now: float) -> None:
        for r, blocks in self.decode_set.pop_finished():
            self._complete(r, blocks, now)

    def finish_iteration(self, plan: IterationPlan, now: float) -> tuple[int, int, int, int]:
        """Apply an iteration's effects when it ends at `now`: (prompt tokens processed for the
        first time, prompt tokens recomputed, tokens sampled, prompt tokens taken from a prefix
        cache). Finished requests go to `finished`."""
        prompt = recompute = sampled = cached = 0
        ds = self.decode_set
        self.kv.now = now
        if plan.decode:
            sampled += ds.tokens_sampled(1)
            ds.advance(1)
            self.admission.decoded(1)
            self._finish_decode_steps(now)
        for r, new in plan.chunks:
            first = r.prefilled
            if r.pending_cached:        # its first chunk after a cache hit
                cached += r.pending_cached
                r.cached_tokens += r.pending_cached
                r.pending_cached = 0
            r.prefilled += new
            counted = min(r.prefilled, r.input_tokens)
            fresh = max(0, counted - max(first, r.input_counted))
            r.input_counted = max(r.input_counted, counted)
            prompt += fresh
            recompute += new - fresh
            if r.prefilled < r.prefill_target:
                continue
            self.prefilling.remove(r)
            self._cache_computed(r)
            r.generated += 1
            sampled += 1
            if r.first_token_s < 0:
                r.first_token_s = now
            if r.generated >= r.output_tokens:
                self._complete(r, r.blocks + self._pinned_blocks(r), now)
            else:
                r.blocks = 0
                ds.add(r, r.prefilled)
        for r in plan.resumed:
            ds.add(r, r.swapped_kv)
            r.swapped_kv = 0
            if r.first_token_s < 0:     # a decode pool's request joins the batch: its latency here starts
                r.first_token_s = now
        if self.finished:
            self.note_levels(now)
        return prompt, recompute, sampled, cached

    # ---- decode runs ------------------------------------------------------------------------------
    def decode_run_stable(self, now: float) -> bool:
        """Decode-only and nothing could be admitted: only arrivals, completions, a block shortage
        or the end of a request's load change the batch, so decode steps until then can run as one
        event (the replica ends it at the step boundary where the next load has ended)."""
        if self.prefilling or self.decode_set.size == 0:
            return False
        if self.loading and self.next_ready_s() <= now:
            return False                        # a load has ended: its request prefills next
        if not self.waiting:
            return True
        if len(self.running) >= self.limits.max_num_seqs:
            return True
        if not self.admission.stable_while_waiting:
            return False                        # its admission test changes every step
        r = self.waiting[0]
        if not self.admission.allows(r):      # reservations change only when a request finishes
            return True
        if self.prefix is not None and r.hash_ids and not r.swapped_kv:
            # What it would take from the caches, and so the blocks and tokens it needs, can change
            # with every block a decode step takes (evicting cached chunks), and with what other
            # replicas do to the tiers they share. It needs at least one block whatever it hits
            # (none if it would only wait for chunks others are loading), and free blocks only
            # fall during a run: the run is stable if even that does not fit, else decide step by
            # step. (Checking its actual hits here costs a lookup per event and saves few events.)
            least = 0 if self.prefix.hbm.ready.until > now else 1
            return self.kv.free_blocks - least < self.kv.watermark_blocks
        if self.limits.mixed_prefill and not r.swapped_kv \
                and r.prefill_target - r.prefilled > self.limits.max_num_batched_tokens - self.decode_set.size * self.q:
            return True                         # its whole prompt fits beside the decodes only after a finish
        kv = self.kv
        if r.swapped_kv:
            need = kv.blocks_for(r.swapped_kv)
        else:
            need = kv.blocks_for(min(r.prefill_target, 1 if self.limits.chunked_prefill else r.prefill_target))
        return kv.free_blocks - need < kv.watermark_blocks

    def decode_run_length(self) -> int:
        """Decode steps that can run before a member finishes or the KV blocks run out; with a
        write-on-evict first tier, also before the first step that evicts a cached prefix chunk
        (its write into the tier starts at that step, as in a per-step simulation)."""
        ds, kv = self.decode_set, self.kv
        n = ds.safe_steps(kv.free_blocks, ds.steps_to_next_finish())
        tiers = self.prefix
        if tiers is not None and tiers.stores and not tiers.stores[0].write_through and n > 1:
            n = ds.safe_steps(kv.free_blocks - tiers.hbm.cached_free_blocks, n)
        return n

    def finish_decode_run(self, n_steps: int, now: float) -> tuple[int, int]:
        """Apply n decode-only steps that end at `now`: (tokens sampled, KV blocks held during the
        last step). Finished requests go to `finished`."""
        ds = self.decode_set
        self.kv.now = now
        self.kv.allocate(ds.blocks_needed(n_steps))
        peak = self.kv.used_blocks
        sampled = ds.tokens_sampled(n_steps)
        ds.advance(n_steps)
        self.admission.decoded(n_steps)
        self._finish_decode_steps(now)
        if self.finished:
            self.note_levels(now)
        return sampled, peak
