"""Routing policies."""

from __future__ import annotations

import numpy as np
from conftest import base_dict

from sim.runner import run
from sim.scenario import scenario_from_dict


def routed(router: str, **over) -> np.ndarray:
    d = base_dict(duration_s=120.0, serving={"replicas": 4, "router": router}, **over)
    return run(scenario_from_dict(d), seed=2).requests["replica"].to_numpy()


def test_round_robin_cycles():
    r = routed("round_robin")
    assert (r == np.arange(len(r)) % 4).all()


def test_least_outstanding_picks_the_lowest_index_minimum():
    d = base_dict(duration_s=120.0, serving={"replicas": 4, "router": "least_outstanding"},
                  workload={"arrivals": {"kind": "poisson", "rate_per_s": 25}})
    req = run(scenario_from_dict(d), seed=2).requests
    arr, fin, rep = req["arrival_s"].to_numpy(), req["finish_s"].to_numpy(), req["replica"].to_numpy()
    checked = 0
    for i in range(len(req)):
        # Outstanding on each replica just before request i arrives: earlier arrivals not yet finished.
        # (Skip exact ties in time, where same-instant ordering decides.)
        if (fin[:i] == arr[i]).any() or (arr[:i] == arr[i]).any():
            continue
        live = (fin[:i] > arr[i]) | np.isnan(fin[:i])
        load = np.bincount(rep[:i][live], minlength=4)
        assert rep[i] == int(np.argmin(load)), (i, load, rep[i])
        checked += 1
    assert checked > 0.9 * len(req)
    counts = np.bincount(rep, minlength=4)
    assert counts.min() > 0.15 * len(req)



def three_requests(router: str) -> list[int]:
    """A long request, then two short ones while it decodes, on two replicas."""
    from test_engine_exact import lone

    from sim.runner import build, execute
    from sim.traffic import open_loop_source
    from sim.workload import OpenLoopRequests

    d = lone(1, 1, duration_s=20.0, serving={"replicas": 2, "router": router})  # no arrivals of its own
    sim = build(scenario_from_dict(d))
    reqs = OpenLoopRequests(np.array([0.0, 0.5, 0.6]), np.array([6000, 100, 100]), np.array([2000, 500, 500]))
    sim.env.process(open_loop_source(sim.env, sim.cluster.submit, reqs, sim.requests))
    res = execute(sim)
    return res.requests.sort_values("arrival_s")["replica"].tolist()


def test_the_two_load_routers_decide_differently_where_they_should():
    # At 0.6 s replica 0 holds one request with about 6,000 KV tokens, replica 1 one with about 100:
    # by count it is a tie (lowest index wins), by KV tokens replica 1 is far lighter.
    assert three_requests("least_outstanding") == [0, 1, 0]
    assert three_requests("least_kv_load") == [0, 1, 1]
    assert three_requests("round_robin") == [0, 1, 0]
