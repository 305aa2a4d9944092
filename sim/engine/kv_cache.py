"""One replica's paged KV cache in GPU memory: the block allocator every block goes through.

KV is allocated in blocks of `block_tokens` tokens (vLLM's PagedAttention). A request holding n KV
tokens uses ceil(n / block_tokens) blocks, plus, for models with sliding-window layers, a fixed
`sliding_blocks` for the window's KV (held from its first token; an overestimate for prompts
shorter than the window). `watermark_fraction` of the blocks is kept free when admitting new work,
as vLLM does, so running sequences can grow. A preempted request's KV can be swapped to host memory
over the GPU-host link: bytes / link bandwidth, serially with the iteration that triggers it.

With prefix caching (kv_tiers.py) some free blocks still hold cached prefix chunks: an allocation
takes blocks that hold none first, then evicts cached chunks, least recently used first, and
hands them to the tiers below.

Plain Python, no SimPy: the scheduler calls it, and tests use it alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.engine.kv_tiers import KvHierarchy


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class KvCache:
    """Block accounting of one replica (capacity from the memory plan)."""

    __slots__ = ("total_blocks", "block_tokens", "sliding_blocks", "watermark_blocks", "used_blocks",
                 "free_blocks", "swap_bytes_per_token", "host_link_bytes_per_s", "lookahead_tokens", "tiers",
                 "now")

    def __init__(self, total_blocks: int, block_tokens: int, *, sliding_blocks: int = 0,
                 watermark_fraction: float = 0.0, swap_bytes_per_token: float = 0.0,
                 host_link_bytes_per_s: float = 1.0, lookahead_tokens: int = 0) -> None:
        self.total_blocks = total_blocks
        self.block_tokens = block_tokens
        self.sliding_blocks = sliding_blocks
        self.watermark_blocks = int(watermark_fraction * total_blocks)
        self.swap_bytes_per_token = swap_bytes_per_token
        self.host_link_bytes_per_s = host_link_bytes_per_s
        #: KV slots a decoding sequence holds beyond its tokens: the k drafts speculative decoding
        #: verifies each step (their KV is written, then kept only where accepted).
        self.lookahead_tokens = lookahead_tokens
        #: Blocks allocated now, and free now (kept as attributes: the scheduler reads them on every
        #: event). Read them freely; change them only through allocate() and release().
        self.used_blocks = 0
        self.free_blocks = total_blocks
        #: The prefix cache and the tiers below (None: no prefix caching), and the scheduler's clock
        #: (when its evictions happen).
        self.tiers: KvHierarchy | None = None
        self.now = 0.0

    # ---- level ------------------------------------------------------------------------------
    def allocate(self, blocks: int) -> None:
        """Take `blocks` free blocks (the scheduler checked they are free), evicting cached prefix
        chunks from them if blocks holding none do not suffice."""
        if blocks > self.free_blocks or blocks < 0:
            raise RuntimeError(f"KV allocator: {blocks} blocks asked, {self.free_blocks} free")
        tiers = self.tiers
        if tiers is not None:
            hbm = tiers.hbm
            short = blocks - (self.free_blocks - hbm.cached_free_blocks)
            if short > 0:
                tiers.evicted_from_hbm(hbm.evict(short), self.now)
        self.used_blocks += blocks
        self.free_blocks -= blocks

    def take_cached(self, blocks: int) -> None:
        """Cached prefix blocks a request starts using again: free, but not evicted."""
        self.used_blocks += blocks
        self.free_blocks -= blocks

    def release(self, blocks: int) -> None:
        """Return `blocks` blocks (a finished or preempted request's)."""
        if blocks > self.used_blocks or blocks < 0:
            raise RuntimeError(f"KV allocator: {blocks} blocks released, {self.used_blocks} in use")
        self.used_blocks -= blocks
        self.free_blocks += blocks

    # ---- geometry ---------------------------------------------------------------------------
    def blocks_for(self, kv_tokens: int) -> int:
        """Blocks a request holding kv_tokens tokens uses."""
        return -(-kv_tokens // self.block_tokens) + (self.sliding_blocks if kv_tokens > 0 else 0)

    def final_blocks(self, prompt_tokens: int, output_tokens: int) -> int:
        """Blocks a request holds at its last step: prompt + output - 1 tokens of KV, plus the
        draft slots of that step."""
        return self.blocks_for(prompt_tokens + output_tokens - 1 + self.lookahead_tokens)

    def growth_blocks(self, kv_tokens: int, new_tokens: int) -> int:
        """Extra blocks to grow a request's KV from kv_tokens by new_tokens."""
        return self.blocks_for(kv_tokens + new_tokens) - self.blocks_for(kv_tokens)

    def fit_tokens(self, kv_tokens: int, free_blocks: int) -> int:
        """Most new tokens a request holding kv_tokens can add within free_blocks blocks."""
        if kv_tokens == 0:
            free_blocks -= self.sliding_blocks
        return max(0, (ceil_div(kv_tokens, self.block_tokens) + free_blocks) * self.block_tokens - kv_tokens)

    # ---- swap ---------------------------------------------------------------------------------
    def transfer_s(self, kv_tokens: int) -> float:
        """Seconds to move a request's KV between GPU and host memory over the host link."""
        return kv_tokens * self.swap_bytes_per_token / self.host_link_bytes_per_s
