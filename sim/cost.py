"""Cost and energy: $/GPU-hour, $/M tokens and J/token from a run's throughput and utilization.

* $/GPU-h. Rental: ``hardware.price_usd_per_gpu_h`` or the GPU's catalog tier (``cost.price_tier``).
  TCO: capex / (amortization years x 8760 h) + hosting ($/kW-month x kW / 730 h, kW = the GPU's
  all-in share of node power, else TDP) + electricity at the realized power x PUE + other opex.
* $/M tokens at realized utilization = provisioned GPU-hours in the measurement window x $/GPU-h
  / tokens sampled in it x 1e6, so idle and over-provisioned capacity costs what it costs (output
  tokens, and input + output tokens). The window is the metrics' (metrics/window.py): the arrival
  period, or the makespan of an offline burst.
* The figure published benchmarks use, $/GPU-h / (tok/s/GPU x 3600) x 1e6, is the same quantity;
  ``usd_per_m_total_tokens_if_idle_resold`` charges only busy GPU-time, i.e. the cost if the idle
  share were sold elsewhere: the full-load figure of this batch behaviour.
* $ per million SLO-meeting output tokens: the same cost over the output tokens that SLO-meeting
  requests sampled in the window (a subset of all tokens sampled in it, so never cheaper).
* Per token class, as API providers price them: uncached input, cached input (served from a prefix
  cache) and output tokens get $/M prices in the ratios of ``cost.token_price_ratios`` (default
  DeepSeek's API list) that together recover the cost: p_c = k x ratio_c with
  k = cost / sum_c(ratio_c x tokens_c).
* KV tiers below HBM (TCO mode): their capacity is bought too. Each tier's capacity per GPU it
  serves (a node's over the node's GPUs, a remote pool's over the deployment's) x capex_usd_per_gb,
  amortized over the TCO's years, is added to the $/GPU-h (``kv_tiers_usd_per_gpu_h``). In rental
  mode a node's DRAM and drives come with the rented GPUs and a remote pool is not priced.
* Power, one convention for hosting, electricity, energy, J/token and tokens/MW: a GPU's all-in
  power is its chip (idle + (TDP - idle) x utilization of its binding resource, sim/power.py; or x
  busy fraction with ``cost.power_model: busy``) plus its share of the rest of the node
  (host CPUs, memory, NICs: ``all_in_kw`` - TDP, drawn whenever the node is provisioned). At full
  load it equals ``all_in_kw``, the per-GPU figure of SemiAnalysis' TCO model that InferenceX uses
  for tokens per MW (facts.md section 2a). Hosting is billed on that provisioned peak; electricity,
  energy and J/token use the realized all-in power x PUE. A GPU without ``all_in_kw`` counts its
  chip only (and is hosted at its TDP).
"""

from __future__ import annotations

from typing import Any

from sim.catalog import GpuSpec
from sim.kv_hierarchy import resolve_tiers, tier_capacity_gb_per_gpu
from sim.power import chip_power_w
from sim.scenario import Scenario

HOURS_PER_YEAR = 8760.0
HOURS_PER_MONTH = 730.0


def host_share_w(gpu: GpuSpec) -> float:
    """The GPU's share of the rest of its node (CPUs, memory, NICs), drawn whenever provisioned."""
    return max(0.0, gpu.all_in_kw * 1000.0 - gpu.tdp_w) if gpu.all_in_kw is not None else 0.0


def power_w_per_gpu(sc: Scenario, power_fraction: float) -> float:
    """All-in power per GPU (before PUE) at the chip's power fraction: chip + share of the node."""
    g = sc.hardware.gpu
    return chip_power_w(g, power_fraction) + host_share_w(g)


def power_fraction(sc: Scenario, s: dict[str, Any]) -> float:
    """What drives the chip's dynamic power: the binding resource's utilization, or with
    ``cost.power_model: busy`` the busy fraction."""
    return s["gpu_busy_fraction"] if sc.cost.power_model == "busy" else s["gpu_utilization"]


def kv_tiers_usd_per_gpu_h(sc: Scenario) -> float:
    """The KV tiers' capacity, amortized, per GPU-hour (TCO mode; 0 in rental mode)."""
    c = sc.cost
    if c.mode != "tco" or not sc.serving.kv_cache.tiers:
        return 0.0
    assert c.tco is not None
    usd = sum(tier_capacity_gb_per_gpu(sc, p) * p.capex_usd_per_gb for p in resolve_tiers(sc))
    return usd / (c.tco.amortization_years * HOURS_PER_YEAR)


def price_usd_per_gpu_h(sc: Scenario, power_frac: float) -> float:
    c, g = sc.cost, sc.hardware.gpu
    if c.mode == "tco":
        assert c.tco is not None
        kw = g.all_in_kw if g.all_in_kw is not None else g.tdp_w / 1000.0
        capex = c.tco.capex_usd_per_gpu / (c.tco.amortization_years * HOURS_PER_YEAR)
        hosting = c.tco.hosting_usd_per_kw_month * kw / HOURS_PER_MONTH
        energy = power_w_per_gpu(sc, power_frac) / 1000.0 * c.pue * c.electricity_usd_per_kwh
        return capex + hosting + energy + c.tco.other_opex_usd_per_gpu_h + kv_tiers_usd_per_gpu_h(sc)
    if sc.hardware.price_usd_per_gpu_h is not None:
        return sc.hardware.price_usd_per_gpu_h
    price = getattr(g.prices_usd_per_gpu_h, c.price_tier)
    assert price is not None, "validated in Scenario"
    return price


def _per_m(usd: float, tokens: float) -> float:
    return usd / tokens * 1e6 if tokens > 0 else float("inf")


def token_class_prices(sc: Scenario, usd: float, s: dict[str, Any]) -> dict[str, float]:
    """$/M of uncached input, cached input and output tokens in the price list's ratios, together
    recovering the cost (module docstring)."""
    ratio = sc.cost.token_price_ratios
    cached = s.get("cached_input_tokens", 0)
    tokens = {"uncached_input": s["input_tokens"] - cached, "cached_input": cached, "output": s["output_tokens"]}
    ratios = {"uncached_input": ratio.input, "cached_input": ratio.cached_input, "output": ratio.output}
    weighted = sum(ratios[c] * tokens[c] for c in tokens)
    k = usd / weighted if weighted > 0 else float("inf")
    return {f"usd_per_m_{c}_tokens_priced": k * ratios[c] * 1e6 for c in tokens}


def cost_summary(sc: Scenario, s: dict[str, Any]) -> dict[str, float]:
    """Cost and energy figures from a summary made by metrics.summarize: provisioned GPU-seconds
    in the window, tokens sampled in it, and the busy fraction."""
    busy = s["gpu_busy_fraction"]
    gpu_s = s["gpu_seconds"]
    gpu_h = gpu_s / 3600.0
    frac = power_fraction(sc, s)
    price = price_usd_per_gpu_h(sc, frac)
    usd = gpu_h * price
    out_tok, total_tok = s["output_tokens"], s["output_tokens"] + s["input_tokens"]
    power_w = power_w_per_gpu(sc, frac)
    facility_j = power_w * sc.cost.pue * gpu_s
    facility_mw = power_w * sc.cost.pue * s["gpus"] / 1e6
    return {
        "price_usd_per_gpu_h": price,
        "gpu_hours": gpu_h,
        "cost_usd": usd,
        "usd_per_m_output_tokens": _per_m(usd, out_tok),
        "usd_per_m_total_tokens": _per_m(usd, total_tok),
        "usd_per_m_total_tokens_if_idle_resold": _per_m(usd * busy, total_tok),
        "usd_per_m_slo_output_tokens": _per_m(usd, s["goodput_output_tokens"]),
        **token_class_prices(sc, usd, s),
        "kv_tiers_usd_per_gpu_h": kv_tiers_usd_per_gpu_h(sc),
        "power_w_per_gpu": power_w,
        "chip_power_w_per_gpu": chip_power_w(sc.hardware.gpu, frac),
        "energy_kwh": facility_j / 3.6e6,
        "joules_per_output_token": facility_j / out_tok if out_tok > 0 else float("inf"),
        "joules_per_total_token": facility_j / total_tok if total_tok > 0 else float("inf"),
        "total_tok_per_s_per_mw": s["total_tok_per_s"] / facility_mw if facility_mw > 0 else float("nan"),
    }
