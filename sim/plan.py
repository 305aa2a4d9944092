"""Capacity planning: the smallest (and cheapest) deployment that meets the SLO at a load, and the
highest load a deployment sustains within the SLO.

Definitions and stopping rules (also in docs/capacity-planning.md):

* A configuration at a load **meets the SLO** when every one of its R replications (common random
  numbers, see sim/sweep.py) finished without error and reports ``slo_met`` (the SLO percentile
  of TTFT and TPOT within target, and no more requests unfinished than the percentile allows).
  Requiring all replications is deliberately conservative.
* **Minimum replicas** at a load: try 1, 2, 4, 8, ... until a count meets the SLO (or
  ``max_replicas`` fails: infeasible), then bisect between the last failing and the first meeting
  count. Assumes more replicas never hurt, which holds for the routers here.
* **Cheapest**: among candidate configurations (GPU type, tensor parallelism, precision, ...) each
  at its minimum replica count, the lowest mean $ per million output tokens.
* **Maximum load** with the deployment fixed: start at the scenario's load; double while it meets
  the SLO (or halve until it does), then bisect until the bracket [meets, fails] is narrower than
  ``rate_tolerance`` x its upper end (integer knobs: until it is one apart). The answer is the
  highest load that met the SLO. Stops after ``max_evaluations`` in any case.

The load knob depends on the workload: arrival rate (Poisson, Gamma), mean rate (diurnal),
trace speed-up (``workload.trace.rate_scale``), number of clients (closed loop) or new sessions
per second (``workload.sessions.rate_per_s``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field, ValidationError

from sim.errors import InputError, SimulationFailed
from sim.input_model import InputModel
from sim.scenario import (
    MAX_CLIENTS,
    MAX_RATE_PER_S,
    MAX_RATE_SCALE,
    MAX_REPLICAS,
    MAX_REQUESTS,
    ClosedLoop,
    Diurnal,
    GammaArrivals,
    Offline,
    Piecewise,
    Poisson,
    Scenario,
    format_validation_error,
    read_scenario_file,
    scenario_from_dict,
)
from sim.sweep import apply_params, execute, make_points

Rows = list[dict[str, Any]]


class PlanSpec(InputModel):
    """The `plan:` block of a scenario file (all optional; CLI flags override)."""

    rate: float | None = Field(default=None, gt=0, description="load to plan for, in the load knob's units")
    candidates: list[dict[str, Any]] = Field(default_factory=list, description="configurations to compare (overrides)")
    max_replicas: int = Field(default=64, ge=1, le=MAX_REPLICAS)
    replications: int = Field(default=3, ge=1)
    rate_tolerance: float = Field(default=0.05, gt=0, lt=1)
    max_evaluations: int = Field(default=40, ge=2)


@dataclass(frozen=True)
class LoadKnob:
    path: str
    integer: bool
    unit: str
    value: float
    maximum: float          # the scenario schema's bound: the search never asks for more


def load_knob(sc: Scenario) -> LoadKnob:
    """Which scenario key sets the load, and its current value."""
    w = sc.workload
    a = w.arrivals
    if isinstance(a, ClosedLoop):
        return LoadKnob("workload.arrivals.clients", True, "clients", a.clients, MAX_CLIENTS)
    if w.trace is not None:
        return LoadKnob("workload.trace.rate_scale", False, "x trace speed", w.trace.rate_scale, MAX_RATE_SCALE)
    # A rate's ceiling: the schema's, and the one that keeps the run's requests within bounds.
    max_rate = min(MAX_RATE_PER_S, MAX_REQUESTS / sc.duration_s)
    if w.sessions is not None:
        return LoadKnob("workload.sessions.rate_per_s", False, "sessions/s", w.sessions.rate_per_s, max_rate)
    if isinstance(a, Poisson | GammaArrivals):
        return LoadKnob("workload.arrivals.rate_per_s", False, "requests/s", a.rate_per_s, max_rate)
    if isinstance(a, Diurnal):
        return LoadKnob("workload.arrivals.mean_rate_per_s", False, "requests/s (mean)", a.mean_rate_per_s, max_rate)
    kinds = "poisson, gamma, diurnal, closed_loop, sessions or a trace"
    if isinstance(a, Piecewise):
        raise InputError(f"plan: workload.arrivals.kind 'piecewise' has no single load knob; plan with {kinds}")
    if isinstance(a, Offline):
        raise InputError("plan: workload.arrivals.kind 'offline' has no load knob (every request arrives at t = 0, "
                         f"and the SLO does not bound a batch job); plan with {kinds}")
    raise InputError(f"plan: workload.arrivals {a!r} has no load knob; plan with {kinds}")


def meets(rows: Rows) -> bool:
    return bool(rows) and all(r.get("error") == "" and bool(r.get("slo_met")) for r in rows)


@dataclass
class Search:
    """Outcome of one search: the answer (None if infeasible) and every evaluation made."""

    answer: float | None
    evaluations: list[tuple[float, bool, Rows]] = field(default_factory=list)

    def rows_at(self, value: float) -> Rows:
        for v, _, rows in self.evaluations:
            if v == value:
                return rows
        return []


def min_replicas(evaluate: Callable[[int], Rows], max_replicas: int) -> Search:
    """Smallest replica count that meets the SLO (exponential search, then bisection)."""
    s = Search(None)

    def ok(n: int) -> bool:
        rows = evaluate(n)
        good = meets(rows)
        s.evaluations.append((n, good, rows))
        return good

    lo, n = 0, 1                     # lo: largest count known to fail
    while not ok(n):
        lo = n
        if n >= max_replicas:
            return s
        n = min(2 * n, max_replicas)
    hi = n                           # hi: smallest count known to meet
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    s.answer = hi
    return s


def max_load(evaluate: Callable[[float], Rows], start: float, integer: bool, rel_tol: float,
             max_evaluations: int, maximum: float = math.inf) -> Search:
    """Highest load that meets the SLO (bracketing by doubling/halving, then bisection), at most
    `maximum` (the answer is `maximum` when even that meets the SLO)."""
    s = Search(None)

    def norm(v: float) -> float:
        return min(maximum, float(max(1, round(v))) if integer else v)

    def ok(v: float) -> bool:
        rows = evaluate(v)
        good = meets(rows)
        s.evaluations.append((v, good, rows))
        return good

    v = norm(start)
    if ok(v):
        lo, hi = v, None
        while hi is None and len(s.evaluations) < max_evaluations:
            nxt = norm(lo * 2)
            if nxt <= lo:           # at the schema's bound and still within the SLO
                break
            if ok(nxt):
                lo = nxt
            else:
                hi = nxt
        if hi is None:
            s.answer = lo
            return s
    else:
        hi, lo = v, None
        floor = start / 1024
        while lo is None and len(s.evaluations) < max_evaluations:
            nxt = norm(hi / 2)
            if nxt >= hi or nxt < floor:
                return s  # even the smallest load fails: infeasible
            if ok(nxt):
                lo = nxt
            else:
                hi = nxt
        if lo is None:
            return s

    if lo is None or hi is None:
        return s

    def narrow(lo: float, hi: float) -> bool:
        return hi - lo <= 1 if integer else (hi - lo) <= rel_tol * hi

    while not narrow(lo, hi) and len(s.evaluations) < max_evaluations:
        mid = norm((lo + hi) / 2)
        if mid in (lo, hi):
            break
        if ok(mid):
            lo = mid
        else:
            hi = mid
    s.answer = lo
    return s


def _mean(rows: Rows, key: str) -> float:
    vals = [float(r[key]) for r in rows if r.get("error") == "" and key in r]
    finite = [v for v in vals if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summary_row(candidate: int, overrides: dict[str, Any], rows: Rows) -> dict[str, Any]:
    """Mean figures of one evaluated configuration (for the plan table)."""
    return {
        "candidate": candidate,
        "overrides": ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(scenario as is)",
        "gpus": _mean(rows, "gpus"),
        "usd_per_m_output_tokens": _mean(rows, "usd_per_m_output_tokens"),
        "usd_per_m_total_tokens": _mean(rows, "usd_per_m_total_tokens"),
        "price_usd_per_gpu_h": _mean(rows, "price_usd_per_gpu_h"),
        "ttft_s_p99": _mean(rows, "ttft_s_p99"),
        "tpot_s_p99": _mean(rows, "tpot_s_p99"),
        "slo_attainment": _mean(rows, "slo_attainment"),
        "gpu_busy_fraction": _mean(rows, "gpu_busy_fraction"),
        "total_tok_per_s_per_gpu": _mean(rows, "total_tok_per_s_per_gpu"),
    }


def cheapest(table: pd.DataFrame) -> pd.Series | None:
    feasible = table[table["feasible"]]
    if feasible.empty:
        return None
    return feasible.sort_values(["usd_per_m_output_tokens", "gpus"], kind="stable").iloc[0]


STOPPING_RULES = (
    "meets the SLO = every replication reports slo_met; min replicas: 1, 2, 4, ... then bisection; "
    "max load: double/halve to bracket, then bisect until the bracket is within rate_tolerance "
    "(integer knobs: 1 apart) or max_evaluations"
)


@dataclass(frozen=True)
class PlanFile:
    """A parsed plan file: the base scenario data, its validated scenario, the plan block, where it lives."""

    base: dict[str, Any]
    scenario: Scenario
    spec: PlanSpec
    base_dir: str
    source: str


def load_plan(path: str | Path, overrides: dict[str, Any] | None = None,
              spec_updates: dict[str, Any] | None = None) -> PlanFile:
    """Read a scenario file with an optional `plan:` block; `spec_updates` (command-line flags)
    override the block. Every candidate is validated up front."""
    p = Path(path)
    base, blocks = read_scenario_file(p, overrides)
    try:
        spec = PlanSpec.model_validate(blocks.get("plan") or {})
    except ValidationError as err:
        raise InputError(format_validation_error(err, str(p), prefix="plan.")) from None
    if spec_updates:
        try:
            spec = PlanSpec.model_validate({**spec.model_dump(), **spec_updates})
        except ValidationError as err:
            raise InputError(format_validation_error(err, "command line", prefix="--")) from None
    base_dir = str(p.parent.resolve())
    sc = scenario_from_dict(base, source=str(p), base_dir=base_dir)
    knob = load_knob(sc)
    load = {} if spec.rate is None else {knob.path: spec.rate}
    roles = set()
    for i, cand in enumerate(spec.candidates or [{}]):
        try:
            roles.add(scenario_from_dict(apply_params(base, {**cand, **load}), source=str(p), base_dir=base_dir).serving.role)
        except InputError as err:
            where = f"plan.candidates[{i}]" if spec.candidates else "the scenario"
            at = f" at --rate {spec.rate:g} ({knob.path})" if load else ""
            raise InputError(f"{err} (in {where}{at})") from None
    if len(roles) > 1:
        raise InputError(f"{p}: plan.candidates mix serving.role values {sorted(roles)}: a decode pool's GPUs leave out "
                         "the prefill pool's, so its cost does not compare with a mixed pool's; plan one role at a time")
    return PlanFile(base, sc, spec, base_dir, str(p))


@dataclass
class PlanResult:
    """The answer of a capacity plan: one row per candidate, every simulation run, the cheapest."""

    mode: str                       # "min_replicas" or "max_load"
    knob: LoadKnob
    load: float | None              # the load planned for (min_replicas mode)
    replications: int
    candidates: pd.DataFrame
    evaluations: pd.DataFrame
    cheapest: int | None
    stopping_rules: str = STOPPING_RULES

    def answer(self) -> dict[str, Any]:
        """Plain data for plan.json."""
        return {"mode": self.mode, "load_knob": self.knob.path, "load_unit": self.knob.unit, "load": self.load,
                "replications": self.replications, "stopping_rules": self.stopping_rules,
                "cheapest_candidate": self.cheapest, "candidates": self.candidates.to_dict(orient="records")}


def plan(pf: PlanFile, executor: Executor, *, max_rate: bool = False,
         on_evaluation: Callable[[int, str, float, bool], None] | None = None) -> PlanResult:
    """Run the plan's searches on `executor`: per candidate the fewest replicas that meet the SLO
    at the load (or, with max_rate, the highest load its replicas sustain), and the cheapest.
    `on_evaluation(candidate, knob, value, met)` is called after each evaluation."""
    sc, spec = pf.scenario, pf.spec
    knob = load_knob(sc)
    rate = spec.rate if spec.rate is not None else knob.value
    candidates = spec.candidates or [{}]
    evaluations: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []

    def evaluate(cand_i: int, params: dict[str, Any], label: str, value: float) -> Rows:
        rows = list(execute(pf.base, pf.base_dir, make_points([params], spec.replications, sc.seed), executor))
        failed = [r for r in rows if r.get("error")]
        if failed:    # an error is not an SLO miss: the search's answer would be wrong
            where = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            raise SimulationFailed(f"plan: candidate {cand_i} ({where}) replication {failed[0]['replication']} "
                                   f"failed: {failed[0]['error']}")
        met = meets(rows)
        evaluations.extend({"candidate": cand_i, "search": label, "value": value, "met": met,
                            **{k: v for k, v in r.items() if k != "traceback"}} for r in rows)
        if on_evaluation is not None:
            on_evaluation(cand_i, label, value, met)
        return rows

    for i, cand in enumerate(candidates):
        def at_load(v: float, i: int = i, cand: dict[str, Any] = cand) -> Rows:
            return evaluate(i, {**cand, knob.path: v}, knob.path, v)

        def with_replicas(n: float, i: int = i, cand: dict[str, Any] = cand) -> Rows:
            return evaluate(i, {**cand, knob.path: rate, "serving.replicas": n}, "serving.replicas", n)

        if max_rate:
            search = max_load(at_load, start=knob.value, integer=knob.integer, rel_tol=spec.rate_tolerance,
                              max_evaluations=spec.max_evaluations, maximum=knob.maximum)
            row = _candidate_row(i, cand, search)
            replicas = scenario_from_dict(apply_params(pf.base, cand), base_dir=pf.base_dir).serving.replicas
            row.update({"max_load": search.answer, "replicas": replicas,
                        "max_load_per_replica": None if search.answer is None else search.answer / replicas})
        else:
            search = min_replicas(with_replicas, spec.max_replicas)
            row = _candidate_row(i, cand, search)
            row["min_replicas"] = search.answer
        table.append(row)
    plan_df = pd.DataFrame(table)
    best = cheapest(plan_df)
    return PlanResult("max_load" if max_rate else "min_replicas", knob, None if max_rate else rate,
                      spec.replications, plan_df, pd.DataFrame(evaluations),
                      None if best is None else int(best["candidate"]))


def _candidate_row(i: int, cand: dict[str, Any], search: Search) -> dict[str, Any]:
    """The figures at a candidate's answer (or at its last evaluation, if infeasible)."""
    rows = search.rows_at(search.answer) if search.answer is not None else (search.evaluations[-1][2]
                                                                            if search.evaluations else [])
    row = summary_row(i, cand, rows)
    row["feasible"] = search.answer is not None
    row["evaluations"] = len(search.evaluations)
    return row
