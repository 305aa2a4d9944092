"""Catalogs: every number has a source; derived parameter counts and KV sizes match published ones."""

from __future__ import annotations

import pytest

from sim.catalog import gpu_catalog, model_catalog

GPUS = ["a100-80g", "h100-sxm", "h200", "b200", "gb200", "b300", "gb300", "mi300x", "mi325x", "mi355x"]
MODELS = ["llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "llama-3.3-70b", "mixtral-8x7b", "qwen3-235b-a22b",
          "deepseek-v3", "deepseek-r1", "gpt-oss-120b"]


def test_catalogs_complete():
    assert set(GPUS) <= set(gpu_catalog())
    assert set(MODELS) <= set(model_catalog())


@pytest.mark.parametrize("name", GPUS)
def test_every_gpu_number_has_a_source(name):
    g = gpu_catalog()[name]
    for field in ("hbm_gb", "hbm_bw_tb_s", "tflops", "scale_up_gb_s", "host_link_gb_s", "tdp_w", "idle_w",
                  "prices_usd_per_gpu_h"):
        assert g.sources.get(field), f"{name}.{field} has no source"
    if g.all_in_kw is not None:
        assert g.sources.get("all_in_kw")
    assert g.idle_w < g.tdp_w


@pytest.mark.parametrize("name", MODELS)
def test_derived_params_match_reported(name):
    m = model_catalog()[name]
    assert m.sources.get("architecture") and m.sources.get("reported")
    assert m.params_total / 1e9 == pytest.approx(m.reported.params_total_b, rel=0.02)
    # Reported active counts differ in whether embeddings count; within 8%.
    assert m.params_active / 1e9 == pytest.approx(m.reported.params_active_b, rel=0.08)


@pytest.mark.parametrize("name,bf16_bytes", [("llama-3.1-8b", 131072), ("llama-3.1-70b", 327680),
                                             ("llama-3.1-405b", 516096), ("mixtral-8x7b", 131072),
                                             ("qwen3-235b-a22b", 192512), ("deepseek-v3", 70272),
                                             ("gpt-oss-120b", 36864)])
def test_kv_bytes_per_token_match_facts(name, bf16_bytes):
    m = model_catalog()[name]
    assert m.kv_bytes_per_token("bf16") == bf16_bytes
    assert m.kv_bytes_per_token("fp8") == bf16_bytes / 2


def test_kv_sharding_over_tp():
    m = model_catalog()["llama-3.1-70b"]   # 8 KV heads
    assert m.kv_bytes_per_token("bf16", tp=8) == 327680 / 8
    q = model_catalog()["qwen3-235b-a22b"]  # 4 KV heads: tp 8 replicates one head per GPU
    assert q.kv_bytes_per_token("bf16", tp=8) == 192512 / 4
    ds = model_catalog()["deepseek-v3"]    # MLA latent is not sharded
    assert ds.kv_bytes_per_token("bf16", tp=8) == 70272


def test_fp4_support_matches_hardware():
    c = gpu_catalog()
    assert c["h100-sxm"].peak_flops("fp4") is None and c["b200"].peak_flops("fp4") == 9000e12
    assert c["a100-80g"].peak_flops("fp8") is None
