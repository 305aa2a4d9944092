"""Metrics: per-request and per-iteration records -> DataFrames and a summary (docs/metrics.md).

Measurement window W = [warmup_s, duration_s). Latency statistics cover requests that ARRIVED in
W (they are followed until they finish, also after duration_s). Throughput, utilization and the
time-weighted levels cover what the GPUs did DURING W: each iteration record spans [t0, t1] and
contributes the fraction of it that overlaps W (a multi-step decode run spreads its tokens evenly
over its span). Idle time counts as zero batch, zero KV and zero queue.

Per request: queue_s = admit - arrival; ttft_s = first token - arrival + front-end overhead;
e2e_s = last token - arrival + front-end overhead (tokenize + schedule + detokenize/stream, see
scenario.Frontend: these run outside the GPU iterations and, once per request, delay both); tpot_s = (last token - first token) /
(output tokens - 1), undefined for one-token outputs. A request meets the SLO when it completed,
ttft_s <= slo.ttft_s and (tpot_s <= slo.tpot_s or it has a single output token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sim.metrics.records import STATUS_NAMES, IterRecord
from sim.scenario import Scenario

ITER_COLUMNS = list(IterRecord._fields)


def requests_frame(reqs: Sequence[Any], sc: Scenario) -> pd.DataFrame:
    """One row per request, in arrival order."""
    def col(name: str) -> list:
        return [getattr(r, name) for r in reqs]

    nan = np.nan
    arrival = np.asarray(col("arrival_s"), dtype=float)
    first = np.asarray(col("first_token_s"), dtype=float)
    finish = np.asarray(col("finish_s"), dtype=float)
    admit = np.asarray(col("admit_s"), dtype=float)
    out = np.asarray(col("output_tokens"), dtype=np.int64)
    inp = np.asarray(col("input_tokens"), dtype=np.int64)
    status = np.asarray([STATUS_NAMES[r.status] for r in reqs], dtype=object)
    done = status == "completed"
    fe = sc.serving.frontend.overhead_s(inp.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        ttft = np.where(first >= 0, first - arrival + fe, nan)
        e2e = np.where(done, finish - arrival + fe, nan)
        tpot = np.where(done & (out > 1), (finish - first) / (out - 1), nan)
    queue = np.where(admit >= 0, admit - arrival, nan)
    in_window = (arrival >= sc.warmup_s) & (arrival < sc.duration_s)
    met = done & (ttft <= sc.slo.ttft_s) & ((out <= 1) | (tpot <= sc.slo.tpot_s))
    return pd.DataFrame({
        "request_id": np.asarray(col("id"), dtype=np.int64),
        "replica": np.asarray(col("replica"), dtype=np.int64),
        "arrival_s": arrival,
        "input_tokens": inp,
        "output_tokens": out,
        "status": pd.Categorical(status, categories=["completed", "rejected", "in_flight"]),
        "reject_reason": col("reject_reason"),
        "queue_s": queue,
        "ttft_s": ttft,
        "tpot_s": tpot,
        "e2e_s": e2e,
        "finish_s": np.where(finish >= 0, finish, nan),
        "preemptions": np.asarray(col("preemptions"), dtype=np.int64),
        "in_window": in_window,
        "met_slo": met,
    })


def iterations_frame(records: Sequence[IterRecord]) -> pd.DataFrame:
    if not records:
        return pd.DataFrame({c: pd.Series(dtype=float if c.startswith("t_") else np.int64) for c in ITER_COLUMNS})
    return pd.DataFrame.from_records(records, columns=ITER_COLUMNS)


def _pcts(x: np.ndarray, name: str) -> dict[str, float]:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return {f"{name}_{k}": float("nan") for k in ("mean", "p50", "p90", "p99")}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {f"{name}_mean": float(x.mean()), f"{name}_p50": float(p50), f"{name}_p90": float(p90),
            f"{name}_p99": float(p99)}


def window_overlap_s(it: pd.DataFrame, w0: float, w1: float) -> tuple[np.ndarray, np.ndarray]:
    """Per record: seconds inside [w0, w1], and that as a fraction of the record's span."""
    t0 = it["t_start_s"].to_numpy()
    t1 = it["t_end_s"].to_numpy()
    ov = np.clip(np.minimum(t1, w1) - np.maximum(t0, w0), 0.0, None)
    span = t1 - t0
    frac = np.divide(ov, span, out=np.zeros_like(ov), where=span > 0)
    return ov, frac


def summarize(sc: Scenario, req: pd.DataFrame, it: pd.DataFrame, total_blocks: int) -> dict[str, float]:
    """The run's headline figures (before cost). Names carry units."""
    w0, w1 = sc.warmup_s, sc.duration_s
    window_s = w1 - w0
    n_rep, gpus = sc.serving.replicas, sc.gpus
    win = req[req["in_window"]]
    done = win[win["status"] == "completed"]
    s: dict[str, float] = {
        "window_s": window_s,
        "replicas": n_rep,
        "gpus": gpus,
        "requests_arrived": int(len(win)),
        "requests_completed": int(len(done)),
        "requests_rejected": int((win["status"] == "rejected").sum()),
        "requests_in_flight": int((win["status"] == "in_flight").sum()),
        "preemptions": int(win["preemptions"].sum()),
        "arrival_rate_per_s": len(win) / window_s,
    }
    for name in ("ttft_s", "tpot_s", "e2e_s", "queue_s"):
        s.update(_pcts(done[name].to_numpy(dtype=float), name))

    ov, frac = window_overlap_s(it, w0, w1)
    out_tok = float((it["output_tokens"].to_numpy() * frac).sum())
    in_tok = float((it["prompt_tokens"].to_numpy() * frac).sum())
    s["output_tokens"] = out_tok
    s["input_tokens"] = in_tok
    s["recompute_tokens"] = float((it["recompute_tokens"].to_numpy() * frac).sum())
    s["output_tok_per_s"] = out_tok / window_s
    s["input_tok_per_s"] = in_tok / window_s
    s["total_tok_per_s"] = (out_tok + in_tok) / window_s
    s["output_tok_per_s_per_gpu"] = s["output_tok_per_s"] / gpus
    # Offline-benchmark throughput: all completed output over first arrival -> last token.
    fin = req["finish_s"].to_numpy(dtype=float)
    s["makespan_s"] = float(np.nanmax(fin) - req["arrival_s"].min()) if np.isfinite(fin).any() else float("nan")
    all_done = req["status"] == "completed"
    s["output_tok_per_s_per_gpu_makespan"] = (float(req.loc[all_done, "output_tokens"].sum()) / s["makespan_s"] / gpus
                                              if s["makespan_s"] > 0 else float("nan"))
    s["total_tok_per_s_per_gpu"] = s["total_tok_per_s"] / gpus
    tpot = done["tpot_s"].to_numpy(dtype=float)
    tpot = tpot[~np.isnan(tpot) & (tpot > 0)]
    s["output_tok_per_s_per_user_p50"] = float(np.median(1.0 / tpot)) if len(tpot) else float("nan")

    denom = window_s * n_rep
    s["gpu_busy_fraction"] = float(ov.sum() / denom)
    s["batch_size_mean"] = float((it["batch_seqs"].to_numpy() * ov).sum() / denom)
    s["queue_len_mean"] = float((it["waiting"].to_numpy() * ov).sum() / denom)
    s["kv_occupancy_mean"] = float((it["kv_blocks_used"].to_numpy() * ov).sum() / denom / total_blocks)

    n = len(win)
    s["slo_attainment"] = float(win["met_slo"].sum() / n) if n else float("nan")
    p = sc.slo.percentile
    unfinished = (n - len(done)) / n if n else 0.0
    ttft_p = float(np.percentile(done["ttft_s"], p)) if len(done) else float("inf")
    tpots = done["tpot_s"].dropna()
    tpot_p = float(np.percentile(tpots, p)) if len(tpots) else 0.0
    s["ttft_s_at_slo_percentile"] = ttft_p
    s["tpot_s_at_slo_percentile"] = tpot_p
    s["slo_met"] = bool(n > 0 and ttft_p <= sc.slo.ttft_s and tpot_p <= sc.slo.tpot_s
                        and unfinished <= 1.0 - p / 100.0)
    good = win[win["met_slo"]]
    s["goodput_req_per_s"] = len(good) / window_s
    s["goodput_output_tok_per_s"] = float(good["output_tokens"].sum()) / window_s
    return s
