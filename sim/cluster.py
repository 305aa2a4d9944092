"""Cluster: N identical replicas behind a router, fed by an arrival source or closed-loop clients.

Routers (decisions are plain functions of replica state at the arrival instant; ties go to the
lowest replica index so runs are deterministic):

* ``round_robin``: replicas in turn;
* ``least_outstanding``: fewest requests waiting + running (join-shortest-queue);
* ``least_kv_load``: fewest tokens of load: KV tokens allocated (blocks x block size) plus
  prompt tokens waiting (join-shortest-queue by tokens).

Open-loop requests arrive at pre-drawn times (one SimPy timeout per arrival). Closed-loop clients
each send a request, wait for its last token (or its rejection), think, and send the next, until
the scenario's duration ends, as benchmark tools do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import simpy

from sim.engine.replica import Replica
from sim.engine.request import Request
from sim.metrics.records import Status
from sim.scenario import ClosedLoop
from sim.workload import ClosedLoopLengths, OpenLoopRequests, think_time_s


def pick_round_robin(replicas: Sequence[Replica], counter: int) -> int:
    return counter % len(replicas)


def _argmin(loads: list[int]) -> int:
    """Index of the least load; ties go to the lowest index (min keeps the first minimum)."""
    return min(range(len(loads)), key=loads.__getitem__)


def pick_least_outstanding(replicas: Sequence[Replica]) -> int:
    return _argmin([r.scheduler.outstanding for r in replicas])


def pick_least_kv_load(replicas: Sequence[Replica]) -> int:
    return _argmin([r.kv_load_tokens for r in replicas])


class Cluster:
    def __init__(self, env: simpy.Environment, replicas: list[Replica], router: str) -> None:
        self.env, self.replicas, self.router = env, replicas, router
        self._rr = 0

    def route(self) -> Replica:
        if self.router == "round_robin":
            i = pick_round_robin(self.replicas, self._rr)
            self._rr += 1
        elif self.router == "least_outstanding":
            i = pick_least_outstanding(self.replicas)
        else:
            i = pick_least_kv_load(self.replicas)
        return self.replicas[i]

    def submit(self, r: Request) -> bool:
        return self.route().submit(r)


def open_loop_source(env: simpy.Environment, cluster: Cluster, reqs: OpenLoopRequests,
                     out: list[Request]):
    """SimPy process: submit each pre-drawn request at its arrival time."""
    times = reqs.arrival_s.tolist()
    inp = reqs.input_tokens.tolist()
    outp = reqs.output_tokens.tolist()
    hashes = reqs.hash_ids
    for i, t in enumerate(times):
        dt = t - env.now
        if dt > 0:
            yield env.timeout(dt)
        r = Request(i, t, inp[i], outp[i], hash_ids=None if hashes is None else hashes[i])
        out.append(r)
        cluster.submit(r)


def closed_loop_client(env: simpy.Environment, cluster: Cluster, spec: ClosedLoop, lengths: ClosedLoopLengths,
                       think_rng: np.random.Generator, stop_s: float, out: list[Request],
                       next_id: Callable[[], int]):
    """SimPy process: one client that keeps one request in flight until stop_s."""
    while env.now < stop_s:
        inp, outp, hashes = lengths.next()
        done = env.event()
        r = Request(next_id(), env.now, inp, outp, on_done=lambda _r, ev=done: ev.succeed(), hash_ids=hashes)
        out.append(r)
        cluster.submit(r)
        yield done
        pause = think_time_s(spec, think_rng)
        if r.status == Status.REJECTED:
            pause = max(pause, 1e-3)  # do not spin at one instant on a full queue
        if pause > 0:
            yield env.timeout(pause)
