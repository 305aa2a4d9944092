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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from sim.sweep import PARETO_X, PARETO_Y, aggregate, display_cell, expand, pareto_frontier, point_id

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
    return StudyFolder(path, "sweep", manifest.name or path.name, raw, configs, curves, x, x_label,
                       group, ticks, recommend(configs), replications, failed)


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
                  "label": label_of(overrides[i]) + (f" x {_replicas(int(value))}" if mode == "min_replicas" else
                                                     f" at {value:g} {unit}"),
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


def _answer(study: StudyFolder, slo: dict[str, Any]) -> list[Section]:
    """The recommendation, the runners-up, and (for a sweep over load) the cheapest at each load."""
    c, n = study.configs, len(study.configs)
    p = f"p{slo.get('percentile', 99):g}"
    target = (f"{p} TTFT ≤ {seconds(slo.get('ttft_s'))} and {p} TPOT ≤ {seconds(slo.get('tpot_s'))}" if slo else
              "the scenario's SLO")
    meets = int(c["meets"].sum())
    paras = [f"{n} configuration{'s were' if n != 1 else ' was'} simulated; {meets} meet{'s' if meets == 1 else ''} "
             f"the SLO ({target}, in every replication). The recommendation is the cheapest of those by $ per million "
             "output tokens (ties: fewer GPUs)."]
    if study.recommended is None:
        best = c.sort_values("slo_attainment_mean", ascending=False).iloc[0]
        paras.append(f"<b>No configuration meets the SLO.</b> The closest is {best['label']}, with "
                     f"{pct(best['slo_attainment_mean'])} of the requests within both targets: add capacity or relax "
                     "the SLO.")
        return [Section("The answer", paras, [_config_table(c.loc[[best.name]])])]
    r = c.loc[study.recommended]
    paras.append(
        f"<b>Recommended: {r['label']}</b>. It takes {num(r['gpus_mean'])} GPU{'s' if r['gpus_mean'] != 1 else ''} "
        "and costs "
        f"<b>{usd(r[f'{COST}_mean'], 3)} per million output tokens</b>; priced the way APIs bill (input and "
        f"output in fixed ratios that together recover the cost), {usd(r.get('usd_per_m_uncached_input_tokens_priced_mean'), 3)} "
        f"per million input tokens and {usd(r.get('usd_per_m_output_tokens_priced_mean'), 3)} per million output "
        f"tokens. Its GPUs cost <b>{usd(r['usd_per_month_mean'])} per month</b> (730 h at "
        f"{usd(r['price_usd_per_gpu_h_mean'])} per GPU-hour) at {num(r.get('arrival_rate_per_s_mean'), 2)} requests/s, "
        f"producing {per_s(r.get('output_tok_per_s_mean'))} of output; its {p} TTFT is "
        f"{seconds(r.get('ttft_s_at_slo_percentile_mean'))} and {p} TPOT {seconds(r.get('tpot_s_at_slo_percentile_mean'))}.")
    out = [Section("The answer", paras, [_config_table(c.loc[[study.recommended]])])]
    others = c[c["meets"]].drop(index=study.recommended).sort_values([f"{COST}_mean", "gpus_mean"], kind="stable")
    missed = n - meets
    note = f" {missed} configuration{'s miss' if missed != 1 else ' misses'} the SLO (all are in the last table)." \
        if missed else ""
    if len(others):
        out.append(Section("Runners-up", [f"The next {min(10, len(others))} configurations that meet the SLO, cheapest "
                                          f"first.{note}"], [_config_table(others.head(10))]))
    elif note:
        out.append(Section("Runners-up", ["No other configuration meets the SLO." + note]))
    per_load = _cheapest_per_load(study)
    if per_load is not None:
        out.append(Section("Cheapest at each load", ["The cheapest configuration that meets the SLO at each load of "
                                                     "the sweep: what to deploy as the load grows."], [per_load]))
    return out


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


def _cheapest_per_load(study: StudyFolder) -> Table | None:
    if study.kind != "sweep" or study.curve_ticks is not None or study.curve_group is None:
        return None
    x = study.curve_x
    rows = []
    for value, g in study.configs.groupby(x, sort=True):
        i = recommend(g)
        r = None if i is None else g.loc[i]
        rows.append([f"{value:g}" if isinstance(value, float) else str(value),
                     "none meets the SLO" if r is None else r["config_label"],
                     "" if r is None else num(r["gpus_mean"]), "" if r is None else _pm(r, COST, usd_per_m),
                     "" if r is None else usd(r["usd_per_month_mean"])])
    return Table([f"{_short(x)} (load)", "cheapest within the SLO", "GPUs", "$ per M output tokens",
                  "$ per month (GPUs)"], rows)


def _confidence(study: StudyFolder) -> Section:
    c = study.configs
    paras = []
    if study.replications < 2:
        paras.append("Each configuration was simulated once: there are no confidence intervals. Run the study with "
                     "`replications: 3` or more to see how much the figures move from one random draw of the traffic "
                     "to the next.")
    else:
        paras.append(f"Each configuration was simulated {study.replications} times with different random draws of "
                     "the traffic (the same draws for every configuration, so differences between them are not "
                     "noise); figures are means ± the 95% confidence half-width (Student's t).")
        if study.recommended is not None:
            r = c.loc[study.recommended]
            mean, ci = r[f"{COST}_mean"], r.get(f"{COST}_ci95")
            if isinstance(ci, float) and math.isfinite(ci) and mean:
                paras.append(f"The recommendation's cost is known to ±{ci / mean:.1%}.")
            others = c[c["meets"]].drop(index=study.recommended).sort_values(f"{COST}_mean")
            if len(others):
                o = others.iloc[0]
                gap, width = o[f"{COST}_mean"] - mean, (ci if isinstance(ci, float) and math.isfinite(ci) else 0.0) + \
                    (o.get(f"{COST}_ci95") if isinstance(o.get(f"{COST}_ci95"), float) and
                     math.isfinite(o.get(f"{COST}_ci95")) else 0.0)
                if gap > width:
                    paras.append(f"The runner-up ({o['label']}) costs {gap / mean:.1%} more, beyond both intervals: "
                                 "the ranking is clear.")
                else:
                    paras.append(f"<b>The runner-up ({o['label']}) is within the noise</b> ({gap / mean:.1%} more, "
                                 "intervals overlap): treat the two as equally cheap, or run more replications.")
    if study.kind == "plan":
        paras.append(f"Search: {study.manifest.get('stopping_rules', '')}.")
    if study.failed:
        paras.append(f"{len(study.failed)} configuration{'s' if len(study.failed) != 1 else ''} failed in at least one "
                     "replication and cannot be recommended: " + "; ".join(study.failed[:5]))
    return Section("How confident we are", paras)


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
        what = (f"the fewest replicas that meet the SLO at {m.get('load_knob')} = {m.get('load')} {m.get('load_unit')}"
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
    fig = figures.pareto_figure(pts, front, x, y, "usd_per_m_total_tokens_mean",
                                f"{study.name}: throughput per GPU against speed per user", group=study.curve_group)
    return Section("Throughput against speed per user, with cost",
                   ["Each point is a configuration at a load: total tokens/s each GPU produces (what the owner "
                    "sells) against the tokens/s one user sees (1/TPOT, median). Points on the frontier are not "
                    "beaten on both; each is labelled with its $ per million tokens (input and output)."],
                   figures=[FigureRef("frontier", "Throughput per GPU against speed per user, frontier labelled with "
                                                  "$ per million tokens", fig)])


def _price_ranking(study: StudyFolder) -> Section | None:
    """Price changes that would change the recommendation (every $/M scales with $/GPU-h)."""
    if study.recommended is None:
        return None
    c = study.configs
    r = c.loc[study.recommended]
    others = c[c["meets"]].drop(index=study.recommended).sort_values(f"{COST}_mean")
    if others.empty:
        return None
    o = others.iloc[0]
    rise = o[f"{COST}_mean"] / r[f"{COST}_mean"] - 1
    same_price = math.isclose(o["price_usd_per_gpu_h_mean"], r["price_usd_per_gpu_h_mean"], rel_tol=1e-9)
    text = (f"The recommendation stays the cheapest unless its price per GPU-hour rises by more than {rise:.1%} "
            f"relative to the runner-up's ({o['label']}, at {usd(o['price_usd_per_gpu_h_mean'])} per GPU-hour against "
            f"{usd(r['price_usd_per_gpu_h_mean'])}).")
    if same_price:
        text += " Both run on GPUs at the same price, so a change of that price moves both alike."
    return Section("Price that would change the answer", [text])


def _levers_across(study: StudyFolder) -> Section | None:
    c = study.configs
    keys = [k for k in (*SPLIT_KEYS, *KV_SWEEP_KEYS, *SPEC_SWEEP_KEYS) if f"{k}_mean" in c]
    if not keys:
        return None
    from sim.metrics.registry import metric
    ms = [metric(k) for k in keys]
    rows = [[r["label"], *[m.display(r.get(f"{m.name}_mean")) for m in ms]] for _, r in c.iterrows()]
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
