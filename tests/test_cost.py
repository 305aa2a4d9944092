"""Cost and energy against hand-computed figures."""

from __future__ import annotations

import pytest
from conftest import base_dict

from sim.cost import cost_summary, price_usd_per_gpu_h
from sim.runner import run
from sim.scenario import scenario_from_dict

# Hand-computed figures use these GPU numbers, set here, so catalog updates do not move them.
GPU = {"gpu": "h100-sxm", "price_usd_per_gpu_h": 2.0,
       "overrides": {"idle_w": 100.0, "tdp_w": 700.0, "all_in_kw": 1.5}}


def summary_stub(gpus: int, **over) -> dict:
    s = {"gpu_busy_fraction": 0.5, "gpu_utilization": 0.3, "window_s": 3600.0, "gpus": gpus, "gpu_seconds": gpus * 3600.0,
         "output_tokens": 1e6, "input_tokens": 3e6, "goodput_output_tokens": 0.5e6, "total_tok_per_s": 4e6 / 3600}
    s.update(over)
    return s


def test_rental_cost_per_million_tokens_by_hand():
    sc = scenario_from_dict(base_dict(hardware=GPU, serving={"replicas": 2, "parallelism": {"tp": 2}}))
    c = cost_summary(sc, summary_stub(4))
    # 4 GPUs x 1 h x $2 = $8; / 1M output tokens; / 4M total tokens; / 0.5M SLO-meeting tokens.
    assert c["price_usd_per_gpu_h"] == 2.0
    assert c["cost_usd"] == pytest.approx(8.0)
    assert c["usd_per_m_output_tokens"] == pytest.approx(8.0)
    assert c["usd_per_m_total_tokens"] == pytest.approx(2.0)
    assert c["usd_per_m_total_tokens_if_idle_resold"] == pytest.approx(1.0)
    assert c["usd_per_m_slo_output_tokens"] == pytest.approx(16.0)
    # Chip: 100 + (700 - 100) x 0.3 utilization = 280 W; all-in adds the node share 1,500 - 700 = 800 W;
    # x 1.2 PUE x 4 GPUs x 3600 s.
    assert c["chip_power_w_per_gpu"] == pytest.approx(280.0)
    assert c["power_w_per_gpu"] == pytest.approx(1080.0)
    assert c["energy_kwh"] == pytest.approx(1080.0 * 1.2 * 4 / 1000)
    assert c["joules_per_output_token"] == pytest.approx(1080.0 * 1.2 * 4 * 3600 / 1e6)
    # The former assumption, busy fraction x (TDP - idle): 100 + 600 x 0.5 = 400 W.
    busy = scenario_from_dict(base_dict(hardware=GPU, serving={"replicas": 2, "parallelism": {"tp": 2}},
                                        cost={"power_model": "busy"}))
    assert cost_summary(busy, summary_stub(4))["chip_power_w_per_gpu"] == pytest.approx(400.0)


def test_offline_cost_by_hand_from_the_request_table():
    """$/M output tokens of an offline burst = GPUs x makespan x $/GPU-h / all its output tokens,
    each figure taken from the request table, not from the summary."""
    d = base_dict(duration_s=1.0, drain_timeout_s=1e6, hardware=GPU, serving={"replicas": 2, "parallelism": {"tp": 2}},
                  workload={"arrivals": {"kind": "offline", "requests": 600},
                            "input_tokens": {"kind": "uniform", "low": 200, "high": 2000},
                            "output_tokens": {"kind": "uniform", "low": 50, "high": 900}})
    res = run(scenario_from_dict(d))
    req, s = res.requests, res.summary
    assert s["window"] == "makespan" and (req["status"] == "completed").all()
    makespan_s = req["finish_s"].max()                     # every request arrives at t = 0
    usd = 4 * makespan_s / 3600 * 2.0                       # 4 GPUs at $2 per GPU-hour
    assert s["usd_per_m_output_tokens"] == pytest.approx(usd / req["output_tokens"].sum() * 1e6, rel=1e-9)
    assert s["usd_per_m_total_tokens"] == pytest.approx(
        usd / (req["output_tokens"].sum() + req["input_tokens"].sum()) * 1e6, rel=1e-9)
    # The published-benchmark form of the same figure.
    assert s["usd_per_m_total_tokens"] == pytest.approx(2.0 / (s["total_tok_per_s_per_gpu"] * 3600) * 1e6, rel=1e-9)


def test_energy_of_one_request_by_hand():
    """One request on one GPU in a 10 s window, with chip power by busy fraction: busy = its service
    time / 10 s, so power, energy and J/token follow by hand (100 W idle, 700 W TDP, 1,500 W all-in;
    PUE 1.2). Power by utilization: tests/test_power.py."""
    from test_engine_exact import lone, run_one

    d = lone(2000, 300, hardware=GPU, cost={"power_model": "busy"})
    _, res = run_one(d, 2000, 300)
    e2e = res.requests["e2e_s"].iloc[0]
    s = res.summary
    busy = e2e / 10.0
    assert s["gpu_busy_fraction"] == pytest.approx(busy, rel=1e-12)
    power = 100 + (700 - 100) * busy + (1500 - 700)
    assert s["power_w_per_gpu"] == pytest.approx(power, rel=1e-12)
    assert s["energy_kwh"] == pytest.approx(power * 1.2 * 10.0 / 3.6e6, rel=1e-12)
    assert s["joules_per_output_token"] == pytest.approx(power * 1.2 * 10.0 / 300, rel=1e-12)
    assert s["joules_per_total_token"] == pytest.approx(power * 1.2 * 10.0 / 2300, rel=1e-12)


def test_price_override_and_tiers():
    assert price_usd_per_gpu_h(scenario_from_dict(base_dict(hardware={"gpu": "h100-sxm",
                                                                      "price_usd_per_gpu_h": 3.1})), 0.3) == 3.1
    sc = scenario_from_dict(base_dict(cost={"price_tier": "hyperscaler"}))
    assert price_usd_per_gpu_h(sc, 0.3) == 1.17


def test_tco_price_by_hand():
    sc = scenario_from_dict(base_dict(hardware=GPU, cost={"mode": "tco", "pue": 1.25, "electricity_usd_per_kwh": 0.1,
                                                          "tco": {"capex_usd_per_gpu": 30000, "amortization_years": 4,
                                                                  "hosting_usd_per_kw_month": 150}}))
    capex = 30000 / (4 * 8760)
    hosting = 150 * 1.5 / 730                               # billed on the all-in (provisioned) kW
    energy = (100 + 600 * 0.8 + 800) / 1000 * 1.25 * 0.1   # chip at 80% busy + node share, x PUE x $/kWh
    assert price_usd_per_gpu_h(sc, 0.8) == pytest.approx(capex + hosting + energy)


def test_overrides_of_catalog_fields():
    sc = scenario_from_dict(base_dict(hardware={"gpu": "h100-sxm", "overrides": {"hbm_bw_tb_s": 2.0}}))
    assert sc.hardware.gpu.hbm_bw_tb_s == 2.0 and sc.hardware.gpu.tdp_w == 700
