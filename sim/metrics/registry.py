"""One registry of the metrics people read: label, unit, display scale and digits, and which
direction is better. Every table (run summary, sweep, plan) and the report take their headers,
units and number formats from here, so a metric is described once.

Formatting returns strings and never prints (the library stays silent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    name: str                 # key in summary.json (unit in the name)
    label: str                # what a person reads
    unit: str                 # unit of the displayed value (after `scale`)
    digits: int = 3
    scale: float = 1.0        # displayed value = stored value x scale (seconds -> ms: 1000)
    better: str = ""          # "lower", "higher" or "" (neither)
    column: str = ""          # compact column header with its unit (default: "label (unit)")

    @property
    def header(self) -> str:
        if self.column:
            return self.column
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def display(self, value: Any) -> str:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return format_value(value, self.digits)
        return format_value(value * self.scale, self.digits)


def format_value(v: Any, digits: int = 3) -> str:
    """Thousands separators; `digits` decimals below 1,000; n/a for missing or NaN; inf as is."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if v is None:
        return "n/a"
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return "n/a" if math.isnan(v) else str(v)
    return f"{v:,.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"


#: Tier kinds below HBM, as people name them.
TIER_LABEL = {"host_dram": "host DRAM", "nvme": "NVMe", "remote": "remote pool"}
TIER_SHORT = {"host_dram": "DRAM", "nvme": "NVMe", "remote": "remote"}

_LATENCY = [(f"{base}_{p}", f"{label} {p}", unit, digits, scale)
            for base, label, unit, digits, scale in (("ttft_s", "TTFT", "s", 3, 1.0), ("tpot_s", "TPOT", "ms", 1, 1000.0),
                                                     ("e2e_s", "E2E latency", "s", 3, 1.0),
                                                     ("queue_s", "queueing", "s", 3, 1.0))
            for p in ("mean", "p50", "p90", "p99")]

METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("requests_arrived", "requests arrived", "requests", 0),
    Metric("requests_completed", "requests completed", "requests", 0, better="higher"),
    Metric("requests_rejected", "requests rejected", "requests", 0, better="lower"),
    Metric("requests_in_flight", "requests unfinished", "requests", 0, better="lower"),
    Metric("not_served_fraction", "rejected or unfinished (not in the latency percentiles)", "fraction",
           better="lower", column="not served"),
    *(Metric(n, lbl, u, d, sc, "lower") for n, lbl, u, d, sc in _LATENCY),
    Metric("output_tok_per_s", "output throughput", "tokens/s", 1, better="higher"),
    Metric("total_tok_per_s", "total throughput", "tokens/s", 1, better="higher"),
    Metric("output_tok_per_s_per_gpu", "output throughput per GPU", "tokens/s/GPU", 1, better="higher"),
    Metric("total_tok_per_s_per_gpu", "total throughput per GPU", "tokens/s/GPU", 0, better="higher",
           column="total tok/s/GPU"),
    Metric("output_tok_per_s_per_user_p50", "speed per user (1/TPOT, p50)", "tokens/s", 1, better="higher"),
    Metric("gpu_busy_fraction", "GPU busy", "fraction", column="GPU busy"),
    Metric("gpu_utilization", "GPU utilization (binding resource, drives power)", "fraction",
           column="GPU util"),
    Metric("batch_size_mean", "mean batch", "sequences", 1),
    Metric("running_mean", "mean running", "requests", 1),
    Metric("queue_len_mean", "mean queue", "requests", 2, better="lower"),
    Metric("kv_occupancy_mean", "KV occupancy", "fraction"),
    Metric("slo_attainment", "SLO attainment", "fraction", better="higher", column="SLO attain."),
    Metric("slo_met", "SLO met", ""),
    Metric("goodput_output_tok_per_s", "goodput", "tokens/s", 1, better="higher"),
    Metric("price_usd_per_gpu_h", "price", "$/GPU-hour", 2, better="lower", column="$/GPU-h"),
    Metric("usd_per_m_output_tokens", "cost per million output tokens", "$/M tokens", better="lower",
           column="$/M out tok"),
    Metric("usd_per_m_total_tokens", "cost per million total tokens", "$/M tokens", better="lower",
           column="$/M tok"),
    Metric("usd_per_m_slo_output_tokens", "cost per million SLO-meeting output tokens", "$/M tokens",
           better="lower", column="$/M SLO tok"),
    Metric("joules_per_output_token", "energy per output token", "J/token", better="lower"),
    Metric("gpus", "GPUs", "GPUs", 0, better="lower", column="GPUs"),
    Metric("sim_requests_per_wall_s", "simulation speed", "requests/wall-s", 0),
    # speculative decoding
    Metric("spec_k", "draft tokens per step (k)", "tokens", 0),
    Metric("spec_mean_accepted_length", "mean accepted length (tokens per sequence per verification, "
           "the target's own included)", "tokens", 2, better="higher", column="accepted len"),
    Metric("spec_accepted_drafts_per_step", "drafts accepted per sequence per verification", "tokens", 2,
           better="higher"),
    Metric("spec_acceptance_rate", "acceptance rate (accepted / proposed drafts)", "fraction", better="higher",
           column="accept rate"),
    Metric("spec_tokens_per_step", "tokens per verification step (whole batch)", "tokens", 1, better="higher",
           column="tok/step"),
    Metric("spec_rejected_tokens", "rejected draft tokens", "tokens", 0, better="lower"),
    Metric("spec_wasted_verify_share", "verified tokens rejected (wasted work)", "fraction", better="lower"),
    Metric("spec_draft_time_share", "draft work share of GPU busy time", "fraction", better="lower",
           column="draft share"),
    Metric("spec_speedup_tpot", "speedup vs no speculation (mean TPOT)", "x", 2, better="higher"),
    Metric("spec_speedup_tok_per_s_per_gpu", "speedup vs no speculation (output tokens/s/GPU)", "x", 2,
           better="higher"),
    Metric("spec_cost_ratio", "cost vs no speculation ($/M output tokens)", "x", 2, better="lower"),
    # where a decode step's time goes (sim/perf/split.py): at the mean batch per rank
    Metric("step_ms", "decode step at the mean batch", "ms", 2, better="lower", column="step ms"),
    Metric("step_compute_ms", "decode step: compute (GEMMs, attention)", "ms", 2, column="compute ms"),
    Metric("step_memory_ms", "decode step: memory (weights, KV, activations)", "ms", 2, column="memory ms"),
    Metric("step_allreduce_ms", "decode step: tensor-parallel all-reduce", "ms", 2, column="all-reduce ms"),
    Metric("step_all_to_all_ms", "decode step: expert all-to-all (dispatch + combine)", "ms", 2,
           column="all-to-all ms"),
    Metric("step_pipeline_ms", "decode step: pipeline hand-overs", "ms", 2, column="pipeline ms"),
    Metric("step_overhead_ms", "decode step: fixed overheads (iteration, sequences, layers)", "ms", 2,
           column="fixed ms"),
    # the KV hierarchy (prefix caching, tiers below HBM): sim/metrics/hierarchy.py
    Metric("prefix_hit_rate", "prompt tokens taken from a prefix cache", "fraction", better="higher",
           column="prefix hits"),
    Metric("prefix_hit_rate_hbm", "prompt tokens hit in HBM", "fraction", better="higher", column="HBM hits"),
    *(Metric(f"prefix_hit_rate_{k}", f"prompt tokens loaded from {TIER_LABEL[k]}", "fraction", better="higher",
             column=f"{TIER_SHORT[k]} hits") for k in TIER_LABEL),
    Metric("cached_input_tokens", "input tokens served from cache", "tokens", 0),
    Metric("computed_input_tokens", "input tokens computed", "tokens", 0),
    Metric("cached_input_fraction", "input tokens served from cache", "fraction", better="higher",
           column="cached input"),
    *(Metric(f"ttft_{part}_s_{p}", f"TTFT {label} {p}", "s", 3, 1.0, "lower", column=f"{part} {p} (s)")
      for part, label in (("queue", "queueing"), ("load", "prefix load"), ("prefill", "prefill"))
      for p in ("mean", "p50", "p90", "p99")),
    *(Metric(f"link_{k}_{d}_gb", f"{TIER_LABEL[k]} link, {d}s", "GB", 1) for k in TIER_LABEL for d in ("read", "write")),
    *(Metric(f"link_{k}_{d}_utilization", f"{TIER_LABEL[k]} link busy, {d}s", "fraction")
      for k in TIER_LABEL for d in ("read", "write")),
    Metric("tier_hbm_prefix_gb_mean", "prefix chunks resident in HBM (time mean)", "GB", 1),
    *(Metric(f"tier_{k}_occupancy_gb_mean", f"{TIER_LABEL[k]} occupancy (time mean)", "GB", 1) for k in TIER_LABEL),
    *(Metric(f"tier_{k}_occupancy_fraction", f"{TIER_LABEL[k]} occupancy (time mean)", "fraction")
      for k in TIER_LABEL),
    Metric("usd_per_m_uncached_input_tokens_priced", "price per million uncached input tokens", "$/M tokens",
           better="lower", column="$/M input"),
    Metric("usd_per_m_cached_input_tokens_priced", "price per million cached input tokens", "$/M tokens",
           better="lower", column="$/M cached in"),
    Metric("usd_per_m_output_tokens_priced", "price per million output tokens (with input priced)", "$/M tokens",
           better="lower", column="$/M out (priced)"),
    Metric("kv_tiers_usd_per_gpu_h", "KV tiers' capacity, amortized", "$/GPU-hour", 3, better="lower"),
    # capacity plans
    Metric("min_replicas", "min replicas", "replicas", 0, better="lower", column="min replicas"),
    Metric("max_load_per_replica", "max load/replica", "", better="higher"),
]}


def metric(name: str) -> Metric:
    """The registry entry of a summary key (KeyError names it if it is not registered)."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"metric {name!r} is not in sim.metrics.registry.METRICS") from None


#: The run summary table: (row label, metrics shown in it). The unit column comes from the metrics.
RUN_TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("requests arrived / completed / rejected / unfinished",
     ("requests_arrived", "requests_completed", "requests_rejected", "requests_in_flight")),
    ("TTFT p50 / p90 / p99 (completed requests)", ("ttft_s_p50", "ttft_s_p90", "ttft_s_p99")),
    ("TPOT p50 / p90 / p99 (completed requests)", ("tpot_s_p50", "tpot_s_p90", "tpot_s_p99")),
    ("E2E latency p50 / p99 (completed requests)", ("e2e_s_p50", "e2e_s_p99")),
    ("rejected or unfinished, not in the percentiles", ("not_served_fraction",)),
    ("SLO attainment", ("slo_attainment",)),
    ("SLO met", ("slo_met",)),
    ("throughput output / total", ("output_tok_per_s", "total_tok_per_s")),
    ("throughput per GPU output / total", ("output_tok_per_s_per_gpu", "total_tok_per_s_per_gpu")),
    ("speed per user (1/TPOT, p50)", ("output_tok_per_s_per_user_p50",)),
    ("GPU busy / utilization fraction", ("gpu_busy_fraction", "gpu_utilization")),
    ("mean batch / queue / KV occupancy", ("batch_size_mean", "queue_len_mean", "kv_occupancy_mean")),
    ("decode step at the mean batch", ("step_ms",)),
    ("  compute / memory (the larger counts)", ("step_compute_ms", "step_memory_ms")),
    ("  all-reduce / all-to-all / pipeline / fixed",
     ("step_allreduce_ms", "step_all_to_all_ms", "step_pipeline_ms", "step_overhead_ms")),
    ("price", ("price_usd_per_gpu_h",)),
    ("cost per million output tokens", ("usd_per_m_output_tokens",)),
    ("cost per million total tokens", ("usd_per_m_total_tokens",)),
    ("cost per million SLO-meeting output tokens", ("usd_per_m_slo_output_tokens",)),
    ("energy per output token", ("joules_per_output_token",)),
    ("simulation speed", ("sim_requests_per_wall_s",)),
)

#: Rows added to the run summary when the scenario decodes speculatively (the speedups only with
#: `run --compare-no-spec`).
SPEC_TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("speculation: draft tokens per step (k)", ("spec_k",)),
    ("mean accepted length / drafts accepted (per sequence per step)",
     ("spec_mean_accepted_length", "spec_accepted_drafts_per_step")),
    ("tokens per verification step (whole batch)", ("spec_tokens_per_step",)),
    ("acceptance rate (accepted / proposed drafts)", ("spec_acceptance_rate",)),
    ("verified tokens rejected (wasted work)", ("spec_wasted_verify_share",)),
    ("draft work share of GPU busy time", ("spec_draft_time_share",)),
    ("speedup vs no speculation: mean TPOT / tokens/s/GPU", ("spec_speedup_tpot", "spec_speedup_tok_per_s_per_gpu")),
    ("cost vs no speculation ($/M output tokens)", ("spec_cost_ratio",)),
)

def kv_table(summary: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Rows added to the run summary when the scenario has prefix caching or tiers below HBM
    (those of the tiers it has)."""
    tiers = [k for k in TIER_LABEL if f"tier_{k}_occupancy_gb_mean" in summary]
    rows: list[tuple[str, tuple[str, ...]]] = []
    if "prefix_hit_rate" in summary:
        rows += [("prefix hits: all / HBM" + "".join(f" / {TIER_LABEL[k]}" for k in tiers),
                  ("prefix_hit_rate", "prefix_hit_rate_hbm", *(f"prefix_hit_rate_{k}" for k in tiers))),
                 ("input tokens from cache / computed", ("cached_input_tokens", "computed_input_tokens"))]
    rows += [("TTFT p50: queueing / prefix load / prefill", ("ttft_queue_s_p50", "ttft_load_s_p50", "ttft_prefill_s_p50")),
             ("TTFT p99: queueing / prefix load / prefill", ("ttft_queue_s_p99", "ttft_load_s_p99", "ttft_prefill_s_p99"))]
    rows += [(f"{TIER_LABEL[k]}: occupancy / link reads / writes",
              (f"tier_{k}_occupancy_gb_mean", f"link_{k}_read_gb", f"link_{k}_write_gb")) for k in tiers]
    rows += [(f"{TIER_LABEL[k]} link busy: reads / writes",
              (f"link_{k}_read_utilization", f"link_{k}_write_utilization")) for k in tiers]
    rows += [("price per million tokens: uncached input / cached input / output",
              ("usd_per_m_uncached_input_tokens_priced", "usd_per_m_cached_input_tokens_priced",
               "usd_per_m_output_tokens_priced"))]
    if summary.get("kv_tiers_usd_per_gpu_h"):
        rows += [("KV tiers' capacity in the price", ("kv_tiers_usd_per_gpu_h",))]
    return tuple(rows)


#: Columns of the sweep table (mean ± 95% CI per point).
#: A sweep over the KV hierarchy also shows these per point (prefix hits, TTFT's parts, token-class prices).
KV_SWEEP_KEYS = ("prefix_hit_rate", "prefix_hit_rate_hbm", "prefix_hit_rate_host_dram", "prefix_hit_rate_nvme",
                 "prefix_hit_rate_remote", "ttft_queue_s_p50",
                 "ttft_load_s_p50", "ttft_prefill_s_p50", "usd_per_m_uncached_input_tokens_priced",
                 "usd_per_m_cached_input_tokens_priced", "usd_per_m_output_tokens_priced")

#: A study with speculative decoding shows these per configuration.
SPEC_SWEEP_KEYS = ("spec_acceptance_rate", "spec_mean_accepted_length")


SWEEP_TABLE: tuple[str, ...] = ("ttft_s_p99", "tpot_s_p50", "not_served_fraction", "slo_attainment",
                                "total_tok_per_s_per_gpu", "usd_per_m_output_tokens")

#: Columns of the capacity-plan table after the answer column.
PLAN_TABLE: tuple[str, ...] = ("gpus", "usd_per_m_output_tokens", "price_usd_per_gpu_h", "ttft_s_p99", "tpot_s_p99",
                               "slo_attainment", "gpu_busy_fraction")


def row_cells(summary: dict[str, Any], names: tuple[str, ...]) -> tuple[str, str]:
    """(values joined by ' / ', their unit or units) of one table row."""
    ms = [metric(n) for n in names]
    values = " / ".join(m.display(summary.get(m.name)) for m in ms)
    units = list(dict.fromkeys(m.unit for m in ms))
    return values, " / ".join(u for u in units if u) if len(units) > 1 else units[0]
