"""What a report says, as data: sections of prose, tables and figures built from a results folder.

A single run's report answers: what was simulated (every assumption, with the catalog source it
came from), what it costs (per million tokens, and per month for the GPUs it takes), how its
latency is distributed against the SLO, how queue, batch, KV cache and GPU busy time moved over
the run, where the cost goes, and what the levers it uses (KV tiers, speculative decoding) did.

Numbers are formatted here for people ($0.123/M, 1.2k tok/s, 97.3%), each with its unit; the
templates only lay them out. Month = 730 hours (8,760 / 12).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from matplotlib.figure import Figure

from sim.errors import InputError
from sim.metrics.registry import RUN_TABLE, SPEC_TABLE, TIER_LABEL, format_value, kv_table, row_cells
from sim.report import figures
from sim.sensitivity import TABLE_FILE as SENSITIVITY_FILE

HOURS_PER_MONTH = 730.0


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class FigureRef:
    name: str            # file stem: report_figures/<name>.png
    caption: str
    figure: Figure


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureRef] = field(default_factory=list)


@dataclass
class Report:
    title: str
    subtitle: str
    sections: list[Section]

    def all_figures(self) -> list[FigureRef]:
        return [f for s in self.sections for f in s.figures]


# ---- numbers for people ----------------------------------------------------------------------------

def usd_per_m(v: float | None) -> str:
    """$0.123/M (per million tokens)."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"${v:,.3f}/M" if v < 100 else f"${v:,.0f}/M"


def usd(v: float | None, digits: int = 2) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"${v:,.{digits}f}" if abs(v) < 1000 else f"${v:,.0f}"


def per_s(v: float | None, unit: str = "tok/s") -> str:
    """1.2k tok/s, 3.4M tok/s, 950 tok/s."""
    if v is None or not math.isfinite(v):
        return "n/a"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:,.1f}{suffix} {unit}"
    return f"{v:,.1f} {unit}" if abs(v) < 100 else f"{v:,.0f} {unit}"


def num(v: Any, digits: int = 0) -> str:
    """A count or amount with thousands separators and `digits` decimals; n/a if missing."""
    if isinstance(v, float) and math.isfinite(v) and digits == 0:
        v = round(v)
    return format_value(v, digits)


def pct(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{100 * v:.1f}%"


def seconds(v: float | None) -> str:
    """0.123 s, or 45.6 ms below a second; "never" for an unbounded latency (nothing finished)."""
    if v is not None and v == math.inf:
        return "never"
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v * 1000:,.1f} ms" if abs(v) < 1 else f"{v:,.2f} s"


# ---- reading a results folder ------------------------------------------------------------------------

@dataclass
class RunFolder:
    path: Path
    summary: dict[str, Any]
    meta: dict[str, Any]
    scenario: dict[str, Any]
    requests: pd.DataFrame
    iterations: pd.DataFrame
    levels: pd.DataFrame
    sensitivity: pd.DataFrame | None = None     # sensitivity.parquet (sim/sensitivity.py), when computed




def read_run_folder(path: Path) -> RunFolder:
    """A run's results folder as written by `run.py run`; InputError names what is missing."""
    need = ("summary.json", "run.json", "scenario.resolved.yaml", "requests.parquet", "iterations.parquet",
            "levels.parquet")
    missing = [n for n in need if not (path / n).is_file()]
    if missing:
        raise InputError(f"{path}: not a run's results folder (missing {', '.join(missing)})")
    try:
        summary, meta, scenario = (json.loads((path / "summary.json").read_text(encoding="utf-8")),
                                   json.loads((path / "run.json").read_text(encoding="utf-8")),
                                   yaml.safe_load((path / "scenario.resolved.yaml").read_text(encoding="utf-8")))
        for name, data in (("summary.json", summary), ("run.json", meta), ("scenario.resolved.yaml", scenario)):
            if not isinstance(data, dict):
                raise InputError(f"{path / name}: not a mapping of names to values (got {type(data).__name__})")
        return RunFolder(path=path, summary=_numbers(summary), meta=meta, scenario=scenario,
                         requests=pd.read_parquet(path / "requests.parquet"),
                         iterations=pd.read_parquet(path / "iterations.parquet"),
                         levels=pd.read_parquet(path / "levels.parquet"),
                         sensitivity=_sensitivity(path))
    except InputError:
        raise
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read the run's results: {err}") from None


def _sensitivity(path: Path) -> pd.DataFrame | None:
    """The run's sensitivity table; None when absent or unreadable (the CLI computes it again)."""
    try:
        return pd.read_parquet(path / SENSITIVITY_FILE) if (path / SENSITIVITY_FILE).is_file() else None
    except (OSError, ValueError):
        return None


def _numbers(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json writes infinities as "inf" (back to floats here) and NaN as null (kept as None:
    every formatter says n/a for it)."""
    special = {"inf": math.inf, "-inf": -math.inf}
    return {k: special[v] if isinstance(v, str) and v in special else v for k, v in summary.items()}


def count(v: Any) -> int:
    """A count from the summary (replicas, GPUs); 0 if missing or not finite."""
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else 0


def amount(v: Any) -> float:
    """An amount from the summary for arithmetic; 0.0 if missing or not finite."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else 0.0


# ---- a single run ---------------------------------------------------------------------------------

def run_report(folder: RunFolder) -> Report:
    from sim.report.sensitivity import sensitivity_section  # it builds on this module's types
    s, sc = folder.summary, folder.scenario
    gpu, model, serving = sc["hardware"]["gpu"], sc["model"], sc["serving"]
    par = serving.get("parallelism", {})
    replicas, gpus = count(s.get("replicas")), count(s.get("gpus"))
    subtitle = (f"{replicas} replica{'s' if replicas != 1 else ''} x {gpus // max(1, replicas)} {gpu['name'].upper()} "
                f"serving {model['name']}; measured from {num(s.get('window_start_s'), 0)} s to "
                f"{num(s.get('window_end_s'), 0)} s of simulated time; seed {folder.meta.get('seed')}")
    sections = [_answer(folder), _simulated(folder, gpu, model, serving, par), _latency(folder), _over_time(folder),
                _cost(folder)]
    sections += [sensitivity_section(folder.sensitivity, sc["slo"]["percentile"], "this deployment"),
                 _levers(folder), _all_figures(folder)]
    return Report(title=f"{sc['name']}: capacity and cost report", subtitle=subtitle, sections=sections)


def monthly_usd(s: dict[str, Any]) -> float:
    """What the deployment's GPUs cost for a month (730 h) at the run's price per GPU-hour."""
    price = s.get("price_usd_per_gpu_h")
    return count(s.get("gpus")) * (float(price) if isinstance(price, int | float) else math.nan) * HOURS_PER_MONTH


def _answer(f: RunFolder) -> Section:
    s, slo = f.summary, f.scenario["slo"]
    met = s.get("slo_met")
    verdict = ("meets" if met is True else "misses" if met is False else "cannot be judged against") + f" the SLO (p{slo['percentile']:g} TTFT ≤ {seconds(slo['ttft_s'])}, " \
        f"p{slo['percentile']:g} TPOT ≤ {seconds(slo['tpot_s'])})"
    tokens_month = amount(s.get("output_tok_per_s")) * HOURS_PER_MONTH * 3600
    gpus = count(s.get("gpus"))
    paras = [
        f"This deployment {verdict}: its p{slo['percentile']:g} TTFT was {seconds(s.get('ttft_s_at_slo_percentile'))} "
        f"and its p{slo['percentile']:g} TPOT {seconds(s.get('tpot_s_at_slo_percentile'))}; "
        f"{pct(s.get('slo_attainment'))} of the requests met both targets.",
        f"It costs <b>{usd(s.get('usd_per_m_output_tokens'), 3)}</b> per million output tokens "
        f"({usd(s.get('usd_per_m_total_tokens'), 3)} per million tokens in and out) at "
        f"{usd(s.get('price_usd_per_gpu_h'))} per GPU-hour ({f.scenario['cost']['mode']} pricing).",
        f"Its {gpus:,} GPU{'s' if gpus != 1 else ''} cost <b>{usd(monthly_usd(s))} per month</b> (730 hours); at this load "
        f"({num(s.get('arrival_rate_per_s'), 2)} requests/s) they produce {per_s(s.get('output_tok_per_s'))} of output, "
        f"about {num(tokens_month / 1e9, 1)} billion output tokens a month, with the GPUs busy "
        f"{pct(s.get('gpu_busy_fraction'))} of the time.",
    ]
    t = Table(["", "value"], [
        ["$ per million output tokens", usd_per_m(s.get("usd_per_m_output_tokens"))],
        ["price per million input tokens (API-style split of the cost)",
         usd_per_m(s.get("usd_per_m_uncached_input_tokens_priced"))],
        ["price per million output tokens (API-style split of the cost)",
         usd_per_m(s.get("usd_per_m_output_tokens_priced"))],
        ["$ per month for the GPUs (730 h)", usd(monthly_usd(s))],
        ["GPUs", f"{gpus:,}"],
        ["throughput per GPU (input + output)", per_s(s.get("total_tok_per_s_per_gpu"))],
        ["speed one user sees (1/TPOT, median)", per_s(s.get("output_tok_per_s_per_user_p50"))],
    ])
    return Section("The answer", paras, [t])


def _source(sources: dict[str, str], *keys: str) -> str:
    for k in keys:
        if k in sources:
            return sources[k]
    return "scenario file" if not sources else "catalog (no source recorded)"


def _simulated(f: RunFolder, gpu: dict[str, Any], model: dict[str, Any], serving: dict[str, Any],
               par: dict[str, Any]) -> Section:
    sc, s = f.scenario, f.summary
    gs, ms = gpu.get("sources", {}), model.get("sources", {})
    prec = serving.get("precision", {})
    wl = sc["workload"]
    if wl.get("trace"):
        traffic = f"replayed trace {Path(wl['trace']['path']).name} ({wl['trace']['format']} format)"
    else:
        arr = wl.get("arrivals") or {}
        traffic = f"{arr.get('kind', '?')} arrivals" + (f" at {arr['rate_per_s']:g} requests/s" if "rate_per_s" in arr
                                                       else "")
    rows = [
        ["model", f"{model['name']}: {model['layers']} layers, hidden {model['hidden']:,}, "
                  f"{model.get('reported', {}).get('params_total_b', '?')}B parameters", _source(ms, "architecture")],
        ["GPU", f"{gpu['name']}: {gpu['hbm_gb']:g} GB HBM at {gpu['hbm_bw_tb_s']:g} TB/s", _source(gs, "hbm_gb")],
        ["GPU compute (dense)", ", ".join(f"{k.upper()} {v:,.0f} TFLOPS" for k, v in gpu["tflops"].items() if v),
         _source(gs, "tflops")],
        ["GPU power", f"{gpu['tdp_w']:,.0f} W at full load, {gpu['idle_w']:,.0f} W idle", _source(gs, "tdp_w")],
        ["price per GPU-hour", f"{usd(s.get('price_usd_per_gpu_h'))} ({sc['cost']['mode']})",
         _source(gs, "prices_usd_per_gpu_h")],
        ["deployment", f"{serving['replicas']} replica{'s' if serving['replicas'] != 1 else ''}, tensor parallel "
                       f"{par.get('tp', 1)}, pipeline "
                       f"{par.get('pp', 1)}; {count(s.get('gpus')):,} GPUs", "scenario file"],
        ["precision", ", ".join(f"{k} {v}" for k, v in prec.items() if v), "scenario file"],
        ["batching", f"{(serving.get('engine') or 'vllm')}-style, up to {serving['batching']['max_num_seqs']} sequences and "
                     f"{serving['batching']['max_num_batched_tokens']:,} tokens per iteration", "scenario file"],
        ["traffic", traffic, "scenario file"],
        ["measured window", f"{num(s.get('window_start_s'), 0)} s to {num(s.get('window_end_s'), 0)} s "
                            f"({num(s.get('requests_arrived'))} requests arrived)", "scenario file"],
        ["SLO", f"p{sc['slo']['percentile']:g} TTFT ≤ {seconds(sc['slo']['ttft_s'])}, "
                f"p{sc['slo']['percentile']:g} TPOT ≤ {seconds(sc['slo']['tpot_s'])}", "scenario file"],
    ]
    desc = sc.get("description") or ""
    return Section("What was simulated", [desc] if desc else [], [Table(["", "assumption", "source"], rows)])


def _latency(f: RunFolder) -> Section:
    s, slo = f.summary, f.scenario["slo"]
    done = f.requests[f.requests["in_window"] & f.requests["ttft_s"].notna()] if "in_window" in f.requests else f.requests
    fig = figures.latency_figure(done, slo["ttft_s"], slo["tpot_s"], slo["percentile"])
    rows = [[label, *(seconds(s.get(f"{base}_{p}")) for p in ("p50", "p90", "p99"))]
            for base, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "end to end"), ("queue_s", "queueing"))]
    return Section("Latency", [f"Completed requests that arrived in the window ({len(done):,}). "
                               f"{pct(s.get('not_served_fraction'))} were rejected or unfinished and are not in the "
                               "percentiles."],
                   [Table(["", "p50", "p90", "p99"], rows)],
                   [FigureRef("latency", "Share of requests within a latency (dashed: the SLO targets)", fig)])


def _over_time(f: RunFolder) -> Section:
    s = f.summary
    fig = figures.timeseries_figure(f.levels, f.iterations, count(s.get("kv_blocks_per_replica")),
                                    max(1, count(s.get("replicas"))), amount(s.get("window_start_s")),
                                    amount(s.get("window_end_s")))
    return Section("Over time", [f"Mean over the window: {num(s.get('queue_len_mean'), 1)} requests queued, "
                                 f"{num(s.get('running_mean'), 1)} running, KV cache "
                                 f"{pct(s.get('kv_occupancy_mean'))} full, GPUs busy {pct(s.get('gpu_busy_fraction'))}."],
                   figures=[FigureRef("timeseries", "Queue, batch, KV-cache occupancy and GPU busy time over the run "
                                                    "(shaded: outside the measured window)", fig)])


def _cost(f: RunFolder) -> Section:
    s = f.summary
    cost = amount(s.get("cost_usd"))
    busy = amount(s.get("gpu_busy_fraction"))
    rows = [
        ["cost of the window", usd(cost), f"{num(s.get('gpu_hours'), 2)} GPU-hours x {usd(s.get('price_usd_per_gpu_h'))}"],
        ["  GPUs busy", usd(cost * busy), pct(busy)],
        ["  GPUs idle", usd(cost * (1 - busy)), pct(1 - busy)],
        ["energy", f"{num(s.get('energy_kwh'), 2)} kWh", f"{num(s.get('joules_per_output_token'), 2)} J per "
                                                          "output token"],
    ]
    if amount(s.get("kv_tiers_usd_per_gpu_h")):
        rows.append(["KV tiers (DRAM, NVMe) in the price", f"{usd(s['kv_tiers_usd_per_gpu_h'])} per GPU-hour", ""])
    if amount(s.get("cached_input_tokens")):
        rows.append(["input tokens from cache / computed", f"{num(s['cached_input_tokens'])} / {num(s.get('computed_input_tokens'))}",
                     pct(s.get("cached_input_fraction"))])
    priced = [["uncached input", usd_per_m(s.get("usd_per_m_uncached_input_tokens_priced"))],
              ["cached input", usd_per_m(s.get("usd_per_m_cached_input_tokens_priced"))],
              ["output", usd_per_m(s.get("usd_per_m_output_tokens_priced"))]]
    fig = figures.cost_figure(cost, busy, amount(s.get("usd_per_m_uncached_input_tokens_priced")),
                              amount(s.get("usd_per_m_cached_input_tokens_priced")),
                              amount(s.get("usd_per_m_output_tokens_priced")))
    return Section("Where the cost goes",
                   ["The GPUs are paid for whether they compute or wait. The price list splits the cost over the token "
                    "classes in the ratios API providers charge them, so the three classes together pay the whole "
                    "cost."],
                   [Table(["", "amount", "detail"], rows), Table(["token class", "price that recovers the cost"], priced)],
                   [FigureRef("cost", "Cost of the window, busy against idle GPU time, and the price per token class",
                              fig)])


def _levers(f: RunFolder) -> Section:
    s = f.summary
    rows: list[list[str]] = []
    if "prefix_hit_rate" in s:
        tiers = [k for k in TIER_LABEL if f"prefix_hit_rate_{k}" in s]
        rows.append(["prefix hits: all / HBM" + "".join(f" / {TIER_LABEL[k]}" for k in tiers),
                     " / ".join(pct(s.get(n)) for n in ("prefix_hit_rate", "prefix_hit_rate_hbm",
                                                        *(f"prefix_hit_rate_{k}" for k in tiers)))])
        for k in tiers:
            rows.append([f"{TIER_LABEL[k]}: occupancy, link reads / writes",
                         f"{num(s.get(f'tier_{k}_occupancy_gb_mean'), 0)} GB, {num(s.get(f'link_{k}_read_gb'), 0)} / "
                         f"{num(s.get(f'link_{k}_write_gb'), 0)} GB"])
    if "spec_acceptance_rate" in s:
        rows += [["speculative decoding: acceptance rate", pct(s.get("spec_acceptance_rate"))],
                 ["mean accepted length per step", f"{num(s.get('spec_mean_accepted_length'), 2)} tokens"]]
    step = [("compute", "step_compute_ms"), ("memory", "step_memory_ms"), ("all-reduce", "step_allreduce_ms"),
            ("all-to-all", "step_all_to_all_ms"), ("pipeline", "step_pipeline_ms"), ("fixed", "step_overhead_ms")]
    rows.append(["decode step at the mean batch: " + " / ".join(n for n, _ in step),
                 " / ".join(num(s.get(k) or 0.0, 1) for _, k in step) + " ms"])
    return Section("Levers", ["What the cost levers this scenario uses did (a decode step takes the larger of compute "
                              "and memory, plus the rest)."], [Table(["", "value"], rows)])


def _all_figures(f: RunFolder) -> Section:
    s = f.summary
    table = RUN_TABLE + (SPEC_TABLE if "spec_k" in s else ()) + (kv_table(s) if "tier_hbm_prefix_gb_mean" in s else ())
    rows = []
    for label, names in table:
        if names[0] not in s:
            continue
        values, unit = row_cells(s, names)
        rows.append([label, values, unit])
    return Section("Every figure of the run", ["As `run.py run` prints them; docs/metrics.md defines each."],
                   [Table(["metric", "value", "unit"], rows)])
