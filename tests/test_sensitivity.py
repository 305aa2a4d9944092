"""Sensitivity (sim/sensitivity.py): which variations apply to which scenario, that they are the
scenario simulated again (not estimates), and the cache salt that lowers prefix reuse."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import ROOT

from sim.runner import run
from sim.scenario import load_scenario, read_scenario_file, scenario_from_dict
from sim.sensitivity import CAPACITY, REUSE, run_sensitivity, variations
from sim.sweep import apply_params, inline_executor

SHORT = {"duration_s": 120, "warmup_s": 10}


def _base(name: str, **over) -> tuple[dict, str]:
    data, _ = read_scenario_file(ROOT / "scenarios" / name, {**SHORT, **over})
    return data, str(ROOT / "scenarios")


def test_levers_follow_the_scenario():
    plain, d = _base("chat_poisson_h100_llama8b.yaml")
    assert [(v.lever, v.change) for v in variations(plain, {}, d)] == [("load", -0.2), ("load", 0.2)]
    assert variations(plain, {}, d)[1].params == {"workload.arrivals.rate_per_s": pytest.approx(48.0)}
    closed, d = _base("closed_loop_benchmark.yaml")
    assert [v.params for v in variations(closed, {}, d)] == [{"workload.arrivals.clients": 51},
                                                            {"workload.arrivals.clients": 77}]
    spec, d = _base("eagle_llama8b_h100.yaml")
    acc = [v for v in variations(spec, {}, d) if v.lever == "acceptance"]
    lo, hi = (v.params["speculative.acceptance"]["per_position"] for v in acc)
    assert all(a < b <= 1.0 for a, b in zip(lo, hi, strict=True))
    shared, d = _base("chat_poisson_h100_llama8b.yaml", **{"serving.kv_cache.prefix_caching": True,
                                                          "workload.shared_prefix": {"tokens": 2048, "fraction": 0.9}})
    reuse = [v.params for v in variations(shared, {}, d) if v.lever == REUSE]
    assert reuse == [{"workload.shared_prefix.fraction": pytest.approx(0.72)},
                     {"workload.shared_prefix.fraction": 1.0}]      # capped at every request
    tiers, d = _base("mooncake_prefix_tiers_h200.yaml")
    levers = [(v.lever, v.change) for v in variations(tiers, {}, d)]
    assert levers == [("load", -0.2), ("load", 0.2), (REUSE, -0.2), (CAPACITY, -0.2), (CAPACITY, 0.2)]


def test_a_variation_is_the_scenario_simulated_again():
    data, d = _base("chat_poisson_h100_llama8b.yaml", **{"serving.kv_cache.prefix_caching": True,
                                                        "workload.shared_prefix": {"tokens": 2048, "fraction": 0.5}})
    summary = run(scenario_from_dict(data, base_dir=d), seed=3).summary
    with inline_executor() as ex:
        t = run_sensitivity(data, d, {}, 3, summary, ex)
    assert list(t["lever"]) == ["as simulated", "price", "price", "load", "load", REUSE, REUSE]
    up = t[(t["lever"] == REUSE) & (t["change"] > 0)].iloc[0]
    direct = run(scenario_from_dict(apply_params(data, {"workload.shared_prefix.fraction": 0.6}), base_dir=d), seed=3)
    assert up["prefix_hit_rate"] == direct.summary["prefix_hit_rate"] > summary["prefix_hit_rate"]
    assert up["usd_per_m_output_tokens"] == direct.summary["usd_per_m_output_tokens"]


def test_cache_salt_lowers_reuse_and_zero_changes_nothing():
    path = ROOT / "scenarios/mooncake_prefix_tiers_h200.yaml"
    over = {"duration_s": 400, "warmup_s": 30}
    plain = run(load_scenario(path, overrides=over), seed=2).summary
    zero = run(load_scenario(path, overrides={**over, "workload.cache_salt_fraction": 0.0}), seed=2).summary
    assert zero == {**plain, "wall_s": zero["wall_s"], "sim_requests_per_wall_s": zero["sim_requests_per_wall_s"]}
    some = run(load_scenario(path, overrides={**over, "workload.cache_salt_fraction": 0.3}), seed=2).summary
    every = run(load_scenario(path, overrides={**over, "workload.cache_salt_fraction": 1.0}), seed=2).summary
    assert 0 == every["prefix_hit_rate"] < some["prefix_hit_rate"] < 0.85 * plain["prefix_hit_rate"]
    assert some["requests_arrived"] == plain["requests_arrived"]     # the same traffic, less reuse


def test_settings_say_the_load_once_with_its_unit():
    closed, d = _base("closed_loop_benchmark.yaml")
    assert [v.setting for v in variations(closed, {}, d)] == ["51 clients", "77 clients"]
    plain, d = _base("chat_poisson_h100_llama8b.yaml", **{"workload.arrivals.rate_per_s": 2.890625})
    assert [v.setting for v in variations(plain, {}, d)] == ["rate_per_s = 2.312 requests/s",
                                                              "rate_per_s = 3.469 requests/s"]


def _table(rows: list[dict]) -> pd.DataFrame:
    cols = {"change": 0.0, "setting": "", "simulated": True, "error": "", "slo_met": True,
            "ttft_s_at_slo_percentile": 0.1, "tpot_s_at_slo_percentile": 0.01, "arrival_rate_per_s": 10.0,
            "prefix_hit_rate": float("nan")}
    return pd.DataFrame([{**cols, **r} for r in rows])


def test_the_headlines_name_the_lever_that_moves_cost_most_other_than_the_price():
    from sim.report.sensitivity import sensitivity_section

    t = _table([{"lever": "as simulated", "usd_per_m_output_tokens": 1.0},
                {"lever": "price", "change": -0.2, "usd_per_m_output_tokens": 0.8},
                {"lever": "price", "change": 0.2, "usd_per_m_output_tokens": 1.2},
                {"lever": "load", "change": -0.2, "usd_per_m_output_tokens": 1.1, "arrival_rate_per_s": 8.1},
                {"lever": "load", "change": 0.2, "usd_per_m_output_tokens": 0.95, "arrival_rate_per_s": 12.2},
                {"lever": CAPACITY, "change": -0.2, "usd_per_m_output_tokens": 1.0},
                {"lever": CAPACITY, "change": 0.2, "usd_per_m_output_tokens": 1.0}])
    sec = sensitivity_section(t, 99, "this deployment")
    text = " ".join(sec.paragraphs)
    assert ("the cost per token moves most with the load: 10% for a 20% change, less than a 20% change of the GPU "
            "price moves it") in text
    # hit rates not measured (NaN): no claim that the tiers' capacity does not limit them
    assert "does not limit" not in text
    baseline = sec.tables[0].rows[0]
    assert baseline[0] == "as simulated" and "10.00 requests/s arrived" in baseline[-1]
