"""Shared helpers: small scenario dicts that tests tweak."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs a fixed set of examples (reproducible); developers' runs explore new ones each time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def base_dict(**over) -> dict:
    """A small, fast scenario: Llama-3.1-8B BF16 on one H100, Poisson, fixed lengths."""
    d = {
        "name": "t",
        "seed": 1,
        "duration_s": 60.0,
        "warmup_s": 0.0,
        "model": "llama-3.1-8b",
        "hardware": {"gpu": "h100-sxm"},
        "serving": {"precision": {"weights": "bf16", "kv_cache": "bf16"}, "replicas": 1,
                    "batching": {"max_num_seqs": 64, "max_num_batched_tokens": 4096}},
        "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 5.0},
                     "input_tokens": {"kind": "fixed", "value": 500},
                     "output_tokens": {"kind": "fixed", "value": 50}},
    }
    return deep_update(d, over)


def step_model(sc):
    """The scenario's step-time model (roofline or table)."""
    from sim.runner import step_model_for

    return step_model_for(sc)


def step_s(step, decode_seqs: int, ctx_sum: float, chunks=()) -> float:
    """One iteration's seconds: `decode_seqs` one-token decodes over summed context `ctx_sum`,
    plus prefill chunks."""
    from sim.perf import decode_shape

    return step.iteration_s(decode_shape(decode_seqs, ctx_sum, chunks))


def deep_update(d: dict, over: dict) -> dict:
    d = copy.deepcopy(d)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict) and "kind" not in v:
            d[k] = deep_update(d[k], v)
        else:
            d[k] = v
    return d


def tiny_kv_gpu(kv_tokens: int, model_gb: float = 16.06, tokens_bytes: int = 131072) -> dict:
    """An inline H100-like GPU whose HBM leaves about kv_tokens of BF16 Llama-3.1-8B KV
    (with activation_reserve_gb = 0 and gpu_memory_fraction = 1)."""
    hbm = model_gb + kv_tokens * tokens_bytes / 1e9
    return {"name": "tiny", "hbm_gb": hbm, "hbm_bw_tb_s": 3.35, "tflops": {"bf16": 989, "fp8": 1979},
            "scale_up_gb_s": 450, "host_link_gb_s": 64, "tdp_w": 700, "idle_w": 100,
            "prices_usd_per_gpu_h": {"rental": 2.0}}


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside the project")
    return SHARED
