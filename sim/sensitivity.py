"""Sensitivity: how the answer moves when an assumption is off by a fifth.

Around one configuration (a run, or a sweep's or plan's recommendation) the report shows what
happens when

* the **load** is 20% lower or higher (the scenario's load knob, sim/plan.py `load_knob`: arrival
  rate, trace speed-up, clients or sessions per second), re-simulated;
* the **price** per GPU-hour (all-in: rental, or the TCO's $/GPU-h) is 20% lower or higher: every
  $/M figure is cost / tokens with cost = GPU-hours x $/GPU-h (sim/cost.py), so it scales exactly
  and needs no simulation;
* speculative decoding's **acceptance** is 20% lower or higher: every per-position acceptance
  a_i = S_i / S_(i-1) (sim/speculation.py `survival`) is scaled, capped at 1, and re-simulated;
* the **prefix hit rate** moves (with prefix caching). The hit rate is an outcome, so the levers
  that set it are moved by 20% and the measured hit rate is shown beside them:
  - *prefix reuse*: the share of requests that carry a shared prefix
    (`workload.shared_prefix.fraction`, capped at 1) where the workload has one; otherwise (traces
    with prompt hashes, sessions) 20% less reuse is 20% of the requests given their own cache salt
    (`workload.cache_salt_fraction`: they reuse nothing and leave nothing), and there is no +20%
    row, as the workload's own reuse is the most it has;
  - *KV tier capacity*: every tier below HBM (what a planner buys), where there are tiers.

Each variation is one simulation with the same seed as the configuration it varies (common random
numbers: the same arrivals and lengths where the load allows), so differences are the lever's, not
noise. Variations run on any concurrent.futures executor (sim/sweep.py `execute`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sim.kv_hierarchy import resolve_tiers
from sim.plan import load_knob
from sim.scenario import KvTier, Scenario, scenario_from_dict
from sim.speculation import survival
from sim.sweep import Point, apply_params, execute, point_id

#: The table's file beside a run's results (and its CSV twin).
TABLE_FILE, TABLE_CSV = "sensitivity.parquet", "sensitivity.csv"

#: The levers that move the prefix hit rate.
REUSE, CAPACITY = "prefix reuse", "KV tier capacity"

#: The relative change of every lever.
STEP = 0.20

#: Metrics each sensitivity row keeps (besides the lever's own columns).
KEPT = ("slo_met", "slo_attainment", "ttft_s_at_slo_percentile", "tpot_s_at_slo_percentile",
        "usd_per_m_output_tokens", "usd_per_m_total_tokens", "gpu_busy_fraction", "total_tok_per_s_per_gpu",
        "output_tok_per_s", "prefix_hit_rate", "spec_acceptance_rate", "arrival_rate_per_s")


@dataclass(frozen=True)
class Variation:
    lever: str              # "load", "acceptance", REUSE or CAPACITY
    change: float           # relative change of the lever: -0.2 or +0.2
    setting: str            # what was set, for people: "rate_per_s = 9.6 requests/s"
    params: dict[str, Any]  # scenario overrides on top of the configuration's


def variations(base: dict[str, Any], params: dict[str, Any], base_dir: str | None) -> list[Variation]:
    """The simulated variations that apply to configuration `params` of scenario data `base`."""
    sc = scenario_from_dict(apply_params(base, params), base_dir=base_dir)
    out: list[Variation] = []
    for change in (-STEP, STEP):
        out += [v for v in (_load(sc, change), _acceptance(sc, change), _reuse(sc, change), _capacity(sc, change))
                if v is not None]
    order = {"load": 0, "acceptance": 1, REUSE: 2, CAPACITY: 3}
    return sorted(out, key=lambda v: (order[v.lever], v.change))


def _load(sc: Scenario, change: float) -> Variation | None:
    try:
        knob = load_knob(sc)
    except ValueError:              # piecewise or offline arrivals: no single load knob
        return None
    value = knob.value * (1 + change)
    value = float(max(1, round(value))) if knob.integer else min(value, knob.maximum)
    if value == knob.value:
        return None
    shown = f"{value:.4g}" if not knob.integer else f"{int(value)}"
    key = knob.path.rsplit('.', 1)[-1]
    # "102 clients", not "clients = 102 clients"
    setting = f"{shown} {knob.unit}" if knob.unit.startswith(key) else f"{key} = {shown} {knob.unit}"
    return Variation("load", change, setting,
                     {knob.path: int(value) if knob.integer else value})


def _acceptance(sc: Scenario, change: float) -> Variation | None:
    spec = sc.speculative
    if spec is None:
        return None
    s = survival(spec.acceptance, spec.k)
    per_position = [float(s[0])] + [float(s[i] / s[i - 1]) if s[i - 1] > 0 else 0.0 for i in range(1, len(s))]
    scaled = [min(1.0, a * (1 + change)) for a in per_position]
    return Variation("acceptance", change, "per-position acceptance " + ", ".join(f"{a:.3f}" for a in scaled),
                     {"speculative.acceptance": {"per_position": scaled}})


def _reuse(sc: Scenario, change: float) -> Variation | None:
    """The workload's prefix reuse: a shared prefix's share of requests moved by `change`; else,
    for less reuse, that share of the requests given a cache salt (they reuse nothing)."""
    if not sc.serving.kv_cache.prefix_caching:
        return None
    shared = sc.workload.shared_prefix
    if shared is not None:
        fraction = min(1.0, shared.fraction * (1 + change))
        if fraction == shared.fraction:
            return None
        return Variation(REUSE, change, f"share of requests with a shared prefix = {fraction:.3f}",
                         {"workload.shared_prefix.fraction": fraction})
    salted = sc.workload.cache_salt_fraction
    if change > 0:
        if salted == 0:
            return None                # nothing to give back: the workload's own reuse is the most there is
        fraction = max(0.0, 1 - (1 - salted) * (1 + change))
    else:
        fraction = 1 - (1 - salted) * (1 + change)
    return Variation(REUSE, change, f"{fraction:.0%} of requests with their own cache salt (reuse nothing)",
                     {"workload.cache_salt_fraction": fraction})


def _capacity(sc: Scenario, change: float) -> Variation | None:
    """The capacity of every KV tier below HBM (what a planner buys), with prefix caching."""
    if not sc.serving.kv_cache.prefix_caching:
        return None
    tiers = resolve_tiers(sc)
    if not tiers:
        return None
    scaled = [{k: getattr(t, k) for k in KvTier.model_fields} | {"capacity_gb": t.capacity_gb * (1 + change)}
              for t in tiers]
    return Variation(CAPACITY, change, ", ".join(f"{t['kind']} {t['capacity_gb']:,.0f} GB" for t in scaled),
                     {"serving.kv_cache.tiers": scaled})


def price_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Price per GPU-hour -20% / +20%: every $/M figure scales with it (no simulation)."""
    rows = []
    for change in (-STEP, STEP):
        f = 1 + change
        row = {k: summary.get(k) for k in KEPT}
        for k in ("usd_per_m_output_tokens", "usd_per_m_total_tokens"):
            v = summary.get(k)
            row[k] = v * f if isinstance(v, int | float) else v
        price = summary.get("price_usd_per_gpu_h")
        setting = f"${price * f:,.2f} per GPU-hour" if isinstance(price, int | float) else "price x " + f"{f:g}"
        rows.append({"lever": "price", "change": change, "setting": setting, "simulated": False, **row})
    return rows


def baseline_row(summary: dict[str, Any]) -> dict[str, Any]:
    return {"lever": "as simulated", "change": 0.0, "setting": "", "simulated": True,
            **{k: summary.get(k) for k in KEPT}}


def run_sensitivity(base: dict[str, Any], base_dir: str | None, params: dict[str, Any], seed: int,
                    summary: dict[str, Any], executor: Executor,
                    on_row: Callable[[int], None] | None = None) -> pd.DataFrame:
    """The sensitivity table around configuration `params` (run with `seed`, giving `summary`):
    the configuration itself, then price, load, acceptance and prefix variations, one row each
    (columns: lever, change, setting, simulated, error and the KEPT metrics)."""
    vs = variations(base, params, base_dir)
    points = [Point(point_id({**params, **v.params}), {**params, **v.params}, 0, seed, seed) for v in vs]
    by_id: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(execute(base, base_dir, points, executor), 1):
        by_id[row["point_id"]] = row
        if on_row is not None:
            on_row(i)
    rows = [baseline_row(summary), *price_rows(summary)]
    for v, p in zip(vs, points, strict=True):
        r = by_id[p.point_id]
        rows.append({"lever": v.lever, "change": v.change, "setting": v.setting, "simulated": True,
                     **{k: r.get(k) for k in KEPT}, "error": r.get("error", "")})
    df = pd.DataFrame(rows)
    df["error"] = df["error"].fillna("") if "error" in df else ""
    return df
