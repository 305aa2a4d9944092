"""Metrics of the KV-cache hierarchy (prefix caching and the tiers below HBM) over the window W
(formulas in docs/metrics.md, "KV hierarchy").

* Hit rates: of the prompt tokens of the requests that arrived in W, the share taken at their
  first admission from HBM (`prefix_hit_rate_hbm`) and loaded from each tier
  (`prefix_hit_rate_<tier>`); the rest was computed.
* Links: bytes moved in W per direction and kind of link (a transfer straddling a boundary of W
  counts by its time share), and the utilization: busy seconds in W over W x the links of that
  kind (a node's shared link counts once).
* Occupancy: each tier's time-weighted mean content in W (GB, summed over its stores) and as a
  share of its capacity; HBM's is the prefix chunks resident (pinned or cached in free blocks).
* TTFT split: queueing (arrival to first admission), load (waiting for the prefix's loads) and
  prefill (admission to first token, less the load), percentiles over the completed requests.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sim.engine.kv_tiers import Link
from sim.engine.request import Request
from sim.kv_hierarchy import HierarchyBuilder
from sim.metrics.summary import _pcts
from sim.metrics.window import Window


def _in_window(transfers: array, w: Window) -> tuple[float, float]:
    """(bytes, busy seconds) of the transfers (start, end, bytes, packed flat) inside W, each by its
    time share."""
    if not len(transfers):
        return 0.0, 0.0
    a = np.frombuffer(transfers, dtype=float).reshape(-1, 3)
    start, end, nbytes = a[:, 0], a[:, 1], a[:, 2]
    overlap = np.clip(np.minimum(end, w.end_s) - np.maximum(start, w.start_s), 0.0, None)
    span = end - start
    share = np.divide(overlap, span, out=np.ones_like(span), where=span > 0)
    inside = (start >= w.start_s) & (start < w.end_s)
    share = np.where(span > 0, share, inside.astype(float))
    return float((nbytes * share).sum()), float(overlap.sum())


def link_metrics(links: list[Link], w: Window) -> dict[str, float]:
    out: dict[str, float] = {}
    for kind in dict.fromkeys(link.name for link in links):
        same = [link for link in links if link.name == kind]
        for direction in ("read", "write"):
            moved = busy = 0.0
            for link in same:
                b, s = _in_window((link.reading if direction == "read" else link.writing).log, w)
                moved, busy = moved + b, busy + s
            out[f"link_{kind}_{direction}_gb"] = moved / 1e9
            out[f"link_{kind}_{direction}_utilization"] = busy / (w.length_s * len(same)) if w.length_s > 0 \
                else float("nan")
    return out


def hierarchy_summary(builder: HierarchyBuilder, req: pd.DataFrame, requests: Sequence[Request],
                      window: Window) -> dict[str, Any]:
    """The hierarchy's figures over W (module docstring); `requests` are the objects behind
    `req`'s rows, in the same order."""
    s: dict[str, Any] = {}
    win = req[req["in_window"]]
    prompt = float(win["input_tokens"].sum())
    cached = win["cached_tokens"].to_numpy(dtype=float)
    loaded = win["loaded_tokens"].to_numpy(dtype=float)
    rate = (lambda x: x / prompt) if prompt > 0 else (lambda x: float("nan"))
    if builder.prefix_caching:
        s["prefix_hit_rate"] = rate(cached.sum())
        s["prefix_hit_rate_hbm"] = rate((cached - loaded).sum())
        mask = req["in_window"].to_numpy()
        per_tier = [r.tier_tokens for r, inside in zip(requests, mask, strict=True) if inside and r.tier_tokens]
        for k, p in enumerate(builder.params):
            s[f"prefix_hit_rate_{p.kind}"] = rate(float(sum(t[k] for t in per_tier)))
    s.update(link_metrics(builder.links(), window))
    w0, w1 = window.start_s, window.end_s
    per_chunk_gb = builder.chunk_bytes / 1e9
    hbm_chunks = sum(h.hbm.occupancy.mean(w0, w1) for h in builder.built)
    s["tier_hbm_prefix_gb_mean"] = hbm_chunks * per_chunk_gb
    for p in builder.params:
        stores = [st for st in builder.store_list if st.name == p.kind]
        mean_chunks = sum(st.occupancy.mean(w0, w1) for st in stores)
        capacity = sum(st.capacity_chunks for st in stores)
        s[f"tier_{p.kind}_occupancy_gb_mean"] = mean_chunks * per_chunk_gb
        s[f"tier_{p.kind}_occupancy_fraction"] = mean_chunks / capacity if capacity else float("nan")
    done = win[win["status"] == "completed"]
    for name in ("load_s", "prefill_s"):
        s.update(_pcts(done[name].to_numpy(dtype=float), f"ttft_{name}"))
    s.update(_pcts(done["queue_s"].to_numpy(dtype=float), "ttft_queue_s"))
    return s
