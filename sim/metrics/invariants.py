"""Invariants every run's summary must satisfy; a violation is a bug in the simulator, never a
property of the input, so the runner refuses to return such a summary rather than print a wrong
number.

* requests are conserved: arrived = completed + rejected + in flight;
* levels stay within their bounds: busy fraction and KV occupancy in [0, 1], mean batch within
  [0, max_num_seqs], queue and running set >= 0, SLO attainment in [0, 1];
* goodput is a part of throughput: goodput tokens <= output tokens, so $ per SLO-meeting token
  >= $ per token;
* the two accountings of output tokens agree: tokens the iteration records sampled in the window
  = the sum over requests of their tokens sampled in it.
"""

from __future__ import annotations

import math
from typing import Any

TOL = 1e-9


def violations(s: dict[str, Any], max_num_seqs: int, request_tokens_in_window: int) -> list[str]:
    """Broken invariants of a summary (empty when all hold)."""
    out: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            out.append(what)

    def within(name: str, lo: float, hi: float) -> None:
        v = s.get(name, math.nan)
        if isinstance(v, float) and math.isnan(v):
            return
        check(lo - TOL <= v <= hi + TOL, f"{name} = {v} outside [{lo}, {hi}]")

    check(s["requests_arrived"] == s["requests_completed"] + s["requests_rejected"] + s["requests_in_flight"],
          "requests arrived != completed + rejected + in flight")
    within("gpu_busy_fraction", 0.0, 1.0)
    within("gpu_utilization", 0.0, 1.0)
    u, busy = s.get("gpu_utilization", math.nan), s.get("gpu_busy_fraction", math.nan)
    check(math.isnan(u) or math.isnan(busy) or u <= busy + TOL, f"GPU utilization {u} > busy fraction {busy}")
    within("kv_occupancy_mean", 0.0, 1.0)
    within("batch_size_mean", 0.0, float(max_num_seqs))
    within("queue_len_mean", 0.0, math.inf)
    within("running_mean", 0.0, float(max_num_seqs))
    within("slo_attainment", 0.0, 1.0)
    check(s["goodput_output_tokens"] <= s["output_tokens"],
          f"goodput tokens {s['goodput_output_tokens']} > output tokens {s['output_tokens']}")
    check(s["output_tokens"] == request_tokens_in_window,
          f"output tokens in the window: {s['output_tokens']} by iteration, {request_tokens_in_window} by request")
    a, b = s.get("usd_per_m_slo_output_tokens"), s.get("usd_per_m_output_tokens")
    if a is not None and b is not None and not (math.isnan(a) or math.isnan(b)):
        check(a >= b * (1 - TOL), f"$/M SLO-meeting output tokens {a} < $/M output tokens {b}")
    return out
