"""Build and run one simulation: Scenario + seed -> Result (DataFrames + summary).

``build`` wires a SimPy environment: replica specs from the scenario (step-time model, memory
plan, batching limits), the cluster that builds the replicas from them behind the router, and
either the open-loop arrival source or the closed-loop clients (traffic.py), all drawing from
named random streams of one root seed. ``run`` executes it until every request has finished or
`duration_s + drain_timeout_s`, then turns the records into DataFrames and the summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import count
from typing import Any

import numpy as np
import pandas as pd
import simpy

from sim import cost as cost_mod
from sim import metrics
from sim.cluster import AnyReplica, Cluster, ReplicaSpec
from sim.engine.request import Request
from sim.engine.scheduler import BatchLimits
from sim.kv_hierarchy import HierarchyBuilder
from sim.memory import MemoryPlan
from sim.metrics import IterLog, LevelLog
from sim.metrics.hierarchy import hierarchy_summary
from sim.metrics.invariants import violations
from sim.metrics.window import measurement_window
from sim.perf import RooflineStepModel, TableStepModel, make_step_model
from sim.perf.pipeline import PipelineStepModel
from sim.perf.ranks import RankedRoofline
from sim.perf.shape import Chunk, StepShape
from sim.perf.split import decode_step_split
from sim.scenario import ClosedLoop, Offline, Scenario
from sim.speculation import speculation_for
from sim.traffic import closed_loop_client, open_loop_source, session_source
from sim.workload import ClosedLoopLengths, open_loop_requests, rng_streams, salted_chain, session_plans


def step_model_for(sc: Scenario) -> RooflineStepModel | TableStepModel | PipelineStepModel:
    """The scenario's step-time model: the roofline, or the measured table it names; through
    pipeline stages when pp > 1 (perf.pipeline)."""
    model = replica_step_model(sc)
    par = sc.serving.parallelism
    if par.pp > 1:
        assert isinstance(model, RooflineStepModel), "validation refuses step tables with pp"
        return PipelineStepModel(model, par, model.links)
    return model


def replica_step_model(sc: Scenario) -> RooflineStepModel | TableStepModel:
    """The roofline (or measured table) of one stage's tensor-parallel group over the whole model."""
    p, par = sc.serving.precision, sc.serving.parallelism
    # With attention ranks this is one rank's roofline: the experts are priced over the stage by
    # perf.ranks.RankedRoofline, not by it.
    ranked = par.dp_attention > 1
    return make_step_model(sc.model, sc.hardware.gpu, par.tp, p.weights, p.kv_cache,
                           p.compute_precision, sc.perf, p.attention_precision(sc.hardware.gpu),
                           host_overlapped=sc.serving.batching.overlap_host_work,
                           draft_model=sc.speculative.draft_model if sc.speculative else None,
                           ep=1 if ranked else par.ep, expert_imbalance=1.0 if ranked else par.imbalance(),
                           redundant_experts=0 if ranked else par.redundant_experts)


def ranked_pricing_for(sc: Scenario, rank: RooflineStepModel | TableStepModel | PipelineStepModel) -> RankedRoofline | None:
    """The step pricing of attention ranks sharing expert layers, for dp_attention > 1."""
    par, p = sc.serving.parallelism, sc.serving.precision
    if par.dp_attention <= 1:
        return None
    assert isinstance(rank, RooflineStepModel), "validation refuses step tables with dp_attention"
    return RankedRoofline(rank, par, p.weights, p.compute_precision)


def replica_specs(sc: Scenario, seed: int | None = None) -> list[ReplicaSpec]:
    """The scenario's pools of replicas (one pool of mixed prefill/decode replicas)."""
    s = sc.serving
    # An offline burst is a batch job handed to the engine whole (as vLLM's LLM.generate or
    # trtllm-bench do): the API server's queue bound is for online traffic only.
    max_waiting = None if isinstance(sc.workload.arrivals, Offline) else s.batching.max_waiting
    limits = BatchLimits(max_num_seqs=s.batching.max_num_seqs, max_num_batched_tokens=s.batching.max_num_batched_tokens,
                         chunked_prefill=s.batching.chunked_prefill, max_waiting=max_waiting,
                         preemption=s.batching.preemption, max_context_tokens=sc.model.max_context_tokens,
                         admission=s.batching.admission,
                         mixed_prefill=not s.batching.chunked_prefill and s.batching.whole_prompts == "mixed",
                         kv_arrives=s.role == "decode")
    step_model = step_model_for(sc)
    kv = s.kv_cache
    tiers = HierarchyBuilder(sc, recompute_estimate(replica_step_model(sc))) if kv.prefix_caching or kv.tiers else None
    return [ReplicaSpec(pool="default", role=s.role, count=s.replicas, gpus_per_replica=s.parallelism.gpus,
                        gpu=sc.hardware.gpu, step_model=step_model, memory=sc.memory_plan(), limits=limits,
                        ranked=ranked_pricing_for(sc, step_model), ranks=s.parallelism.dp_attention,
                        watermark_fraction=s.kv_cache.watermark_fraction,
                        host_link_bytes_per_s=sc.hardware.gpu.host_link_gb_s * 1e9,
                        speculation=speculation_for(sc.speculative, sc.model, sc.seed if seed is None else seed)
                        if sc.speculative else None, tiers=tiers)]


def recompute_estimate(step: RooflineStepModel | TableStepModel) -> Callable[[int, int], float]:
    """Seconds to prefill n prompt tokens after `prefix` cached ones, alone in an iteration: what
    loading those tokens' KV must beat (kv_tiers.KvHierarchy.lookup)."""
    @lru_cache(maxsize=65536)     # prefixes and lengths are whole chunks: few distinct pairs
    def recompute_s(prefix: int, n: int) -> float:
        return step.iteration_s(StepShape(0, 0, 1, (Chunk(prefix, n, False),), None))
    return recompute_s


@dataclass
class Simulation:
    """A wired, not yet run, simulation (exposed for tests and notebooks)."""

    scenario: Scenario
    seed: int
    env: simpy.Environment
    cluster: Cluster
    specs: list[ReplicaSpec]
    requests: list[Request] = field(default_factory=list)
    records: IterLog = field(default_factory=IterLog)
    levels: LevelLog = field(default_factory=LevelLog)

    @property
    def replicas(self) -> list[AnyReplica]:
        return self.cluster.replicas

    @property
    def memory(self) -> MemoryPlan:
        return self.specs[0].memory

    @property
    def step_model(self) -> RooflineStepModel | TableStepModel | PipelineStepModel:
        return self.specs[0].step_model  # type: ignore[return-value]


@dataclass
class Result:
    scenario: Scenario
    seed: int
    requests: pd.DataFrame          # one row per request
    iterations: pd.DataFrame        # one row per engine event (IterRecord)
    levels: pd.DataFrame            # waiting / running counts per replica over time (LevelRecord)
    replicas: pd.DataFrame          # replica lifecycle (LifecycleRecord)
    summary: dict[str, Any]
    memory: MemoryPlan
    sim_end_s: float
    wall_s: float


def window_marks(sc: Scenario) -> dict[str, float]:
    """Boundaries of the measurement window known before the run, by the Request attribute that
    notes each request's tokens sampled before it."""
    marks = {"sampled_before_start": sc.warmup_s}
    if sc.window_kind == "arrivals":
        marks["sampled_before_end"] = sc.duration_s
    return {k: v for k, v in marks.items() if v > 0}


def _note(cluster: Cluster, attr: str, _event: simpy.Event) -> None:
    cluster.note_sampled(attr)


def build(sc: Scenario, seed: int | None = None, allow_jumps: bool = True) -> Simulation:
    """Wire a simulation. allow_jumps=False advances decode one step per event (reference mode)."""
    seed = sc.seed if seed is None else seed
    streams = rng_streams(seed)
    env = simpy.Environment()
    specs = replica_specs(sc, seed)
    records = IterLog()
    levels = LevelLog()

    def on_finish(r: Request) -> None:
        if r.on_done is not None:
            r.on_done(r)

    marks = window_marks(sc)
    # Decode runs are cut at the window's boundaries and at the simulation's end, so that no run's
    # tokens straddle one: a run still going when the simulation stops would otherwise go
    # unrecorded, while a step-by-step simulation records its steps up to the end.
    cuts = (*marks.values(), sc.duration_s + sc.drain_timeout_s)
    cluster = Cluster.from_specs(env, specs, sc.serving.router, on_finish=on_finish, records=records,
                                 levels=levels, marks=cuts, allow_jumps=allow_jumps)
    # Created before anything else is scheduled, each mark fires before any other event at its
    # instant: it sees the tokens sampled strictly before the boundary.
    for attr, t in marks.items():
        env.timeout(t).callbacks.append(partial(_note, cluster, attr))
    sim = Simulation(sc, seed, env, cluster, specs, [], records, levels)
    arrivals = sc.workload.arrivals
    kv = sc.serving.kv_cache
    submit = salting(cluster.submit, sc.workload.cache_salt_fraction, streams["cache_salt"]) \
        if kv.prefix_caching and sc.workload.cache_salt_fraction > 0 else cluster.submit
    if sc.workload.sessions is not None:
        env.process(session_source(env, submit, session_plans(sc, streams), sc.workload.sessions,
                                   kv.prefix_chunk_tokens if kv.prefix_caching else None, sc.duration_s,
                                   sim.requests, count().__next__))
    elif isinstance(arrivals, ClosedLoop):
        lengths = ClosedLoopLengths(sc, streams)
        ids = count()
        for _ in range(arrivals.clients):
            env.process(closed_loop_client(env, submit, arrivals, lengths, streams["think_time"],
                                           sc.duration_s, sim.requests, ids.__next__))
    else:
        env.process(open_loop_source(env, submit, open_loop_requests(sc, streams), sim.requests))
    return sim


def salting(submit: Callable[[Request], bool], fraction: float,
            rng: np.random.Generator) -> Callable[[Request], bool]:
    """`submit` that first gives a `fraction` of the requests (one draw per request, in submission
    order) a cache salt: their prefix chunks renamed after the request alone."""
    def salted_submit(r: Request) -> bool:
        if rng.random() < fraction and r.hash_ids:
            r.hash_ids = salted_chain(r.id, len(r.hash_ids))
        return submit(r)
    return salted_submit


PROGRESS_EVENTS = 20_000   # events between progress reports (a few tens of milliseconds of wall time)


def _simulate(sim: Simulation, progress: Callable[[float], None] | None) -> float:
    """Run the SimPy environment to the end; returns the simulation's end time."""
    sc = sim.scenario
    end_s = sc.duration_s + sc.drain_timeout_s
    if progress is None:
        sim.env.run(until=end_s)
    else:
        # Report every PROGRESS_EVENTS events: progress follows the work done, never adds any
        # (stepping by a fixed simulated time would loop through an idle drain in tiny steps).
        env = sim.env
        while env.peek() < end_s:
            for _ in range(PROGRESS_EVENTS):
                if env.peek() >= end_s:    # as run(until=end_s): events at end_s itself do not run
                    break
                env.step()
            progress(env.now)
        # The loop never runs an event at or after end_s, so now < end_s here (as without progress,
        # events at end_s itself do not run).
        if env.now < end_s:
            env.run(until=end_s)
    # A window boundary at the simulation's end (no drain time) is an event that never runs, as
    # run(until) stops before it: note the tokens sampled before it now, when all of them are.
    for attr, t in window_marks(sc).items():
        if t >= end_s:
            sim.cluster.note_sampled(attr)
    sim.cluster.settle()
    return end_s


def _last_activity_s(reqs: list[Request], it: pd.DataFrame, end_s: float) -> float:
    """The last token or rejection of any request, or end_s if a request is still in flight."""
    if any(metrics.STATUS_NAMES[r.status] == "in_flight" for r in reqs):
        return end_s
    last_finish = max((r.finish_s for r in reqs), default=0.0)
    last_iter = float(it["t_end_s"].max()) if len(it) else 0.0
    return max(last_finish, last_iter)


def execute(sim: Simulation, progress: Callable[[float], None] | None = None) -> Result:
    """Run a built simulation to the end. `progress(sim_time_s)` is called every 20,000 events."""
    sc = sim.scenario
    t_wall = time.perf_counter()
    end_s = _simulate(sim, progress)
    it = metrics.iterations_frame(sim.records)
    rows, block_s = sim.cluster.kv_block_seconds()
    it.loc[rows, "kv_block_s"] = block_s
    rows, util_s = sim.cluster.utilization_seconds()
    it.loc[rows, "util_s"] = util_s
    rows, block_s, util_s, draft_s = sim.cluster.spec_run_integrals()
    it.loc[rows, "kv_block_s"] = block_s
    it.loc[rows, "util_s"] = util_s
    it.loc[rows, "draft_s"] = draft_s
    sim_end = float(it["t_end_s"].max()) if len(it) else 0.0
    window = measurement_window(sc.window_kind, sc.warmup_s, sc.duration_s,
                                _last_activity_s(sim.requests, it, end_s))
    req = metrics.requests_frame(sim.requests, sc, window)
    lv = metrics.levels_frame(sim.levels)
    life = metrics.lifecycle_frame(sim.cluster.lifecycle)
    # Every attention rank holds its own KV blocks: a replica holds dp_attention times a GPU's plan.
    ranks = sc.serving.parallelism.dp_attention
    summary: dict[str, Any] = metrics.summarize(sc, req, it, lv, life, window, sim.memory.kv_blocks * ranks)
    tiers = sim.specs[0].tiers
    if tiers is not None:
        summary.update(hierarchy_summary(tiers, req, sim.requests, window))
    summary.update(cost_mod.cost_summary(sc, summary))
    broken = violations(summary, sc.serving.batching.max_num_seqs * ranks, int(req["output_tokens_in_window"].sum()))
    if broken:
        raise RuntimeError(f"internal error: scenario {sc.name!r}, seed {sim.seed} breaks the simulator's "
                           f"invariants ({'; '.join(broken)}); please report it with the scenario file")
    if isinstance(sim.step_model, TableStepModel):
        ext = sim.step_model.coverage.extrapolated()
        summary["step_table_extrapolated"] = bool(ext)
        summary["step_table_extrapolation"] = "; ".join(
            f"{axis} asked {lo:,.0f}..{hi:,.0f}, table covers {sim.step_model.coverage.grid[axis][0]:,.0f}.."
            f"{sim.step_model.coverage.grid[axis][1]:,.0f}" for axis, (lo, hi) in ext.items())
    # Why the layout is as fast as it is: the terms of a decode step at the run's mean batch.
    spec = sim.specs[0]
    ctx = float(req["input_tokens"].mean() + req["output_tokens"].mean() / 2.0) if len(req) else 1.0
    summary.update(decode_step_split(spec.step_model, spec.ranked, ranks,
                                     float(summary.get("batch_size_mean") or 0.0) / ranks, ctx))
    summary["kv_blocks_per_replica"] = sim.memory.kv_blocks * ranks
    summary["kv_capacity_tokens_per_replica"] = sim.memory.kv_capacity_tokens * ranks
    wall = time.perf_counter() - t_wall
    summary["sim_end_s"] = sim_end
    summary["wall_s"] = wall
    summary["sim_requests_per_wall_s"] = len(sim.requests) / wall if wall > 0 else float("inf")
    return Result(sc, sim.seed, req, it, lv, life, summary, sim.memory, sim_end, wall)


def without_speculation(sc: Scenario) -> Scenario:
    """The same scenario without its speculative block (memory plan and step model follow)."""
    return sc.model_copy(update={"speculative": None})


def run(sc: Scenario, seed: int | None = None) -> Result:
    """Simulate a scenario. `seed` overrides the scenario's seed (same seed -> same result)."""
    return execute(build(sc, seed))
