"""The cache-aware routing decision of the SGLang and vLLM routers, as a function of the
candidates' cached prompt heads and loads; the cluster applies it to replicas (cluster.py) and a
replica with attention ranks to its ranks (engine/ranked_replica.py).

If the busiest candidate has more than 64 requests over the idlest and more than 1.5 times as many,
the least loaded one; else the one holding the longest head of the prompt's chunk chain, when that
covers at least 30% of the prompt; else the least loaded. Ties: the least loaded, then the first.
Defaults --cache-threshold 0.3, --balance-abs-threshold 64, --balance-rel-threshold 1.5:
docs.gpustack.ai, "Model Deployment Routing" (vllm-router v0.1.15, sglang-gateway v0.3.1), and
SMG's load-balancing docs.
"""

from __future__ import annotations

CACHE_THRESHOLD = 0.3
BALANCE_ABS_THRESHOLD = 64
BALANCE_REL_THRESHOLD = 1.5


def least_loaded(loads: list[int]) -> int:
    """Index of the least load; ties go to the lowest index (min keeps the first minimum)."""
    return min(range(len(loads)), key=loads.__getitem__)


def out_of_balance(loads: list[int]) -> bool:
    least, busiest = min(loads), max(loads)
    return busiest - least > BALANCE_ABS_THRESHOLD and busiest > BALANCE_REL_THRESHOLD * least


def choose(hits: list[int], loads: list[int], chunk_tokens: int, prompt_tokens: int) -> int:
    """The candidate's index: `hits[i]` chunks of the prompt's head cached at candidate i, which
    has `loads[i]` requests outstanding (the balance check comes first: see the module docstring)."""
    least = least_loaded(loads)
    if out_of_balance(loads):
        return least
    best = max(range(len(hits)), key=lambda i: (hits[i], -loads[i], -i))
    return best if hits[best] * chunk_tokens >= CACHE_THRESHOLD * prompt_tokens else least
