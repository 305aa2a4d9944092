"""Cost and energy against hand-computed figures."""

from __future__ import annotations

import pytest
from conftest import base_dict

from sim.cost import cost_summary, price_usd_per_gpu_h
from sim.runner import run
from sim.scenario import scenario_from_dict


def summary_stub(**over) -> dict:
    s = {"gpu_busy_fraction": 0.5, "window_s": 3600.0, "output_tokens": 1e6, "input_tokens": 3e6,
         "goodput_output_tok_per_s": 1e6 / 3600 / 2, "total_tok_per_s": 4e6 / 3600}
    s.update(over)
    return s


def test_rental_cost_per_million_tokens_by_hand():
    sc = scenario_from_dict(base_dict(serving={"replicas": 2, "parallelism": {"tp": 2}}))   # 4 x H100
    c = cost_summary(sc, summary_stub())
    # 4 GPUs x 1 h x $1.78 (catalog rental tier) = $7.12; / 1M output tokens; / 4M total tokens.
    assert c["price_usd_per_gpu_h"] == 1.78
    assert c["cost_usd"] == pytest.approx(7.12)
    assert c["usd_per_m_output_tokens"] == pytest.approx(7.12)
    assert c["usd_per_m_total_tokens"] == pytest.approx(1.78)
    assert c["usd_per_m_total_tokens_busy"] == pytest.approx(0.89)
    assert c["usd_per_m_slo_output_tokens"] == pytest.approx(14.24)
    # Chip: 105 + (700 - 105) x 0.5 = 402.5 W; all-in adds the node share 1,370 - 700 = 670 W;
    # x 1.2 PUE x 4 GPUs x 3600 s.
    assert c["chip_power_w_per_gpu"] == pytest.approx(402.5)
    assert c["power_w_per_gpu"] == pytest.approx(1072.5)
    assert c["energy_kwh"] == pytest.approx(1072.5 * 1.2 * 4 / 1000)
    assert c["joules_per_output_token"] == pytest.approx(1072.5 * 1.2 * 4 * 3600 / 1e6)


def test_published_benchmark_formula_equals_realized_over_the_window():
    sc = scenario_from_dict(base_dict())
    res = run(sc)
    s = res.summary
    published = s["price_usd_per_gpu_h"] / (s["total_tok_per_s_per_gpu"] * 3600) * 1e6
    assert s["usd_per_m_total_tokens"] == pytest.approx(published, rel=1e-12)


def test_price_override_and_tiers():
    assert price_usd_per_gpu_h(scenario_from_dict(base_dict(hardware={"gpu": "h100-sxm",
                                                                      "price_usd_per_gpu_h": 3.1})), 0.3) == 3.1
    sc = scenario_from_dict(base_dict(cost={"price_tier": "hyperscaler"}))
    assert price_usd_per_gpu_h(sc, 0.3) == 1.17


def test_tco_price_by_hand():
    sc = scenario_from_dict(base_dict(cost={"mode": "tco", "pue": 1.25, "electricity_usd_per_kwh": 0.1,
                                            "tco": {"capex_usd_per_gpu": 30000, "amortization_years": 4,
                                                    "hosting_usd_per_kw_month": 150}}))
    capex = 30000 / (4 * 8760)
    hosting = 150 * 1.37 / 730
    energy = (105 + 595 * 0.8 + 670) / 1000 * 1.25 * 0.1   # chip at 80% busy + node share, x PUE x $/kWh
    assert price_usd_per_gpu_h(sc, 0.8) == pytest.approx(capex + hosting + energy)


def test_overrides_of_catalog_fields():
    sc = scenario_from_dict(base_dict(hardware={"gpu": "h100-sxm", "overrides": {"hbm_bw_tb_s": 2.0}}))
    assert sc.hardware.gpu.hbm_bw_tb_s == 2.0 and sc.hardware.gpu.tdp_w == 700
