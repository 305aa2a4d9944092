"""The report of a study of many configurations: a sweep or a capacity plan.

It answers which configuration to buy and why: the **recommendation** is the cheapest
configuration that meets the SLO, by mean $ per million output tokens (ties: fewer GPUs), the rule
of sim/plan.py `cheapest`. A configuration meets the SLO when every one of its replications
finished and reports ``slo_met`` (as the planner requires). Runners-up, latency against load,
the throughput/interactivity frontier with cost, the confidence intervals of the replications and
the sensitivity of the recommendation follow; a representative run (the recommended configuration,
replication 0, simulated again by the CLI into ``representative/`` with its full tables) supplies
the latency distribution, the time series and the cost breakdown.

Month = 730 hours. $/month = GPUs x $/GPU-h x 730 at the configuration's load.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.errors import InputError
from sim.metrics.registry import KV_SWEEP_KEYS, SPEC_SWEEP_KEYS
from sim.perf.split import SPLIT_KEYS
from sim.report import REPRESENTATIVE_DIR, figures
from sim.report.content import (
    HOURS_PER_MONTH,
    FigureRef,
    Report,
    RunFolder,
    Section,
    Table,
    num,
    pct,
    per_s,
    read_run_folder,
    seconds,
    usd,
    usd_per_m,
)
from sim.report.manifests import PlanManifest, SweepManifest, read_manifest, require_columns
from sim.report.sensitivity import sensitivity_section
from sim.scenario import LOAD_KNOB_PATHS
from sim.sweep import (
    PARETO_X,
    PARETO_Y,
    aggregate,
    display_cell,
    expand,
    paired_difference,
    pareto_frontier,
    point_id,
)

#: Scenario keys that set the load (the sweep axes drawn on the latency-against-load x axis).
LOAD_PATHS = (*LOAD_KNOB_PATHS, "workload.sessions.rate_per_s")

COST = "usd_per_m_output_tokens"


@dataclass
class StudyFolder:
    """A sweep's or plan's results, one row per configuration in `configs`."""

    path: Path
    kind: str                         # "sweep" or "plan"
    name: str
    manifest: dict[str, Any]          # sweep.json or plan.json
    configs: pd.DataFrame             # label, params, seed0, meets, replications, <metric>_mean / _ci95
    curves: pd.DataFrame              # load points for latency-against-load and the frontier
    curve_x: str                      # column of `curves` on the x axis
    curve_x_label: str
    curve_group: str | None
    curve_ticks: list[str] | None     # category labels when the x axis is not a load
    recommended: int | None           # row of `configs`
    replications: int
    failed: list[str] = field(default_factory=list)
    representative: RunFolder | None = None
    load_axis: str | None = None      # a sweep's grid axis that sets the load
    load_only: bool = False           # the load is the only axis: one configuration at several loads
    scenario_load: float | None = None
    at_load: float | None = None      # the load the recommendation is made at (grid load axis with others)

    def candidates(self) -> pd.DataFrame:
        """The rows the answer is chosen from: every configuration, or those at the planning load."""
        if self.at_load is None or self.load_axis is None:
            return self.configs
        return self.configs[self.configs[self.load_axis].astype(float) == self.at_load]

    def closest(self) -> pd.Series:
        """The configuration nearest to meeting the SLO, when none meets it."""
        return self.candidates().sort_values("slo_attainment_mean", ascending=False, kind="stable").iloc[0]

    @property
    def base(self) -> dict[str, Any] | None:
        return self.manifest.get("base")

    @property
    def base_dir(self) -> str | None:
        return self.manifest.get("base_dir")


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def label_of(params: dict[str, Any]) -> str:
    """A configuration's name for people: `gpu=h200, tp=2` (KV tier lists as `HBM + host_dram`)."""
    def show(v: Any) -> str:
        return display_cell(json.dumps(v) if isinstance(v, list) else v) if not isinstance(v, dict) else \
            json.dumps(v, separators=(",", ":"))[:40]
    return ", ".join(f"{_short(k)}={show(v)}" for k, v in params.items()) or "the scenario as is"


def _replicas(n: int) -> str:
    return f"{n} replica{'s' if n != 1 else ''}"


def recommend(configs: pd.DataFrame) -> int | None:
    """Row of the cheapest configuration that meets the SLO (ties: fewer GPUs), or None."""
    ok = configs[configs["meets"]]
    if ok.empty:
        return None
    return int(ok.sort_values([f"{COST}_mean", "gpus_mean"], kind="stable").index[0])


def read_study_folder(path: Path) -> StudyFolder:
    if (path / "sweep.json").is_file():
        study = _read_sweep(path)
    elif (path / "plan.json").is_file():
        study = _read_plan(path)
    else:
        raise InputError(f"{path}: not a sweep's or plan's results folder (no sweep.json or plan.json)")
    try:     # a damaged representative run is no representative run (the CLI simulates it again)
        study.representative = read_run_folder(path / REPRESENTATIVE_DIR)
    except InputError:
        study.representative = None
    return study


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read: {err}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object")
    return data


def _parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read: {err}") from None


def _finish(configs: pd.DataFrame) -> pd.DataFrame:
    configs = configs.reset_index(drop=True)
    configs["usd_per_month_mean"] = configs["gpus_mean"] * configs["price_usd_per_gpu_h_mean"] * HOURS_PER_MONTH
    return configs


def _read_sweep(path: Path) -> StudyFolder:
    raw = _read_json(path / "sweep.json")
    manifest = read_manifest(SweepManifest, raw, path / "sweep.json")
    for need in ("aggregate.parquet", "sweep.parquet"):
        if not (path / need).is_file():
            raise InputError(f"{path}: the sweep has no {need} yet (is it still running?)")
    agg, rows = _parquet(path / "aggregate.parquet"), _parquet(path / "sweep.parquet")
    require_columns(agg, ("point_id", "replications", "slo_met_mean", "gpus_mean", "price_usd_per_gpu_h_mean", f"{COST}_mean"),
                    path / "aggregate.parquet")
    require_columns(rows, ("point_id", "replication", "seed"), path / "sweep.parquet")
    spec = manifest.spec
    params_list = expand(spec)
    by_id = {point_id(p): p for p in params_list}
    replications = spec.replications
    axes = list(spec.axes) + list(spec.zip)
    failed_ids = set(rows.loc[rows["error"] != "", "point_id"]) if "error" in rows else set()
    ok = rows[rows["error"] == ""] if "error" in rows else rows
    seed0 = {pid: int(s) for pid, s in zip(ok.loc[ok["replication"] == 0, "point_id"],
                                           ok.loc[ok["replication"] == 0, "seed"], strict=True)}
    if agg.empty:
        raise InputError(f"{path}: no point of the sweep finished; nothing to report")
    configs = agg.copy()
    configs["params"] = [by_id.get(pid, {}) for pid in configs["point_id"]]
    configs["cost_reps"] = _per_replication(ok, "point_id", list(configs["point_id"]))
    configs["label"] = [label_of(p) for p in configs["params"]]
    # object dtype: a missing seed must not turn the column to float (seeds exceed 2**53)
    configs["seed0"] = pd.Series([seed0.get(pid) for pid in configs["point_id"]], index=configs.index, dtype=object)
    configs["meets"] = [(m == 1.0) and (n == replications) and pid not in failed_ids
                        for m, n, pid in zip(configs["slo_met_mean"], configs["replications"], configs["point_id"],
                                             strict=True)]
    configs = _finish(configs)
    load = next((a for a in axes if a in LOAD_PATHS), None)
    config_keys = [a for a in axes if a != load]
    configs["config_label"] = [label_of({k: p.get(k) for k in config_keys}) for p in configs["params"]]
    group = "config_label" if config_keys and configs["config_label"].nunique() > 1 else None
    if load is not None:
        x, x_label, ticks = load, f"{_short(load).replace('_', ' ')} (load)", None
        curves = configs
    else:
        curves = configs.assign(_pos=range(len(configs)))
        x, x_label, ticks, group = "_pos", "configuration", list(configs["label"]), None
    failed = [f"{label_of(by_id.get(pid, {}))}: {err}" for pid, err in
              rows.loc[rows["error"] != "", ["point_id", "error"]].drop_duplicates("point_id").itertuples(index=False)] \
        if "error" in rows else []
    study = StudyFolder(path, "sweep", manifest.name or path.name, raw, configs, curves, x, x_label,
                        group, ticks, None, replications, failed)
    # A load on the grid is not a choice: the answer is given at one load (a load zipped with
    # the other keys scales with the configuration, and is part of it).
    if load is not None and load in spec.axes:
        study.load_axis, study.load_only = load, not config_keys
        study.scenario_load = _number(_dotted(manifest.base, load))
        study.at_load = _planning_load(configs, load, study.scenario_load, study.load_only)
    study.recommended = _recommend_sweep(study)
    return study


def _per_replication(rows: pd.DataFrame, key: str, points: list[Any]) -> list[dict[int, float]]:
    """Each point's $ per million output tokens by replication (for paired comparisons)."""
    if COST not in rows:
        return [{} for _ in points]
    by = {k: dict(zip(g["replication"].astype(int), g[COST].astype(float), strict=True))
          for k, g in rows.groupby(key, sort=False)}
    return [by.get(p, {}) for p in points]


def _dotted(data: dict[str, Any] | None, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) else None


def _planning_load(configs: pd.DataFrame, load: str, scenario_load: float | None, load_only: bool) -> float | None:
    """The load the recommendation is made at: the scenario's, or the smallest swept load above
    it, or the highest swept one. One configuration at several loads has no such load: its answer
    is its operating point (`_recommend_sweep`)."""
    if load_only:
        return None
    values = sorted(float(v) for v in configs[load].unique())
    if scenario_load is None:
        meeting = sorted(float(v) for v in configs.loc[configs["meets"], load].unique())
        return meeting[-1] if meeting else values[-1]
    return next((v for v in values if v >= scenario_load - 1e-12), values[-1])


def _recommend_sweep(study: StudyFolder) -> int | None:
    """Row of the answer: the cheapest SLO-meeting configuration (at the planning load when the
    sweep varies the load); for one configuration at several loads, the highest load within the
    SLO (its operating point: the most its GPUs carry)."""
    c, load = study.configs, study.load_axis
    if load is None:
        return recommend(c)
    if study.load_only:
        ok = c[c["meets"]]
        return None if ok.empty else int(ok[load].astype(float).idxmax())
    return recommend(c[c[load].astype(float) == study.at_load])


def _read_plan(path: Path) -> StudyFolder:
    raw = _read_json(path / "plan.json")
    manifest = read_manifest(PlanManifest, raw, path / "plan.json")
    evaluations = path / "evaluations.parquet"
    if not evaluations.is_file():
        raise InputError(f"{path}: the plan has no evaluations.parquet (copied half-way?); run the plan again")
    ev = _parquet(evaluations)
    if ev.empty:
        raise InputError(f"{path}: the plan made no evaluation; nothing to report")
    require_columns(ev, ("candidate", "value", "met", "replication", "seed", "gpus", "price_usd_per_gpu_h", COST),
                    evaluations)
    cands = manifest.candidates
    unknown = sorted(set(ev["candidate"]) - {c.candidate for c in cands})
    if unknown:
        raise InputError(f"{evaluations}: evaluations of candidates {unknown}, which plan.json does not list")
    # Folders written before plan.json kept the overrides: the label comes from plan.csv's text.
    overrides = manifest.candidate_overrides or [_parse_overrides(c.overrides) for c in cands]
    knob, load, mode, unit = manifest.load_knob, manifest.load, manifest.mode, manifest.load_unit
    per_value = aggregate(ev, ["candidate", "value", "met"])
    rows = []
    for c in cands:
        i = c.candidate
        answer = c.min_replicas if mode == "min_replicas" else c.max_load
        feasible = c.feasible and answer is not None and not math.isnan(answer)
        mine = per_value[per_value["candidate"] == i]
        mine_ev = ev[ev["candidate"] == i]
        if mine_ev.empty:
            continue
        # infeasible: the figures of its last evaluation, as plan.csv gives them
        at = mine[mine["value"] == (answer if feasible else mine_ev["value"].iloc[-1])]
        if at.empty:
            continue
        r = at.iloc[0].to_dict()
        value = float(r["value"])
        params = {**overrides[i], knob: load, "serving.replicas": int(value)} if mode == "min_replicas" else \
            {**overrides[i], knob: value}
        seeds = mine_ev[(mine_ev["value"] == value) & (mine_ev["replication"] == 0)]["seed"]
        r.update({"candidate": i, "params": params, "meets": feasible and bool(r["met"]),
                  "cost_reps": _per_replication(mine_ev, "value", [value])[0],
                  "label": label_of(overrides[i]) + (f" x {_replicas(int(value))}" if mode == "min_replicas" else
                                                     f" at {value:.4g} {unit}"),
                  "seed0": int(seeds.iloc[0]) if len(seeds) else None})
        rows.append(r)
    if not rows:
        raise InputError(f"{path}: no candidate of the plan has an evaluation at its answer; nothing to report")
    configs = _finish(pd.DataFrame(rows))
    curves = per_value.copy()
    replicas = {c.candidate: c.replicas for c in cands}
    if mode == "min_replicas":
        curves["load_per_replica"] = float(load or 0.0) / curves["value"]
    else:
        curves["load_per_replica"] = [v / max(1, replicas.get(int(c)) or 1) for c, v in
                                      zip(curves["candidate"], curves["value"], strict=True)]
    curves["candidate_label"] = [label_of(overrides[int(c)]) for c in curves["candidate"]]
    name = str((manifest.base or {}).get("name") or path.parent.name)
    # The plan's rule (sim/plan.py `cheapest`) on the same figures: the candidate plan.json names.
    return StudyFolder(path, "plan", name, raw, configs, curves, "load_per_replica",
                       f"load per replica ({unit})", "candidate_label", None, recommend(configs), manifest.replications)


def _parse_overrides(text: str) -> dict[str, Any]:
    """plan.csv's `overrides` text (`hardware.gpu=h200, serving.parallelism.tp=2`) back to keys and
    values, for a label; "(scenario as is)" is none."""
    pairs = [part.partition("=") for part in text.split(", ") if "=" in part]
    return {k.strip(): v.strip() for k, _, v in pairs}


# ---- the report ---------------------------------------------------------------------------------------

def _pm(row: pd.Series, metric: str, fmt: Any) -> str:
    """mean ± 95% half-width, formatted; the half-width only where there are replications."""
    mean, ci = row.get(f"{metric}_mean"), row.get(f"{metric}_ci95")
    text = fmt(mean)
    if isinstance(ci, int | float) and math.isfinite(ci) and ci > 0:
        text += f" ± {fmt(ci).replace('/M', '')}" if fmt is usd_per_m else f" ± {fmt(ci)}"
    return text


def study_report(study: StudyFolder) -> Report:
    rep = study.representative
    slo = (rep.scenario["slo"] if rep is not None else (study.base or {}).get("slo")) or {}
    kind = "sweep" if study.kind == "sweep" else "capacity plan"
    subtitle = (f"{kind} of {len(study.configs)} configuration{'s' if len(study.configs) != 1 else ''}, "
                f"{study.replications} replication{'s' if study.replications != 1 else ''} each")
    sections = [*_answer(study, slo), _confidence(study), _simulated(study), _assumptions(study),
                _latency_load(study, slo), _frontier(study)]
    if rep is not None:
        from sim.report.content import _cost, _latency, _levers, _over_time
        subject = "the recommended configuration" if study.recommended is not None else "the closest configuration"
        sections.append(sensitivity_section(rep.sensitivity, float(slo.get("percentile", 99)), subject))
        sections.append(_price_ranking(study))
        for sec in (_latency(rep), _over_time(rep), _cost(rep), _levers(rep)):
            sec.title = f"{sec.title} ({subject}, one run)"
            for fig in sec.figures:
                fig.name = f"representative_{fig.name}"
            sections.append(sec)
    else:
        sections.append(Section("Sensitivity", ["No representative run in this folder: `run.py report` simulates the "
                                                "recommended configuration again when the folder records its scenario "
                                                "(folders written before reports of sweeps and plans do not)."]))
    sections += [_levers_across(study), _every_config(study)]
    return Report(f"{study.name}: capacity and cost report", subtitle, [s for s in sections if s is not None])


#: The unit of each load key, for people ("20 requests/s", "32 clients").
LOAD_UNITS = {"workload.arrivals.rate_per_s": "requests/s", "workload.arrivals.mean_rate_per_s": "requests/s (mean)",
              "workload.arrivals.clients": "clients", "workload.trace.rate_scale": "x the trace's speed",
              "workload.sessions.rate_per_s": "sessions/s"}


def load_text(key: str, value: Any) -> str:
    """`20 requests/s`, `32 clients`: a load with its unit, to 4 significant digits."""
    v = _number(value)
    shown = f"{v:.4g}" if v is not None else str(value)
    return f"{shown} {LOAD_UNITS.get(key, _short(key))}"


def _runner_up(study: StudyFolder) -> pd.Series | None:
    """The next cheapest SLO-meeting alternative to the recommendation (none for an operating point:
    another load is not an alternative)."""
    if study.recommended is None or study.load_only:
        return None
    cand = study.candidates()
    others = cand[cand["meets"]].drop(index=study.recommended).sort_values([f"{COST}_mean", "gpus_mean"], kind="stable")
    return None if others.empty else others.iloc[0]


def _answer(study: StudyFolder, slo: dict[str, Any]) -> list[Section]:
    """The recommendation, the runners-up, and (for a sweep over load) the cheapest at each load."""
    c = study.configs
    p = f"p{slo.get('percentile', 99):g}"
    target = (f"{p} TTFT ≤ {seconds(slo.get('ttft_s'))} and {p} TPOT ≤ {seconds(slo.get('tpot_s'))}" if slo else
              "the scenario's SLO")
    paras = [_answer_intro(study, target)]
    per_load = _cheapest_per_load(study)
    if study.recommended is None:
        best = study.closest()
        where = f" at {load_text(study.load_axis, study.at_load)}" if study.at_load is not None and study.load_axis \
            else ""
        paras.append(f"<b>No configuration meets the SLO{where}.</b> The closest is {best['label']}, with "
                     f"{pct(best['slo_attainment_mean'])} of the requests within both targets: add capacity or relax "
                     "the SLO.")
        out = [Section("The answer", paras, [_config_table(c.loc[[best.name]])])]
        if per_load is not None:
            out.append(per_load)
        return out
    r = c.loc[study.recommended]
    paras.append(_recommendation(study, r, p))
    out = [Section("The answer", paras, [_config_table(c.loc[[study.recommended]])])]
    out += _runners_up(study)
    if per_load is not None:
        out.append(per_load)
    return out


def _answer_intro(study: StudyFolder, target: str) -> str:
    c, cand = study.configs, study.candidates()
    meets = int(cand["meets"].sum())
    rule = "the cheapest of those by $ per million output tokens (ties: fewer GPUs)"
    if study.kind == "plan":
        m, n = study.manifest, len(c)
        what = (f"the fewest replicas that meet the SLO ({target}, in every replication) at "
                f"{_number(m.get('load')) or 0:.4g} {m.get('load_unit', '')}" if m.get("mode") == "min_replicas" else
                f"the highest load ({m.get('load_unit', '')}) at which its replicas meet the SLO ({target}, in every "
                "replication)")
        return (f"For each of the {n} candidate{'s' if n != 1 else ''} the plan searched {what}; {meets} of them "
                "found one within the search's limits." + (f" The recommendation is {rule}." if meets else ""))
    if study.load_axis is None:
        n = len(c)
        return (f"{n} configuration{'s were' if n != 1 else ' was'} simulated; {meets} of them meet the SLO ({target}, "
                "in every replication)." + (f" The recommendation is {rule}." if meets else ""))
    key = study.load_axis
    loads = sorted(float(v) for v in c[key].unique())
    shown = ", ".join(f"{v:.4g}" for v in loads)
    if study.load_only:
        return (f"The sweep runs one configuration at {len(loads)} loads ({shown} {LOAD_UNITS.get(key, _short(key))}); "
                f"{meets} of them meet the SLO ({target}, in every replication)."
                + (" Its operating point is the highest of those loads: the most its GPUs carry within the SLO, and "
                   "(GPUs are paid for by the hour) about its lowest cost per token." if meets else ""))
    k = c["config_label"].nunique()
    at = load_text(key, study.at_load)
    sl = study.scenario_load
    why = ("the scenario's load" if sl is not None and math.isclose(sl, study.at_load or 0.0) else
           f"the smallest swept load at or above the scenario's {load_text(key, sl)}" if sl is not None and
           (study.at_load or 0.0) > sl else
           f"the highest swept load (the scenario's, {load_text(key, sl)}, is above the sweep's range)" if sl is not None
           else "the highest load at which a configuration meets the SLO")
    return (f"{k} configurations were each simulated at {len(loads)} loads ({shown} "
            f"{LOAD_UNITS.get(key, _short(key))}). The answer is given at {at}, {why}: {meets} of the {k} configurations "
            f"meet{'s' if meets == 1 else ''} the SLO there ({target}, in every replication)"
            + (f", and the recommendation is {rule}" if meets else "") + ". \"Cheapest at each load\" answers for the "
            "other loads.")


def _offered(study: StudyFolder, r: pd.Series) -> str | None:
    """The load the row was simulated at, as set (None when the study does not set one)."""
    if study.load_axis is not None:
        return load_text(study.load_axis, r.get(study.load_axis))
    m = study.manifest
    if study.kind == "plan":
        value = m.get("load") if m.get("mode") == "min_replicas" else r.get("value")
        return f"{_number(value):.4g} {m.get('load_unit', '')}".strip() if _number(value) is not None else None
    return None


def _recommendation(study: StudyFolder, r: pd.Series, p: str) -> str:
    if study.load_only and study.load_axis:
        head = f"Operating point: {load_text(study.load_axis, r.get(study.load_axis))}"
    elif study.at_load is not None:
        head = f"Recommended: {r['config_label']} at {load_text(study.load_axis or '', study.at_load)}"
    else:
        head = f"Recommended: {r['label']}"
    offered = _offered(study, r)
    measured = f"{num(r.get('arrival_rate_per_s_mean'), 2)} requests/s arrived"
    at = f"at {offered} ({measured})" if offered and not offered.endswith(" requests/s") else \
        f"at {offered} offered ({measured})" if offered else f"at {measured}"
    gpus = num(r["gpus_mean"])
    return (f"<b>{head}</b>. It takes {gpus} GPU{'s' if r['gpus_mean'] != 1 else ''} and costs "
            f"<b>{usd(r[f'{COST}_mean'], 3)} per million output tokens</b> when the output tokens carry the whole cost. "
            "Billed the way APIs price tokens (input and output at fixed ratios that together recover the cost), that "
            f"is {usd(r.get('usd_per_m_uncached_input_tokens_priced_mean'), 3)} per million input tokens plus "
            f"{usd(r.get('usd_per_m_output_tokens_priced_mean'), 3)} per million output tokens. Its GPUs cost "
            f"<b>{usd(r['usd_per_month_mean'])} per month</b> (730 h at {usd(r['price_usd_per_gpu_h_mean'])} per "
            f"GPU-hour) {at}, producing {per_s(r.get('output_tok_per_s_mean'))} of output; its {p} TTFT is "
            f"{seconds(r.get('ttft_s_at_slo_percentile_mean'))} and {p} TPOT "
            f"{seconds(r.get('tpot_s_at_slo_percentile_mean'))}.")


def _runners_up(study: StudyFolder) -> list[Section]:
    c, cand = study.configs, study.candidates()
    assert study.recommended is not None
    missed = int((~cand["meets"]).sum())
    if study.load_only and study.load_axis:
        others = c[c["meets"]].drop(index=study.recommended).sort_values(study.load_axis, ascending=False)
        if others.empty:
            return []
        return [Section("Other loads within the SLO", ["The lower loads at which the configuration also meets the "
                                                       "SLO, highest first: its GPUs are less used there, so each token "
                                                       "costs more."], [_config_table(others)])]
    others = cand[cand["meets"]].drop(index=study.recommended).sort_values([f"{COST}_mean", "gpus_mean"], kind="stable")
    there = f" at {load_text(study.load_axis or '', study.at_load)}" if study.at_load is not None else ""
    note = (f" {missed} configuration{'s miss' if missed != 1 else ' misses'} the SLO{there} (all are in the last "
            "table).") if missed else ""
    if len(others):
        lead = "The next configuration that meets" if len(others) == 1 else \
            f"The next {min(10, len(others))} configurations that meet"
        return [Section("Runners-up", [f"{lead} the SLO{there}, cheapest first.{note}"],
                        [_config_table(others.head(10))])]
    if note:
        return [Section("Runners-up", [f"No other configuration meets the SLO{there}." + note])]
    return []


_CONFIG_HEADER = ["configuration", "GPUs", "$ per M output tokens", "$ per M input / output (API-style)",
                  "$ per month (GPUs)", "TTFT at SLO pct.", "TPOT at SLO pct.", "tok/s per GPU", "SLO met"]


def _config_table(rows: pd.DataFrame) -> Table:
    out = []
    for _, r in rows.iterrows():
        out.append([r["label"], num(r["gpus_mean"]), _pm(r, COST, usd_per_m),
                    f"{usd_per_m(r.get('usd_per_m_uncached_input_tokens_priced_mean'))} / "
                    f"{usd_per_m(r.get('usd_per_m_output_tokens_priced_mean'))}",
                    usd(r["usd_per_month_mean"]), _pm(r, "ttft_s_at_slo_percentile", seconds),
                    _pm(r, "tpot_s_at_slo_percentile", seconds), per_s(r.get("total_tok_per_s_per_gpu_mean")),
                    "yes" if r["meets"] else f"no ({pct(r.get('slo_met_mean'))} of replications)"])
    return Table(_CONFIG_HEADER, out)


def _cheapest_per_load(study: StudyFolder) -> Section | None:
    """For a sweep over load and configurations: the cheapest SLO-meeting configuration at each
    load, and the cheapest operating point of all (the load per GPU where tokens cost least)."""
    if study.load_axis is None or study.load_only:
        return None
    x = study.load_axis
    rows = []
    for value, g in study.configs.groupby(x, sort=True):
        i = recommend(g)
        r = None if i is None else g.loc[i]
        rows.append([load_text(x, value), "none meets the SLO" if r is None else r["config_label"],
                     "" if r is None else num(r["gpus_mean"]), "" if r is None else _pm(r, COST, usd_per_m),
                     "" if r is None else usd(r["usd_per_month_mean"])])
    paras = ["The cheapest configuration that meets the SLO at each load of the sweep: what to deploy as the load "
             "grows."]
    best = recommend(study.configs)
    if best is not None:
        b = study.configs.loc[best]
        per_gpu = _number(b.get(x))
        paras.append(f"Tokens cost least with {b['config_label']} at {load_text(x, b.get(x))} "
                     f"({usd(b[f'{COST}_mean'], 3)} per million output tokens"
                     + (f", {per_gpu / b['gpus_mean']:.3g} {LOAD_UNITS.get(x, _short(x))} per GPU"
                        if per_gpu is not None and b["gpus_mean"] else "")
                     + "): the load at which its GPUs are busiest while the SLO still holds.")
    return Section("Cheapest at each load", paras,
                   [Table(["load", "cheapest within the SLO", "GPUs", "$ per M output tokens", "$ per month (GPUs)"],
                          rows)])


def _confidence(study: StudyFolder) -> Section:
    c = study.configs
    paras = []
    if study.replications < 2:
        paras.append("Each configuration was simulated once: there are no confidence intervals. Run the study with "
                     "`replications: 3` or more to see how much the figures move from one random draw of the traffic "
                     "to the next.")
    else:
        paras.append(f"Each configuration was simulated {study.replications} times with different random draws of "
                     "the traffic; figures are means ± the 95% confidence half-width (Student's t). Replication i "
                     "uses the same seed in every configuration (common random numbers): configurations at the same "
                     "load see the same requests, which makes the comparison between them sharper than the "
                     "intervals suggest.")
        if study.recommended is not None:
            r = c.loc[study.recommended]
            mean, ci = r[f"{COST}_mean"], r.get(f"{COST}_ci95")
            if isinstance(ci, float) and math.isfinite(ci) and mean:
                paras.append(f"The recommendation's cost is known to ±{ci / mean:.1%}.")
            o = _runner_up(study)
            if o is not None and mean:
                paras.append(_ranking(r, o, mean))
    if study.kind == "plan":
        paras.append(f"Search: {study.manifest.get('stopping_rules', '')}.")
    if study.failed:
        paras.append(f"{len(study.failed)} configuration{'s' if len(study.failed) != 1 else ''} failed in at least one "
                     "replication and cannot be recommended: " + "; ".join(study.failed[:5]))
    return Section("How confident we are", paras)


def _ranking(r: pd.Series, o: pd.Series, mean: float) -> str:
    """Is the runner-up's extra cost real? Judged on the paired difference, replication by
    replication on the same traffic (common random numbers)."""
    gap, half, n = paired_difference(r.get("cost_reps") or {}, o.get("cost_reps") or {})
    if n < 2 or not math.isfinite(half):
        return (f"The runner-up ({o['label']}) costs {(o[f'{COST}_mean'] - mean) / mean:.1%} more; the replications "
                "do not pair up, so whether that is more than noise is not known.")
    diff = (f"{gap / mean:.1%} more (± {half / mean:.1%}, from the difference in each of {n} replications, measured on "
            "the same traffic)")
    if gap - half > 0:
        return f"The runner-up ({o['label']}) costs {diff}: the ranking is clear."
    return (f"<b>The runner-up ({o['label']}) is within the noise</b>: it costs {diff}, an interval that includes no "
            "difference. Treat the two as equally cheap, or run more replications.")


def _simulated(study: StudyFolder) -> Section:
    if study.kind == "sweep":
        spec = study.manifest.get("spec") or {}
        rows = [[k, ", ".join(display_cell(json.dumps(v) if isinstance(v, list) else v) for v in vals), "axis"]
                for k, vals in (spec.get("axes") or {}).items()]
        rows += [[k, ", ".join(display_cell(json.dumps(v) if isinstance(v, list) else v) for v in vals),
                  "varies together with the other zip keys"] for k, vals in (spec.get("zip") or {}).items()]
        intro = f"The sweep varies these keys of {study.manifest.get('source', 'the scenario')}:"
        header = ["scenario key", "values", "how"]
    else:
        m = study.manifest
        rows = [[str(c["candidate"]), c.get("overrides", "")] for c in m.get("candidates", [])]
        what = (f"the fewest replicas that meet the SLO at {m.get('load_knob')} = "
                f"{_number(m.get('load')) or 0:.4g} {m.get('load_unit')}"
                if m.get("mode") == "min_replicas" else f"the highest {m.get('load_knob')} each meets the SLO at")
        intro = f"The plan searched, for each candidate, {what}:"
        header = ["candidate", "overrides"]
    return Section("What was simulated", [intro], [Table(header, rows)])


def _assumptions(study: StudyFolder) -> Section | None:
    """Every other assumption, as simulated for the representative configuration, with its source."""
    rep = study.representative
    if rep is None:
        return None
    from sim.report.content import _simulated as run_assumptions

    sc = rep.scenario
    sec = run_assumptions(rep, sc["hardware"]["gpu"], sc["model"], sc["serving"], sc["serving"].get("parallelism", {}))
    which = "recommended" if study.recommended is not None else "closest"
    sec.title = f"Assumptions (as simulated for the {which} configuration)"
    sec.paragraphs.insert(0, "Model, GPU, prices, batching, traffic and SLO, each with the catalog source it came "
                             "from:")
    return sec


def _latency_load(study: StudyFolder, slo: dict[str, Any]) -> Section | None:
    if not slo:
        return None
    fig = figures.latency_load_figure(study.curves, study.curve_x, study.curve_x_label, study.curve_group,
                                      slo["ttft_s"], slo["tpot_s"], float(slo.get("percentile", 99)),
                                      ticks=study.curve_ticks)
    return Section("Latency against load",
                   [f"TTFT and TPOT at the median and at the SLO's percentile (p{slo.get('percentile', 99):g}) for each "
                    "configuration"
                    + (" (bars: 95% confidence intervals)" if study.replications > 1 else "")
                    + "; dashed red: the SLO targets. Where a line crosses its target, that configuration runs out "
                      "of capacity."],
                   figures=[FigureRef("latency_load", "Latency against load, with the SLO targets", fig)])


def _frontier(study: StudyFolder) -> Section | None:
    pts = study.curves
    x, y = f"{PARETO_X}_mean", f"{PARETO_Y}_mean"
    if x not in pts or y not in pts or pts[[x, y]].dropna().empty:
        return None
    front = pareto_frontier(pts, x, y)
    meets = "meets" if "meets" in pts else "met" if "met" in pts else None
    fig = figures.pareto_figure(pts, front, x, y, f"{COST}_mean",
                                f"{study.name}: throughput per GPU against speed per user", group=study.curve_group,
                                cost_unit="M output tok", meets=meets)
    missed = "" if meets is None or pts[meets].astype(bool).all() else \
        " Red crosses mark points that miss the SLO: a frontier point among them is not for sale at that speed."
    return Section("Throughput against speed per user, with cost",
                   ["Each point is a configuration at a load: total tokens/s (input and output) each GPU processes, "
                    "what the owner sells, against the tokens/s one user sees (1/TPOT, median). Points on the "
                    "frontier are not beaten on both; each is labelled with its $ per million output tokens, as in "
                    "the tables." + missed],
                   figures=[FigureRef("frontier", "Throughput per GPU against speed per user, frontier labelled with "
                                                  "$ per million output tokens", fig)])


def _gpu(study: StudyFolder, r: pd.Series) -> str | None:
    params = r.get("params") if isinstance(r.get("params"), dict) else {}
    gpu = params.get("hardware.gpu", _dotted(study.base, "hardware.gpu"))
    return str(gpu) if gpu is not None else None


def _price_ranking(study: StudyFolder) -> Section | None:
    """Price changes that would change the recommendation (every $/M scales with $/GPU-h)."""
    o = _runner_up(study)
    if study.recommended is None or o is None:
        return None
    r = study.configs.loc[study.recommended]
    mine, theirs = _gpu(study, r), _gpu(study, o)
    price_r, price_o = usd(r["price_usd_per_gpu_h_mean"]), usd(o["price_usd_per_gpu_h_mean"])
    if mine is not None and mine == theirs:
        text = (f"The runner-up ({o['label']}) runs on the same GPU ({mine}, {price_r} per GPU-hour): a change of that "
                "price moves both alike and cannot change the answer.")
    else:
        rise = o[f"{COST}_mean"] / r[f"{COST}_mean"] - 1
        text = (f"The recommendation stays the cheapest unless its GPUs' price per GPU-hour rises by more than "
                f"{rise:.1%} against the runner-up's ({o['label']}: {theirs or 'its GPU'} at {price_o}, against "
                f"{mine or 'its GPU'} at {price_r}).")
    return Section("Price that would change the answer", [text])


def _levers_across(study: StudyFolder) -> Section | None:
    c = study.configs
    keys = [k for k in (*SPLIT_KEYS, *KV_SWEEP_KEYS, *SPEC_SWEEP_KEYS) if f"{k}_mean" in c]
    if not keys:
        return None
    from sim.metrics.registry import metric
    ms = [metric(k) for k in keys]
    rows = [[r["label"], *[usd_per_m(r.get(f"{m.name}_mean")) if m.unit.startswith("$/M") else
                           m.display(r.get(f"{m.name}_mean")) for m in ms]] for _, r in c.iterrows()]
    return Section("Levers across the configurations",
                   ["What each configuration's levers did: a decode step at its mean batch in its parts (ms; the step "
                    "takes the larger of compute and memory, plus the rest), prefix hits and speculative acceptance "
                    "where used."],
                   [Table(["configuration", *[f"{m.header}" for m in ms]], rows)])


def _every_config(study: StudyFolder) -> Section:
    c = study.configs.sort_values(f"{COST}_mean", kind="stable")
    return Section("Every configuration", ["Cheapest first; means ± 95% confidence half-widths where there are "
                                           "replications. The full tables are beside this report (aggregate.csv or "
                                           "plan.csv and evaluations.csv)."], [_config_table(c)])
