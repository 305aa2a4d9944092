"""A scenario's KV-cache hierarchy: tier parameters resolved from the scenario, the tier defaults
(sim/data/kv_tiers.yaml) and the GPU catalog, and the stores and links each replica gets.

Geometry. A node holds `gpus_per_node` GPUs (HGX: 8; a GB200/GB300 NVL72 compute tray: 4). Host
DRAM and NVMe belong to a node: the replicas on one node share their content (one store), and a
replica wider than a node gets the stores of every node it spans (their capacities add up). A
remote pool is one store for the whole cluster. A `per_gpu` link is each GPU's own (PCIe,
NVLink-C2C, its NIC): an attention rank's tp x pp GPUs move their shares of a chunk in parallel,
so its link is tp x pp times one GPU's. A `per_node` link is one per node, shared by the node's
replicas (a remote pool's too: each node reaches it through its own).

Bytes. A chunk of c tokens is c x KV bytes per token per GPU x tp x pp bytes (the whole attention
rank's KV; a pipeline stage's GPUs hold its share of the layers). Capacities count whole chunks.

Cost (TCO mode): every store the deployment uses (a partly filled node's whole tier) x
capex_usd_per_gb, amortized over the TCO's years, per GPU-hour of the deployment (sim/cost.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from sim.catalog import _load_yaml
from sim.engine.kv_tiers import KvHierarchy, Link, TierStore
from sim.scenario import KvTier, Scenario


@dataclass(frozen=True)
class TierParams:
    """One tier with every default filled in (units in the names; bandwidths one direction)."""

    kind: str
    capacity_gb: float            # per node (host_dram, nvme) or for the pool (remote)
    read_gb_s: float              # per GPU (per_gpu link) or per node (per_node)
    write_gb_s: float
    latency_s: float
    link: str                     # per_gpu | per_node
    write: str                    # through | on_evict
    capex_usd_per_gb: float
    sources: tuple[tuple[str, str], ...]


@cache
def tier_defaults() -> dict[str, dict[str, Any]]:
    return _load_yaml("kv_tiers.yaml")


def resolve_tier(sc: Scenario, t: KvTier, i: int) -> TierParams:
    """The tier's parameters: the scenario's, else the defaults (ValueError naming what is missing)."""
    g = sc.hardware.gpu
    d = dict(tier_defaults()[t.kind])
    sources = dict(d.pop("sources", {}))
    if t.kind == "host_dram":
        d.setdefault("capacity_gb", g.host_dram_gb_per_node)
        d.setdefault("read_gb_s", g.host_link_gb_s)
        d.setdefault("write_gb_s", g.host_link_gb_s)
        sources.setdefault("capacity_gb", g.sources.get("host_dram_gb_per_node", "GPU catalog"))
        sources.setdefault("read_gb_s", g.sources.get("host_link_gb_s", "GPU catalog"))
        sources.setdefault("write_gb_s", sources["read_gb_s"])
    elif t.kind == "remote":
        d.setdefault("read_gb_s", g.scale_out_gb_s)
        d.setdefault("write_gb_s", g.scale_out_gb_s)
        sources.setdefault("read_gb_s", g.sources.get("scale_out_gb_s", "GPU catalog"))
        sources.setdefault("write_gb_s", sources["read_gb_s"])
    given = t.model_dump(exclude_none=True)
    for k in given:
        if k != "kind":
            sources[k] = "scenario"
    d.update(given)
    if d.get("capacity_gb") is None:
        why = f"GPU {g.name!r} has no host_dram_gb_per_node in the catalog" if t.kind == "host_dram" \
            else "a remote pool has no default size"
        raise ValueError(f"serving.kv_cache.tiers[{i}] ({t.kind}): set capacity_gb ({why})")
    return TierParams(kind=t.kind, capacity_gb=float(d["capacity_gb"]), read_gb_s=float(d["read_gb_s"]),
                      write_gb_s=float(d["write_gb_s"]), latency_s=float(d["latency_s"]), link=str(d["link"]),
                      write=str(d["write"]), capex_usd_per_gb=float(d["capex_usd_per_gb"]),
                      sources=tuple(sorted(sources.items())))


def resolve_tiers(sc: Scenario) -> list[TierParams]:
    return [resolve_tier(sc, t, i) for i, t in enumerate(sc.serving.kv_cache.tiers)]


def check_kv_hierarchy(sc: Scenario) -> None:
    """What the hierarchy cannot be combined with, and tiers that lack a size (ValueError)."""
    kv = sc.serving.kv_cache
    if sc.serving.router == "cache_aware" and not kv.prefix_caching:
        raise ValueError("serving.router='cache_aware' routes by the prompts' cached prefixes: set "
                         "serving.kv_cache.prefix_caching: true")
    # shared_prefix, prefix_chunk_tokens and prefix_load do nothing without prefix caching, and
    # tiers then hold only swapped-out KV: all are allowed, so that a scenario can switch prefix
    # caching off from the command line (--set serving.kv_cache.prefix_caching=false).
    shared = sc.workload.shared_prefix
    if kv.prefix_caching and shared is not None and shared.tokens < kv.prefix_chunk_tokens:
        raise ValueError(f"workload.shared_prefix.tokens={shared.tokens} is shorter than one prefix chunk "
                         f"(serving.kv_cache.prefix_chunk_tokens={kv.prefix_chunk_tokens}): nothing could be shared")
    sessions = sc.workload.sessions
    if sessions is not None and sessions.system_prompt_tokens >= sc.model.max_context_tokens:
        raise ValueError(f"workload.sessions.system_prompt_tokens={sessions.system_prompt_tokens} leaves no room in "
                         f"{sc.model.name}'s context of {sc.model.max_context_tokens:,} tokens")
    if not kv.prefix_caching and not kv.tiers:
        return
    what = "serving.kv_cache.prefix_caching" if kv.prefix_caching else "serving.kv_cache.tiers"
    if sc.serving.role == "decode":
        raise ValueError(f"{what}: a decode pool receives its requests' KV from a prefill pool; prefix reuse and "
                         "tiers belong to the pool that prefills")
    if kv.prefix_caching and sc.model.attention.sliding_layers:
        raise ValueError(f"{what}: {sc.model.name} has sliding-window layers, whose KV is not kept per prefix chunk; "
                         "prefix caching is not simulated for such models yet")
    trace = sc.workload.trace
    if kv.prefix_caching and trace is not None and trace.format == "mooncake" and kv.prefix_chunk_tokens != 512:
        raise ValueError(f"serving.kv_cache.prefix_chunk_tokens={kv.prefix_chunk_tokens}: a Mooncake trace's "
                         "hash_ids name 512-token blocks; set 512")
    par = sc.serving.parallelism
    chunk_gb = kv.prefix_chunk_tokens * sc.memory_plan().kv_bytes_per_token_per_gpu * par.tp * par.pp / 1e9
    for i, p in enumerate(resolve_tiers(sc)):
        if p.capacity_gb * (1 if p.kind == "remote" else nodes_per_replica(sc)) < chunk_gb:
            raise ValueError(f"serving.kv_cache.tiers[{i}].capacity_gb={p.capacity_gb:g} holds less than one "
                             f"{kv.prefix_chunk_tokens}-token chunk of this model's KV ({chunk_gb:.3g} GB)")


def nodes_per_replica(sc: Scenario) -> int:
    g = sc.hardware.gpu
    return -(-sc.serving.parallelism.gpus // g.gpus_per_node)


def replicas_per_node(sc: Scenario) -> int:
    return max(1, sc.hardware.gpu.gpus_per_node // sc.serving.parallelism.gpus)


def tier_capacity_gb_per_gpu(sc: Scenario, p: TierParams) -> float:
    """The tier's capacity bought per GPU of the deployment (for pricing): every node store the
    replicas use (one per node's worth of replicas; a replica wider than a node has each of its
    nodes'), or the remote pool, over the deployment's GPUs. A deployment that fills part of a
    node pays for the node's whole tier."""
    gpus = sc.serving.replicas * sc.serving.parallelism.gpus
    if p.kind == "remote":
        return p.capacity_gb / gpus
    stores = -(-sc.serving.replicas // replicas_per_node(sc))
    return p.capacity_gb * nodes_per_replica(sc) * stores / gpus


class HierarchyBuilder:
    """Builds each replica's (or attention rank's) KvHierarchy, sharing stores and node links as
    the geometry says (module docstring)."""

    def __init__(self, sc: Scenario, recompute_s: Callable[[int, int], float]) -> None:
        kv = sc.serving.kv_cache
        mem = sc.memory_plan()
        par = sc.serving.parallelism
        # An attention rank's KV is spread over its tp GPUs in each of its pp stages, each GPU with
        # its own per-GPU link.
        self.gpus = par.tp * par.pp
        self.chunk_tokens = kv.prefix_chunk_tokens
        self.block_tokens = kv.block_tokens
        self.chunk_bytes = kv.prefix_chunk_tokens * mem.kv_bytes_per_token_per_gpu * self.gpus
        self.params = resolve_tiers(sc)
        self.overlap = kv.prefix_load == "overlap"
        self.prefix_caching = kv.prefix_caching
        self.recompute_s = recompute_s
        self.per_node = replicas_per_node(sc)
        self.nodes = nodes_per_replica(sc)
        self._stores: dict[tuple[int, int], TierStore] = {}
        self._node_links: dict[tuple[int, int], Link] = {}
        self.built: list[KvHierarchy] = []
        self.store_list: list[TierStore] = []

    def _group(self, p: TierParams, replica: int) -> int:
        return 0 if p.kind == "remote" else replica // self.per_node

    def _store(self, k: int, p: TierParams, replica: int) -> TierStore:
        key = (k, self._group(p, replica))
        store = self._stores.get(key)
        if store is None:
            scale = 1 if p.kind == "remote" else self.nodes
            chunks = int(p.capacity_gb * scale * 1e9 // self.chunk_bytes)
            store = self._stores[key] = TierStore(p.kind, k, chunks, p.write == "through")
            self.store_list.append(store)
        return store

    def _link(self, k: int, p: TierParams, replica: int) -> Link:
        if p.link == "per_gpu":
            return Link(p.kind, p.read_gb_s * 1e9 * self.gpus, p.write_gb_s * 1e9 * self.gpus, p.latency_s)
        key = (k, replica // self.per_node)          # one per node (a remote pool's too: each node's NIC)
        link = self._node_links.get(key)
        if link is None:
            link = self._node_links[key] = Link(p.kind, p.read_gb_s * 1e9 * self.nodes,
                                                p.write_gb_s * 1e9 * self.nodes, p.latency_s)
        return link

    def build(self, replica: int) -> KvHierarchy:
        stores = [self._store(k, p, replica) for k, p in enumerate(self.params)]
        links = [self._link(k, p, replica) for k, p in enumerate(self.params)]
        h = KvHierarchy(self.chunk_tokens, self.block_tokens, self.chunk_bytes, stores, links,
                        overlap_loads=self.overlap, recompute_s=self.recompute_s,
                        prefix_caching=self.prefix_caching)
        self.built.append(h)
        return h

    def links(self) -> list[Link]:
        """Every distinct link built (a node's shared link once)."""
        seen: dict[int, Link] = {}
        for h in self.built:
            for link in h.links:
                seen.setdefault(id(link), link)
        return list(seen.values())

