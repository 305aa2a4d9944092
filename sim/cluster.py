"""Cluster: pools of replicas built from specs, behind a router.

A `ReplicaSpec` holds everything that makes one pool's replicas: how many, how many GPUs of which
kind each (whose power and price the cost model reads), their step-time model, KV geometry
(memory.py), batching limits and role. A scenario gives one pool
today ("mixed": prefill and decode on the same replicas); disaggregated pools and autoscaling will
add more. The cluster keeps a lifecycle record per replica (provisioned, ready, draining, gone),
from which cost and per-replica averages take provisioned time.

Routers (decisions are plain functions of replica loads at the arrival instant; ties go to the
lowest replica index so runs are deterministic):

* ``round_robin``: replicas in turn;
* ``least_outstanding``: fewest requests waiting + running (join-shortest-queue);
* ``least_kv_load``: fewest tokens of load: KV tokens allocated (blocks x block size) plus
  prompt tokens waiting (join-shortest-queue by tokens);
* ``cache_aware`` (with prefix caching): the cache-aware policy of the SGLang and vLLM routers
  (sim/cache_aware.py, with its sourced thresholds): the least loaded replica when the loads are
  out of balance, else the one holding the longest head of the prompt's chunk chain in HBM (any
  attention rank's) when that covers at least 30% of the prompt, else the least loaded.
  The real routers mirror each replica's cache in a radix tree of the requests sent there; here
  the router reads the replicas' HBM prefix caches themselves (as Dynamo's KV router does from
  the workers' KV events).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import simpy

from sim.cache_aware import choose, least_loaded, out_of_balance
from sim.catalog import GpuSpec
from sim.engine.kv_cache import KvCache
from sim.engine.kv_integral import block_seconds
from sim.engine.ranked_replica import RankedReplica
from sim.engine.replica import Replica
from sim.engine.request import Request
from sim.engine.scheduler import BatchLimits
from sim.engine.spec_runs import concatenated
from sim.kv_hierarchy import HierarchyBuilder
from sim.memory import MemoryPlan
from sim.metrics.records import IterLog, LevelLog, LifecycleRecord
from sim.perf.ranks import RankedRoofline
from sim.perf.shape import StepModel
from sim.power import decode_runs_utilization_s
from sim.speculation import Speculation


@dataclass(frozen=True)
class ReplicaSpec:
    """One pool of identical replicas."""

    pool: str
    role: str                     # "mixed": prefill and decode on the same replica; "decode": KV arrives
    count: int
    gpus_per_replica: int
    gpu: GpuSpec                  # for power and price
    step_model: StepModel
    memory: MemoryPlan
    limits: BatchLimits
    watermark_fraction: float
    host_link_bytes_per_s: float
    speculation: Speculation | None = None   # speculative decoding on these replicas
    ranked: RankedRoofline | None = None     # attention ranks sharing expert layers (dp_attention > 1)
    ranks: int = 1                           # attention ranks per replica, each with its own KV cache
    tiers: HierarchyBuilder | None = None    # prefix caching and the KV tiers below HBM

    def kv_cache(self, replica: int = 0) -> KvCache:
        m = self.memory
        kv = KvCache(m.kv_blocks, m.block_tokens, sliding_blocks=m.sliding_blocks,
                     watermark_fraction=self.watermark_fraction, swap_bytes_per_token=m.swap_bytes_per_token,
                     host_link_bytes_per_s=self.host_link_bytes_per_s,
                     lookahead_tokens=self.speculation.k if self.speculation else 0)
        if self.tiers is not None:
            kv.tiers = self.tiers.build(replica)
        return kv


#: A replica of either kind: one batch (Replica) or attention ranks stepping together (RankedReplica).
AnyReplica = Replica | RankedReplica


def pick_round_robin(replicas: Sequence[AnyReplica], counter: int) -> int:
    return counter % len(replicas)


def pick_least_outstanding(replicas: Sequence[AnyReplica]) -> int:
    return least_loaded([r.outstanding for r in replicas])


def pick_least_kv_load(replicas: Sequence[AnyReplica]) -> int:
    return least_loaded([r.kv_load_tokens for r in replicas])


def cached_head_chunks(replica: AnyReplica, chain: Sequence[int], usable: int) -> int:
    """Chunks at the head of `chain` resident in the replica's HBM (its best attention rank). A
    replica inside a decode run counts as evicted the chunks its steps so far would have evicted
    (their evictions are booked at the run's end), so routing is the same as step by step."""
    gone: set[int] = set()
    if isinstance(replica, Replica):
        evicted = replica.evicted_in_run()
        if evicted:
            tiers = replica.scheduler.prefix
            assert tiers is not None
            gone = set(islice(tiers.hbm.free_lru, evicted))
    return max((s.prefix.hbm.head_hits(chain, usable, gone) for s in replica.schedulers() if s.prefix is not None),
               default=0)


def pick_cache_aware(replicas: Sequence[AnyReplica], r: Request) -> int:
    loads = [rep.outstanding for rep in replicas]
    chain = r.hash_ids
    tiers = replicas[0].schedulers()[0].prefix
    if not chain or tiers is None:
        return least_loaded(loads)
    if out_of_balance(loads):       # (before reading the caches: the decision would not use them)
        return least_loaded(loads)
    usable = tiers.usable_chunks(chain, r.input_tokens)
    return choose([cached_head_chunks(rep, chain, usable) for rep in replicas], loads, tiers.chunk_tokens,
                  r.input_tokens)


ROUTERS: dict[str, Callable[[Sequence[AnyReplica]], int]] = {
    "least_outstanding": pick_least_outstanding,
    "least_kv_load": pick_least_kv_load,
}


class Cluster:
    def __init__(self, env: simpy.Environment, replicas: list[AnyReplica], router: str,
                 lifecycle: list[LifecycleRecord] | None = None) -> None:
        self.env, self.replicas, self.router = env, replicas, router
        self.lifecycle = lifecycle if lifecycle is not None else []
        self._pick = None if router in ("round_robin", "cache_aware") else ROUTERS[router]
        self._rr = 0

    @classmethod
    def from_specs(cls, env: simpy.Environment, specs: Sequence[ReplicaSpec], router: str, *,
                   on_finish: Callable[[Request], None], records: IterLog, levels: LevelLog,
                   marks: Sequence[float] = (), allow_jumps: bool = True) -> Cluster:
        """Build every pool's replicas, provisioned and ready at time 0 for the whole run."""
        replicas: list[AnyReplica] = []
        lifecycle: list[LifecycleRecord] = []
        for spec in specs:
            for _ in range(spec.count):
                i = len(replicas)
                if spec.ranked is not None:
                    replicas.append(RankedReplica(env, i, spec.ranked, [spec.kv_cache(i) for _ in range(spec.ranks)],
                                                  spec.limits, on_finish=on_finish, records=records, levels=levels,
                                                  speculation=spec.speculation))
                else:
                    replicas.append(Replica(env, i, spec.step_model, spec.kv_cache(i), spec.limits, on_finish=on_finish,
                                            records=records, levels=levels, marks=marks, allow_jumps=allow_jumps,
                                            speculation=spec.speculation))
                lifecycle.append(LifecycleRecord(i, spec.pool, spec.gpus_per_replica, 0.0, 0.0, float("inf"),
                                                 float("inf")))
        if router == "cache_aware":
            for rep in replicas:
                if isinstance(rep, RankedReplica):
                    rep.rank_by_cache = True
        return cls(env, replicas, router, lifecycle)

    def note_sampled(self, attr: str) -> None:
        """Store every request in the system's output tokens sampled so far in `attr` (at a
        boundary of the measurement window)."""
        for rep in self.replicas:
            for sched in rep.schedulers():
                ds = sched.decode_set
                for r in sched.running.values():
                    setattr(r, attr, ds.generated(r) if r.in_decode else r.generated)
                for r in sched.waiting:
                    setattr(r, attr, r.generated)

    def settle(self) -> None:
        """At the end of a run: bring the lazily advanced counts of decoding requests up to date."""
        for rep in self.replicas:
            for sched in rep.schedulers():
                ds = sched.decode_set
                for r in sched.running.values():
                    if r.in_decode:
                        r.generated = ds.generated(r)

    def _jumping(self) -> list[Replica]:
        """The replicas whose decode runs are one event each: their KV block-seconds and
        utilization are summed after the run (a RankedReplica records both per iteration)."""
        return [rep for rep in self.replicas if isinstance(rep, Replica)]

    def kv_block_seconds(self) -> tuple[np.ndarray, np.ndarray]:
        """(record indices, KV block-seconds) of every decode run, evaluated exactly."""
        pairs = [block_seconds(rep.decode_runs, rep.step_model) for rep in self._jumping()]
        if not pairs:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    def spec_run_integrals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(record indices, KV block-seconds, utilization-seconds, draft seconds) of every
        speculative decode run (spec_runs.py)."""
        return concatenated([rep.spec_run_integrals() for rep in self._jumping()])

    def utilization_seconds(self) -> tuple[np.ndarray, np.ndarray]:
        """(record indices, utilization-seconds) of every decode run (power.py)."""
        pairs = [decode_runs_utilization_s(rep.decode_runs, rep.step_model) for rep in self._jumping()]
        if not pairs:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    def route(self, r: Request) -> AnyReplica:
        if self.router == "cache_aware":
            i = pick_cache_aware(self.replicas, r)
        elif self._pick is None:
            i = pick_round_robin(self.replicas, self._rr)
            self._rr += 1
        else:
            i = self._pick(self.replicas)
        return self.replicas[i]

    def submit(self, r: Request) -> bool:
        return self.route(r).submit(r)
