"""The report's Sensitivity section: how the answer moves when load, price, speculative
acceptance or the prefix hit rate is off by 20% (the table of sim/sensitivity.py, written as
sensitivity.parquet beside the run's results)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sim.report import figures
from sim.report.content import FigureRef, Section, Table, pct, seconds, usd_per_m
from sim.sensitivity import CAPACITY, REUSE, STEP


def _value(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def _verdict(v: Any) -> str:
    return "meets" if v is True or v == 1 else "misses" if v is False or v == 0 else "n/a"


def _measured(r: pd.Series, levers: set[str]) -> str:
    """What the row's lever moved, as measured; the baseline row gives each of them, for comparison."""
    mine = levers if r["lever"] == "as simulated" else {r["lever"]}
    out = []
    if mine & {REUSE, CAPACITY}:
        out.append(f"prefix hit rate {pct(_value(r.get('prefix_hit_rate')))}")
    if "acceptance" in mine:
        out.append(f"acceptance {pct(_value(r.get('spec_acceptance_rate')))}")
    if "load" in mine:
        out.append(f"{_value(r.get('arrival_rate_per_s')):,.2f} requests/s arrived")
    return ", ".join(out)


def sensitivity_section(table: pd.DataFrame | None, slo_percentile: float, subject: str) -> Section:
    """The section for `subject` ("this deployment", "the recommended configuration")."""
    title = "Sensitivity"
    if table is None or table.empty:
        return Section(title, ["Not computed for this folder: `run.py report` computes it when the scenario can "
                               "be simulated again."])
    base = table[table["lever"] == "as simulated"].iloc[0]
    base_usd = _value(base["usd_per_m_output_tokens"])
    rows = []
    levers = set(table["lever"])
    for _, r in table.iterrows():
        usd = _value(r["usd_per_m_output_tokens"])
        change = "" if r["lever"] == "as simulated" else f"{r['change'] * 100:+.0f}%"
        delta = "" if r["lever"] == "as simulated" or not base_usd or math.isnan(usd) else \
            f"{(usd / base_usd - 1) * 100:+.1f}%"
        failed = isinstance(r.get("error"), str) and r["error"]
        rows.append([r["lever"], change, r["setting"] or "as in the scenario",
                     "failed: " + str(r["error"]) if failed else _verdict(r.get("slo_met")),
                     seconds(_value(r.get("ttft_s_at_slo_percentile"))), seconds(_value(r.get("tpot_s_at_slo_percentile"))),
                     usd_per_m(usd), delta, _measured(r, levers)])
    p = f"p{slo_percentile:g}"
    header = ["lever", "change", "what was set", "SLO", f"{p} TTFT", f"{p} TPOT", "$ per M output tokens",
              "vs as simulated", "measured"]
    paras = [f"Each row moves one assumption by {STEP:.0%} and simulates {subject} again with the same seed (the "
             "price needs no simulation: every $ per million tokens scales with the price per GPU-hour)."
             + (" The prefix hit rate is an outcome, so the lever that sets it is moved and the hit rate measured."
                if table["lever"].isin([REUSE, CAPACITY]).any() else "")]
    paras += _headlines(table, base, subject)
    movers = table[table["lever"] != "as simulated"]
    fig = figures.sensitivity_figure(movers, base_usd)
    return Section(title, paras, [Table(header, rows)],
                   [FigureRef("sensitivity", "Change of $ per million output tokens when each lever moves by 20%",
                              fig)])


def _headlines(table: pd.DataFrame, base: pd.Series, subject: str) -> list[str]:
    """The sentences a reader wants first: is there headroom, and which lever moves cost most."""
    out = []
    up = table[(table["lever"] == "load") & (table["change"] > 0)]
    if len(up):
        r = up.iloc[0]
        if _verdict(r.get("slo_met")) == "meets":
            out.append(f"With {STEP:.0%} more load {subject} still meets the SLO: there is headroom.")
        elif _verdict(base.get("slo_met")) == "meets":
            out.append(f"<b>With {STEP:.0%} more load {subject} misses the SLO</b> ({r['setting']}): it has less than "
                       f"{STEP:.0%} headroom, so plan more capacity for growth or bursts.")
    hits = table[table["lever"] == CAPACITY]
    if len(hits):
        rates = [_value(v) for v in (base.get("prefix_hit_rate"), *hits["prefix_hit_rate"])]
        if not any(math.isnan(v) for v in rates) and all(abs(v - rates[0]) < 0.005 for v in rates):
            out.append(f"The KV tiers' capacity does not limit the prefix hits ({pct(rates[0])} with 20% less or more "
                       "of it): the workload's reuse does, so buying less DRAM or NVMe would cost nothing here.")
    # The price moves every $ per token by exactly its own change: the question is what else does.
    movers = table[~table["lever"].isin(["as simulated", "price"])].copy()
    base_usd = _value(base["usd_per_m_output_tokens"])
    if len(movers) and base_usd:
        movers["swing"] = [abs(_value(v) / base_usd - 1) for v in movers["usd_per_m_output_tokens"]]
        movers = movers.dropna(subset=["swing"])
        if len(movers):
            top = movers.sort_values("swing", ascending=False).iloc[0]
            than = "more than" if top["swing"] > STEP + 0.005 else "less than" if top["swing"] < STEP - 0.005 else \
                "as much as"
            out.append(f"Of the simulated assumptions, the cost per token moves most with the {top['lever']}: "
                       f"{top['swing'] * 100:.0f}% for a {STEP:.0%} change, {than} a {STEP:.0%} change of the GPU "
                       "price moves it.")
    return out
