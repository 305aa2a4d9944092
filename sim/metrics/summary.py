"""Metrics: a run's records -> DataFrames and a summary (formulas in docs/metrics.md).

Everything is measured over one window W (window.py): latency statistics over the requests that
arrived in it, throughput over the tokens sampled in it, and levels (busy, batch, KV, queue) as
exact time integrals over it. The denominators are provisioned replica-seconds (lifecycle
records), so a replica that exists costs what it costs whether it is busy or not.

Per request: queue_s = admit - arrival; ttft_s = first token - arrival + front-end overhead;
e2e_s = last token - arrival + front-end overhead (tokenize + schedule + detokenize/stream, see
scenario.Frontend: these run outside the GPU iterations and, once per request, delay both);
tpot_s = (last token - first token) / (output tokens - 1), undefined for one-token outputs. A
request meets the SLO when it completed, ttft_s <= slo.ttft_s and (tpot_s <= slo.tpot_s or it has
a single output token). Its output tokens in W are those sampled in W; goodput counts them for
SLO-meeting requests, so goodput and throughput have the same basis and goodput <= throughput.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np
import pandas as pd

from sim.metrics.records import STATUS_NAMES, IterLog, LevelLog, LifecycleRecord
from sim.metrics.window import Window
from sim.scenario import Scenario

LIFECYCLE_COLUMNS = list(LifecycleRecord._fields)
PERCENTILES = (50, 90, 99)


# ---- frames ---------------------------------------------------------------------------------------

def requests_frame(reqs: Sequence[Any], sc: Scenario, window: Window) -> pd.DataFrame:
    """One row per request, in arrival order."""
    col = _attribute_columns(reqs, _REQUEST_ATTRIBUTES).__getitem__

    nan = np.nan
    arrival = np.asarray(col("arrival_s"), dtype=float)
    first = np.asarray(col("first_token_s"), dtype=float)
    finish = np.asarray(col("finish_s"), dtype=float)
    admit = np.asarray(col("admit_s"), dtype=float)
    out = np.asarray(col("output_tokens"), dtype=np.int64)
    inp = np.asarray(col("input_tokens"), dtype=np.int64)
    # Tokens sampled in this pool: a decode pool's requests bring their first token with them.
    pre = np.asarray(col("pre_generated"), dtype=np.int64)
    sampled = np.asarray(col("generated"), dtype=np.int64) - pre
    status = np.asarray([STATUS_NAMES[st] for st in col("status")], dtype=object)
    done = status == "completed"
    # The front end (tokenization, scheduling) runs where the prompt enters: not in a decode pool.
    fe = 0.0 if sc.serving.role == "decode" else sc.serving.frontend.overhead_s(inp.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        ttft = np.where(first >= 0, first - arrival + fe, nan)
        e2e = np.where(done, finish - arrival + fe, nan)
        tpot = np.where(done & (out > 1), (finish - first) / (out - 1), nan)
    queue = np.where(admit >= 0, admit - arrival, nan)
    load = np.asarray(col("load_s"), dtype=float)
    if window.kind == "makespan":
        in_window = arrival >= window.start_s
    else:
        in_window = (arrival >= window.start_s) & (arrival < window.end_s)
    met = done & (ttft <= sc.slo.ttft_s) & ((out <= 1) | (tpot <= sc.slo.tpot_s))
    noted_start, noted_end = (np.asarray(col(c), dtype=np.int64) for c in ("sampled_before_start", "sampled_before_end"))
    before_start = _sampled_before(np.where(noted_start >= 0, noted_start - pre, -1), sampled, finish, window.start_s)
    before_end = sampled if window.kind == "makespan" else _sampled_before(
        np.where(noted_end >= 0, noted_end - pre, -1), sampled, finish, window.end_s)
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
        # Prefix caching: prompt tokens taken from a cache at the first admission (HBM or loaded
        # from a tier below), of those loaded, and the seconds waited for the loads; the time to
        # first token is front end + queue + load + prefill.
        "cached_tokens": np.asarray(col("cached_tokens"), dtype=np.int64),
        "loaded_tokens": np.asarray(col("loaded_tokens"), dtype=np.int64),
        "load_s": np.where(admit >= 0, load, nan),
        "prefill_s": np.where(first >= 0, first - admit - load, nan),
        "sampled_tokens": sampled,
        "output_tokens_in_window": before_end - before_start,
        "in_window": in_window,
        "met_slo": met,
    })


def _sampled_before(noted: np.ndarray, sampled: np.ndarray, finish: np.ndarray, t_s: float) -> np.ndarray:
    """Output tokens each request had sampled before instant t: noted then if it was in the system;
    otherwise all of them if it had finished, none if it had not arrived."""
    if t_s <= 0:
        return np.zeros_like(sampled)
    ended_before = (finish >= 0) & (finish < t_s)
    return np.where(noted >= 0, noted, np.where(ended_before, sampled, 0))


def iterations_frame(log: IterLog) -> pd.DataFrame:
    return pd.DataFrame(log.columns())


def levels_frame(log: LevelLog) -> pd.DataFrame:
    return pd.DataFrame(log.columns())


def lifecycle_frame(records: Sequence[LifecycleRecord]) -> pd.DataFrame:
    return _frame(records, LIFECYCLE_COLUMNS)


_REQUEST_ATTRIBUTES = ("id", "replica", "arrival_s", "first_token_s", "finish_s", "admit_s", "input_tokens",
                       "output_tokens", "generated", "status", "reject_reason", "preemptions",
                       "sampled_before_start", "sampled_before_end", "pre_generated", "cached_tokens",
                       "loaded_tokens", "load_s")


def _attribute_columns(objs: Sequence[Any], names: tuple[str, ...]) -> dict[str, list]:
    """The named attributes of every object, one list per name (map and attrgetter run in C;
    transposing with zip(*rows) would allocate an iterator per row and set off the collector)."""
    return {name: list(map(attrgetter(name), objs)) for name in names}


def _column_dtype(name: str) -> type:
    return float if name.endswith("_s") else object if name == "pool" else np.int64


def _frame(records: Sequence[tuple], columns: list[str]) -> pd.DataFrame:
    """Records (tuples in `columns` order) as a frame; times (`*_s`) are floats, counts integers.
    Built column by column (several times faster than DataFrame.from_records on long runs)."""
    return pd.DataFrame({c: np.fromiter(map(itemgetter(i), records), dtype=_column_dtype(c), count=len(records))
                         for i, c in enumerate(columns)})


# ---- time integrals over the window -------------------------------------------------------------------

def provisioned_s(life: pd.DataFrame, window: Window) -> tuple[float, float]:
    """(replica-seconds, GPU-seconds) provisioned inside W."""
    ov = window.overlap_s(life["t_provisioned_s"].to_numpy(), life["t_gone_s"].to_numpy())
    return float(ov.sum()), float((ov * life["gpus"].to_numpy()).sum())


def level_integral(levels: pd.DataFrame, name: str, window: Window) -> float:
    """Integral over W of a logged level, summed over replicas (each level holds until the
    replica's next record)."""
    if levels.empty:
        return 0.0
    lv = levels.sort_values(["replica", "t_s"], kind="stable")
    t = lv["t_s"].to_numpy()
    rep = lv["replica"].to_numpy()
    nxt = np.append(t[1:], np.inf)
    nxt[np.append(rep[1:] != rep[:-1], True)] = np.inf   # a replica's last level lasts to the end
    return float((lv[name].to_numpy() * window.overlap_s(t, nxt)).sum())


def record_shares(it: pd.DataFrame, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per iteration record: seconds inside W, that share of its span, and whether its tokens
    (sampled at its end) count in W."""
    t0, t1 = it["t_start_s"].to_numpy(), it["t_end_s"].to_numpy()
    ov = window.overlap_s(t0, t1)
    span = t1 - t0
    frac = np.divide(ov, span, out=np.zeros_like(ov), where=span > 0)
    return ov, frac, window.holds(t1)


# ---- the summary -------------------------------------------------------------------------------------

def _pcts(x: np.ndarray, name: str) -> dict[str, float]:
    x = x[~np.isnan(x)]
    keys = ["mean", *(f"p{p}" for p in PERCENTILES)]
    if len(x) == 0:
        return {f"{name}_{k}": float("nan") for k in keys}
    vals = [float(x.mean()), *(float(v) for v in np.percentile(x, PERCENTILES))]
    return {f"{name}_{k}": v for k, v in zip(keys, vals, strict=True)}


def _rate(x: float, seconds: float) -> float:
    return x / seconds if seconds > 0 else float("nan")


def population(req: pd.DataFrame, window: Window) -> dict[str, Any]:
    """Counts and latency statistics of the requests that arrived in W."""
    win = req[req["in_window"]]
    done = win[win["status"] == "completed"]
    s: dict[str, Any] = {
        "requests_arrived": int(len(win)),
        "requests_completed": int(len(done)),
        "requests_rejected": int((win["status"] == "rejected").sum()),
        "requests_in_flight": int((win["status"] == "in_flight").sum()),
        # Latency percentiles describe completed requests only; this says how many they leave out.
        "not_served_fraction": float((len(win) - len(done)) / len(win)) if len(win) else float("nan"),
        "preemptions": int(win["preemptions"].sum()),
        "arrival_rate_per_s": _rate(len(win), window.length_s),
    }
    for name in ("ttft_s", "tpot_s", "e2e_s", "queue_s"):
        s.update(_pcts(done[name].to_numpy(dtype=float), name))
    tpot = done["tpot_s"].to_numpy(dtype=float)
    tpot = tpot[~np.isnan(tpot) & (tpot > 0)]
    s["output_tok_per_s_per_user_p50"] = float(np.median(1.0 / tpot)) if len(tpot) else float("nan")
    return s


def throughput(it: pd.DataFrame, req: pd.DataFrame, window: Window, gpus: float) -> dict[str, Any]:
    """Tokens sampled or processed in W, and their rates."""
    _, _, counts = record_shares(it, window)
    out_tok = int(it["output_tokens"].to_numpy()[counts].sum())
    computed = int(it["prompt_tokens"].to_numpy()[counts].sum())
    cached = int(it["cached_tokens"].to_numpy()[counts].sum())
    in_tok = computed + cached
    w = window.length_s
    s: dict[str, Any] = {
        "output_tokens": out_tok,
        "input_tokens": in_tok,
        "computed_input_tokens": computed,
        "cached_input_tokens": cached,
        "cached_input_fraction": cached / in_tok if in_tok else float("nan"),
        "recompute_tokens": int(it["recompute_tokens"].to_numpy()[counts].sum()),
        "output_tok_per_s": _rate(out_tok, w),
        "input_tok_per_s": _rate(in_tok, w),
        "total_tok_per_s": _rate(out_tok + in_tok, w),
    }
    s["output_tok_per_s_per_gpu"] = s["output_tok_per_s"] / gpus if gpus else float("nan")
    s["total_tok_per_s_per_gpu"] = s["total_tok_per_s"] / gpus if gpus else float("nan")
    # Offline-benchmark throughput: all completed output over first arrival -> last token.
    fin = req["finish_s"].to_numpy(dtype=float)
    s["makespan_s"] = float(np.nanmax(fin) - req["arrival_s"].min()) if np.isfinite(fin).any() else float("nan")
    all_done = req["status"] == "completed"
    s["output_tok_per_s_per_gpu_makespan"] = (float(req.loc[all_done, "sampled_tokens"].sum()) / s["makespan_s"] / gpus
                                              if s["makespan_s"] > 0 and gpus else float("nan"))
    return s


def levels(it: pd.DataFrame, lv: pd.DataFrame, window: Window, replica_s: float, kv_blocks: int) -> dict[str, float]:
    """Time averages over W per provisioned replica: busy fraction, batch, queue, KV occupancy."""
    ov, frac, _ = record_shares(it, window)
    if replica_s <= 0:
        return dict.fromkeys(("gpu_busy_fraction", "gpu_utilization", "batch_size_mean", "queue_len_mean", "running_mean",
                              "kv_occupancy_mean"), float("nan"))
    busy = float(ov.sum() / replica_s)
    return {
        "gpu_busy_fraction": busy,
        # Utilization-seconds straddling a boundary of W count by their record's time share; the
        # clamp removes rounding (a step is never more utilized than busy).
        "gpu_utilization": min(float((it["util_s"].to_numpy() * frac).sum() / replica_s), busy),
        "batch_size_mean": float((it["batch_seqs"].to_numpy() * ov).sum() / replica_s),
        "queue_len_mean": level_integral(lv, "waiting", window) / replica_s,
        "running_mean": level_integral(lv, "running", window) / replica_s,
        # Only single iterations (constant KV) straddle a boundary of W, so the share of an
        # event's block-seconds inside W is its time share.
        "kv_occupancy_mean": float((it["kv_block_s"].to_numpy() * frac).sum() / replica_s / kv_blocks),
    }


def slo(req: pd.DataFrame, sc: Scenario, window: Window) -> dict[str, Any]:
    """SLO attainment of the latency population, the SLO verdict, and goodput."""
    win = req[req["in_window"]]
    done = win[win["status"] == "completed"]
    n = len(win)
    p = sc.slo.percentile
    unfinished = (n - len(done)) / n if n else 0.0
    # Nothing finished: both latencies are unbounded, so the SLO is missed. Finished requests with
    # one output token each have no TPOT: it is undefined (NaN) and constrains nothing.
    ttft_p = float(np.percentile(done["ttft_s"], p)) if len(done) else float("inf")
    tpots = done["tpot_s"].dropna()
    tpot_p = float(np.percentile(tpots, p)) if len(tpots) else (float("nan") if len(done) else float("inf"))
    good_tokens = int(req.loc[req["met_slo"], "output_tokens_in_window"].sum())
    return {
        "slo_attainment": float(win["met_slo"].sum() / n) if n else float("nan"),
        "ttft_s_at_slo_percentile": ttft_p,
        "tpot_s_at_slo_percentile": tpot_p,
        "slo_met": bool(n > 0 and ttft_p <= sc.slo.ttft_s and (math.isnan(tpot_p) or tpot_p <= sc.slo.tpot_s)
                        and unfinished <= 1.0 - p / 100.0),
        "goodput_req_per_s": _rate(int(win["met_slo"].sum()), window.length_s),
        "goodput_output_tokens": good_tokens,
        "goodput_output_tok_per_s": _rate(good_tokens, window.length_s),
    }


def speculation(it: pd.DataFrame, sc: Scenario, window: Window) -> dict[str, Any]:
    """Speculative decoding over W: what the drafts proposed and the target kept, and what the
    drafting cost (sim/speculation.py; docs/metrics.md, "Speculative decoding")."""
    spec = sc.speculative
    if spec is None:
        return {}
    ov, frac, counts = record_shares(it, window)
    seq_steps = it["spec_seq_steps"].to_numpy()[counts]
    steps = int(seq_steps.sum())
    iterations = int(it["steps"].to_numpy()[counts][seq_steps > 0].sum())     # verification iterations
    accepted = int(it["accepted_tokens"].to_numpy()[counts].sum())
    proposed = int(it["proposed_tokens"].to_numpy()[counts].sum())
    busy_s = float(ov.sum())
    return {
        "spec_method": spec.method,
        "spec_k": spec.k,
        "spec_verify_steps": steps,
        "spec_proposed_tokens": proposed,
        "spec_accepted_tokens": accepted,
        "spec_rejected_tokens": proposed - accepted,
        "spec_verify_iterations": iterations,
        # Tokens per verification per sequence, the target's own token included: what benchmarks
        # publish as the mean accepted length (and the scenario's acceptance.mean_accepted_length).
        "spec_mean_accepted_length": (accepted + steps) / steps if steps else float("nan"),
        "spec_accepted_drafts_per_step": accepted / steps if steps else float("nan"),
        "spec_acceptance_rate": accepted / proposed if proposed else float("nan"),
        # Tokens a verification iteration yields over its whole batch.
        "spec_tokens_per_step": (accepted + steps) / iterations if iterations else float("nan"),
        # Verified query tokens (k + 1 per sequence per step) whose work is thrown away.
        "spec_wasted_verify_share": (proposed - accepted) / (steps * (spec.k + 1)) if steps else float("nan"),
        "spec_draft_time_share": float((it["draft_s"].to_numpy() * frac).sum()) / busy_s if busy_s > 0 else float("nan"),
    }


def summarize(sc: Scenario, req: pd.DataFrame, it: pd.DataFrame, lv: pd.DataFrame, life: pd.DataFrame,
              window: Window, kv_blocks: int) -> dict[str, Any]:
    """The run's headline figures (before cost). Names carry units."""
    replica_s, gpu_s = provisioned_s(life, window)
    w = window.length_s
    s: dict[str, Any] = {
        "window": window.kind,
        "window_start_s": window.start_s,
        "window_end_s": window.end_s,
        "window_s": w,
        "replicas": replica_s / w if w > 0 else float(len(life)),
        "gpus": gpu_s / w if w > 0 else float(life["gpus"].sum()),
        "replica_seconds": replica_s,
        "gpu_seconds": gpu_s,
    }
    s.update(population(req, window))
    s.update(throughput(it, req, window, s["gpus"]))
    s.update(levels(it, lv, window, replica_s, kv_blocks))
    s.update(slo(req, sc, window))
    s.update(speculation(it, sc, window))
    return s
