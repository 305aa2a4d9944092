"""The KV-cache hierarchy below a replica's batch: prefix chunks kept in HBM after their requests
leave, in host DRAM, on NVMe and in a remote pool, and the links that move them.

A prompt is a chain of chunks of `chunk_tokens` tokens, each named by a hash that also covers
every token before it (vLLM's block hashes, Mooncake's `hash_ids`), so a chunk present anywhere is
a hit only if every chunk before it is a hit too; reuse stops at the first miss.

* HBM (`HbmPrefixCache`, vLLM's automatic prefix caching, SGLang's radix cache): a chunk's KV
  blocks stay where its request computed them. While running requests use a chunk it is pinned
  (reference-counted, shared: a second request with the same prefix uses the same blocks). When
  none does, its blocks count as free but keep their content, least recently used first in line
  for reuse: an allocation takes blocks that hold no cached chunk first, then evicts cached chunks
  in LRU order (SGLang evicts its radix tree's LRU leaves only when it needs memory).
* Lower tiers (`TierStore`): LRU sets of chunk hashes with a capacity in chunks. A chunk enters a
  tier by write-through (when it is computed; Dynamo KVBM's host tier is a write-through cache) or
  when the tier above evicts it (write-on-evict). A store may be shared: a node's host memory by the
  replicas on that node, a remote pool by the whole cluster.
* Links (`Link`): each direction is a FIFO server. A transfer of B bytes that starts when the
  direction frees up takes latency + B / bandwidth, so concurrent loads queue behind each other.
  Directions are independent (PCIe and network links are full duplex), so writes never delay loads.
* Time in flight: a chunk takes its room in a tier when its write is issued and is readable once
  the write ends (`TierStore.ready`); a chunk loaded into HBM is a hit at once, but a request that
  hits it waits until its load ends (`HbmPrefixCache.ready`).

A lookup (`KvHierarchy.lookup`) finds the hit chunks and, per lower tier, whether loading them is
faster than recomputing them; `commit` pins, loads and books the transfers. The scheduler calls
these at admission (scheduler.py); everything here is plain Python, no SimPy.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


class Direction:
    """One direction of a link: a FIFO server of `bytes_per_s` with a fixed latency per transfer."""

    __slots__ = ("bytes_per_s", "latency_s", "free_s", "moved_bytes", "busy_s", "log")

    def __init__(self, bytes_per_s: float, latency_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self.latency_s = latency_s
        self.free_s = 0.0               # when it finishes what it has been given
        self.moved_bytes = 0.0          # totals for the metrics
        self.busy_s = 0.0
        #: Every transfer as start, end, bytes (packed doubles: a few per request), for the metrics
        #: over a window.
        self.log = array("d")

    def end_s(self, now: float, nbytes: float) -> float:
        """When a transfer of nbytes given now would end (nothing booked)."""
        return max(now, self.free_s) + self.latency_s + nbytes / self.bytes_per_s

    def book(self, now: float, nbytes: float) -> float:
        """Book a transfer of nbytes from now; returns when it ends."""
        busy = self.latency_s + nbytes / self.bytes_per_s
        end = max(now, self.free_s) + busy
        self.free_s = end
        self.moved_bytes += nbytes
        self.busy_s += busy
        self.log.extend((end - busy, end, nbytes))
        return end


class Link:
    """One link's two directions (read: tier to GPU, write: GPU to tier), each a FIFO server."""

    __slots__ = ("name", "reading", "writing")

    def __init__(self, name: str, read_bytes_per_s: float, write_bytes_per_s: float, latency_s: float) -> None:
        self.name = name
        self.reading = Direction(read_bytes_per_s, latency_s)
        self.writing = Direction(write_bytes_per_s, latency_s)

    def read_end_s(self, now: float, nbytes: float) -> float:
        return self.reading.end_s(now, nbytes)

    def read(self, now: float, nbytes: float) -> float:
        return self.reading.book(now, nbytes)

    def write(self, now: float, nbytes: float) -> float:
        return self.writing.book(now, nbytes)


class OccupancyLog:
    """A level over time: (instant, value) at every change, for a time-weighted mean over a window."""

    __slots__ = ("times", "values")

    def __init__(self) -> None:
        self.times: list[float] = [0.0]
        self.values: list[float] = [0.0]

    def note(self, now: float, value: float) -> None:
        if now == self.times[-1]:
            self.values[-1] = value
        else:
            self.times.append(now)
            self.values.append(value)

    def mean(self, start_s: float, end_s: float) -> float:
        """Time-weighted mean over [start_s, end_s)."""
        if end_s <= start_s:
            return 0.0
        t = np.asarray(self.times)
        nxt = np.append(t[1:], max(end_s, t[-1]))
        span = np.clip(np.minimum(nxt, end_s) - np.maximum(t, start_s), 0.0, None)
        return float(np.dot(np.asarray(self.values, dtype=float), span) / (end_s - start_s))


class InFlight:
    """When chunks still on their way into a tier (or into HBM) arrive: a chunk is usable from its
    time on. `until` is the latest of them, so a query can skip the chunks when nothing is in
    flight any more."""

    __slots__ = ("times", "until")

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self.until = 0.0

    def mark(self, chunks: Sequence[int], t: float) -> None:
        """These chunks arrive at t."""
        self.times.update(dict.fromkeys(chunks, t))
        if t > self.until:
            self.until = t

    def ready_s(self, chunks: Iterable[int], now: float) -> float:
        """When the last of these chunks is there (now if all are)."""
        if self.until <= now:
            if self.times:
                self.times.clear()              # nothing in flight: forget the past arrivals
            return now
        times = self.times
        return max(now, max((times.get(h, 0.0) for h in chunks), default=0.0))

    def forget_all(self, chunks: Iterable[int]) -> None:
        """These chunks left the tier: no arrival to wait for any more."""
        times = self.times
        if times:
            for h in chunks:
                times.pop(h, None)


class TierStore:
    """A tier below HBM: an LRU set of chunk hashes, at most `capacity_chunks` of them, some of its
    room possibly reserved for swapped-out requests' KV."""

    __slots__ = ("name", "index", "capacity_chunks", "write_through", "lru", "reserved_chunks", "occupancy",
                 "evicted", "written_chunks", "ready")

    def __init__(self, name: str, index: int, capacity_chunks: int, write_through: bool) -> None:
        self.name = name
        self.index = index                     # 0 = the tier right below HBM
        self.capacity_chunks = capacity_chunks
        self.write_through = write_through     # chunks enter when the tier above gets them (else when it evicts them)
        self.lru: OrderedDict[int, None] = OrderedDict()
        #: When each chunk's write into the tier ends: it can be read from then on (its room is
        #: taken from the start of the write).
        self.ready = InFlight()
        self.reserved_chunks = 0               # room held by swapped-out requests
        self.occupancy = OccupancyLog()
        self.evicted = 0
        self.written_chunks = 0

    def __contains__(self, h: int) -> bool:
        return h in self.lru

    @property
    def used_chunks(self) -> int:
        return len(self.lru) + self.reserved_chunks

    def touch(self, h: int) -> None:
        self.lru.move_to_end(h)

    def _evict_for(self, chunks: int) -> list[int]:
        over = len(self.lru) + self.reserved_chunks + chunks - self.capacity_chunks
        if over <= 0:
            return []
        pop = self.lru.popitem
        gone = [pop(False)[0] for _ in range(min(over, len(self.lru)))]     # the least recently used first
        self.ready.forget_all(gone)
        self.evicted += len(gone)
        return gone

    def insert(self, hashes: Sequence[int], now: float) -> tuple[list[int], list[int]]:
        """Add chunks (most recent last; those present become most recent), evicting LRU chunks to
        make room: (chunks that entered, chunks evicted). If more are new than the tier can hold,
        the most recent of them enter."""
        lru = self.lru
        if lru.keys().isdisjoint(hashes):
            new = list(hashes)
        else:
            new = [h for h in hashes if h not in lru]
            move = lru.move_to_end
            for h in hashes:
                if h in lru:
                    move(h)
        room = self.capacity_chunks - self.reserved_chunks
        if not new or room <= 0:
            return [], []
        if len(new) > room:
            new = new[-room:]
        gone = self._evict_for(len(new))
        lru.update(dict.fromkeys(new))
        self.written_chunks += len(new)
        self.occupancy.note(now, len(lru) + self.reserved_chunks)
        return new, gone

    def reserve(self, chunks: int, now: float) -> list[int] | None:
        """Hold room for a swapped-out request's KV, evicting cached chunks: those evicted, or None
        if it cannot fit even in an empty tier."""
        if chunks > self.capacity_chunks - self.reserved_chunks:
            return None
        gone = self._evict_for(chunks)
        self.reserved_chunks += chunks
        self.occupancy.note(now, self.used_chunks)
        return gone

    def unreserve(self, chunks: int, now: float) -> None:
        self.reserved_chunks -= chunks
        self.occupancy.note(now, self.used_chunks)


class HbmPrefixCache:
    """Prefix chunks in one replica's (or attention rank's) GPU KV cache: pinned while running
    requests use them, otherwise free-but-cached in LRU order (see the module docstring). A chunk
    still being loaded from a tier has a ready time: a request that hits it waits for it. The
    operations take a request's chunks at once (its chain holds a few dozen)."""

    __slots__ = ("chunk_blocks", "refs", "free_lru", "ready", "evicted", "occupancy")

    def __init__(self, chunk_blocks: int) -> None:
        self.chunk_blocks = chunk_blocks
        self.refs: dict[int, int] = {}                  # hash -> running requests using it (>= 0)
        self.free_lru: OrderedDict[int, None] = OrderedDict()   # hashes no request uses, LRU first
        self.ready = InFlight()                         # chunks whose load into HBM is under way
        self.evicted = 0
        self.occupancy = OccupancyLog()                 # chunks held (pinned or cached)

    @property
    def cached_free_blocks(self) -> int:
        return len(self.free_lru) * self.chunk_blocks

    def __contains__(self, h: int) -> bool:
        return h in self.refs

    def head_hits(self, chain: Sequence[int], usable: int, gone: Container[int] = ()) -> int:
        """How many chunks at the head of the chain are resident (not counting those in `gone`)."""
        refs = self.refs
        n = 0
        for h in chain[:usable]:
            if h not in refs or h in gone:
                break
            n += 1
        return n

    def pin(self, chunks: Sequence[int]) -> int:
        """A request starts using these resident chunks; returns the blocks that leave the free
        pool (those no request used)."""
        refs, free_lru = self.refs, self.free_lru
        taken = 0
        for h in chunks:
            n = refs[h]
            refs[h] = n + 1
            if not n:
                del free_lru[h]
                taken += 1
        return taken * self.chunk_blocks

    def add_pinned(self, chunks: Sequence[int]) -> None:
        """Chunks a request just computed or is loading (their blocks are its, allocated)."""
        self.refs.update(dict.fromkeys(chunks, 1))

    def unpin(self, chunks: Sequence[int]) -> int:
        """A request stops using these chunks; returns the blocks that become free (but stay
        cached, most recently used last)."""
        refs, free_lru = self.refs, self.free_lru
        freed = 0
        for h in chunks:
            n = refs[h] - 1
            refs[h] = n
            if not n:
                free_lru[h] = None
                freed += 1
        return freed * self.chunk_blocks

    def add_free(self, chunks: Sequence[int]) -> None:
        """A leaving request's chunks whose blocks it just released: cached, unpinned, most recent."""
        self.refs.update(dict.fromkeys(chunks, 0))
        self.free_lru.update(dict.fromkeys(chunks))

    def evict(self, blocks: int) -> list[int]:
        """Drop LRU unpinned chunks until `blocks` blocks are reclaimed; the chunks dropped."""
        free_lru, refs, pop = self.free_lru, self.refs, self.free_lru.popitem
        gone = [pop(False)[0] for _ in range(min(len(free_lru), -(-blocks // self.chunk_blocks)))]   # LRU first
        for h in gone:
            del refs[h]
        self.ready.forget_all(gone)
        self.evicted += len(gone)
        return gone


@dataclass(slots=True)
class PrefixHit:
    """What a lookup found for a request's prompt: chunks resident in HBM (and when the last of
    them still being loaded arrives), then per lower tier the run of chunks to load from it, and
    when those loads would end."""

    hbm: list[int] = field(default_factory=list)
    loads: list[tuple[TierStore, list[int], float]] = field(default_factory=list)   # (tier, chunks, readable from)
    tier_tokens: list[int] = field(default_factory=list)     # tokens loaded per tier (filled by commit)
    load_end_s: float = 0.0
    hbm_ready_s: float = 0.0

    @property
    def chunks(self) -> int:
        return len(self.hbm) + sum(len(c) for _, c, _ in self.loads)


class KvHierarchy:
    """One replica's (or attention rank's) view of the hierarchy: its HBM prefix cache, the lower
    tiers' stores (possibly shared) and its links to them."""

    def __init__(self, chunk_tokens: int, block_tokens: int, chunk_bytes: float, stores: Sequence[TierStore],
                 links: Sequence[Link], *, overlap_loads: bool,
                 recompute_s: Callable[[int, int], float], prefix_caching: bool = True) -> None:
        self.prefix_caching = prefix_caching     # False: the tiers only take swapped-out requests' KV
        self.chunk_tokens = chunk_tokens
        self.hbm = HbmPrefixCache(chunk_tokens // block_tokens)
        self.chunk_bytes = chunk_bytes           # KV bytes of one chunk over the replica's GPUs
        self.bytes_per_token = chunk_bytes / chunk_tokens
        self.stores = list(stores)
        self.links = list(links)                 # links[i]: to stores[i]
        self.overlap_loads = overlap_loads
        self.recompute_s = recompute_s           # (prefix tokens, new tokens) -> seconds of prefill

    # ---- lookup -----------------------------------------------------------------------------------
    def lookup(self, chain: Sequence[int], prompt_tokens: int, now: float) -> PrefixHit:
        """The longest run of hit chunks at the head of the chain, each in HBM or in the fastest
        tier holding it; a run of loads from one tier that would not beat recomputing it ends the
        hit there (nothing is changed). Full chunks only, and never the prompt's last token (the
        engine recomputes it to sample the first output token)."""
        usable = self.usable_chunks(chain, prompt_tokens)
        hbm = self.hbm.refs
        stores = self.stores
        # The common case first: a run of HBM hits from the start.
        head = self.hbm.head_hits(chain, usable)
        if head == usable or not stores:
            hit = PrefixHit(hbm=list(chain[:head]), load_end_s=now)
            hit.hbm_ready_s = self.hbm.ready.ready_s(hit.hbm, now)
            return hit
        in_hbm: list[int] = list(range(head))      # positions resident in HBM
        runs: list[list] = []                       # [store, first position, end position]
        i = head
        while i < usable:
            h = chain[i]
            if h in hbm:
                in_hbm.append(i)
            else:
                for store in stores:
                    if h in store.lru:
                        break
                else:
                    break
                if runs and runs[-1][0] is store and runs[-1][2] == i:
                    runs[-1][2] = i + 1
                else:
                    runs.append([store, i, i + 1])
            i += 1
        hit = PrefixHit(load_end_s=now)
        cut = i
        booked: dict[int, float] = {}               # bytes this lookup already puts on each link
        for store, a, b in runs:
            link = self.links[store.index]
            nbytes = booked.get(store.index, 0.0) + (b - a) * self.chunk_bytes
            start = store.ready.ready_s(chain[a:b], now)     # the chunks' writes into the tier must end
            load_end = link.read_end_s(start, nbytes)
            if load_end - now >= self.recompute_s(a * self.chunk_tokens, (b - a) * self.chunk_tokens):
                cut = a
                break
            booked[store.index] = nbytes
            hit.load_end_s = max(hit.load_end_s, load_end)
            hit.loads.append((store, list(chain[a:b]), start))
        hit.hbm = [chain[p] for p in in_hbm if p < cut]
        hit.hbm_ready_s = self.hbm.ready.ready_s(hit.hbm, now)
        return hit

    def usable_chunks(self, chain: Sequence[int], prompt_tokens: int) -> int:
        """Chunks of the chain a prompt can take from a cache: full chunks, never the prompt's last
        token (the engine recomputes it to sample the first output token)."""
        return min(len(chain), (prompt_tokens - 1) // self.chunk_tokens)

    def pin_blocks(self, hit: PrefixHit) -> int:
        """Blocks the HBM hits take out of the free pool (chunks no running request uses yet)."""
        refs = self.hbm.refs
        return sum(self.hbm.chunk_blocks for h in hit.hbm if refs[h] == 0)

    def load_blocks(self, hit: PrefixHit) -> int:
        return sum(len(c) for _, c, _ in hit.loads) * self.hbm.chunk_blocks

    # ---- effects --------------------------------------------------------------------------------
    def commit(self, hit: PrefixHit, now: float) -> tuple[list[int], float]:
        """Pin the HBM hits and book the loads, before the caller allocates the loaded chunks'
        blocks (an allocation may evict from the tiers, and the loads are already under way);
        returns the chunks the request now uses and when the last of its KV is there."""
        hbm = self.hbm
        pinned = list(hit.hbm)
        hit.tier_tokens = [0] * len(self.stores)
        end = max(now, hit.hbm_ready_s)
        for store, chunks, start in hit.loads:
            t = self.links[store.index].read(start, len(chunks) * self.chunk_bytes)
            end = max(end, t)
            lru = store.lru
            for h in chunks:
                if h in lru:
                    lru.move_to_end(h)
            hbm.add_pinned(chunks)                  # pinned by the request, blocks allocated next
            hbm.ready.mark(chunks, t)
            pinned.extend(chunks)
            hit.tier_tokens[store.index] += len(chunks) * self.chunk_tokens
            # Read from a tier further down, a chunk passes through the write-through tiers above
            # it (onboarding from disk goes through host memory, without its link).
            for k in range(store.index):
                if self.stores[k].write_through:
                    self.enter(k, chunks, now, arrives_s=t)
        hbm.occupancy.note(now, len(hbm.refs))
        return pinned, end

    def computed(self, chunks: Sequence[int], now: float) -> None:
        """Chunks a request has just computed in HBM: the first tier takes them if written through."""
        if chunks and self.stores and self.stores[0].write_through:
            self.enter(0, chunks, now)

    def evicted_from_hbm(self, chunks: list[int], now: float) -> None:
        """HBM dropped these chunks: a write-on-evict first tier takes them (a write-through one
        already has them, or evicted them itself)."""
        self.hbm.occupancy.note(now, len(self.hbm.refs))
        if chunks and self.stores and not self.stores[0].write_through:
            self.enter(0, chunks, now)

    def enter(self, k: int, chunks: Sequence[int], now: float, arrives_s: float | None = None) -> None:
        """Chunks enter tier k, written over its link (or arriving at `arrives_s` by another way);
        what enters goes on to a write-through tier below, what it evicts to a write-on-evict one."""
        store = self.stores[k]
        entered, gone = store.insert(chunks, now)
        if entered:
            if arrives_s is None:
                arrives_s = self.links[k].write(now, len(entered) * self.chunk_bytes)
            store.ready.mark(entered, arrives_s)
        if k + 1 < len(self.stores) and (entered or gone):
            self.pass_down(k, entered, gone, now)

    def pass_down(self, k: int, entered: list[int], gone: list[int], now: float) -> None:
        if k + 1 < len(self.stores):
            nxt = self.stores[k + 1].write_through
            if nxt and entered:
                self.enter(k + 1, entered, now)
            elif not nxt and gone:
                self.enter(k + 1, gone, now)
