"""Figures from result tables (matplotlib; returned, never saved: the CLI writes files).

Every axis carries its quantity and unit; times in seconds of simulated time, latencies in seconds
or milliseconds as labelled.

Figures are built with matplotlib's object-oriented API (`Figure`, no pyplot), so importing this
module sets no global backend and keeps no figure alive.

Pareto chart as published inference benchmarks draw it: throughput per GPU (y) against the
streaming speed one user sees, 1/TPOT (x). Every configuration x load point is a dot; the
non-dominated points form the frontier, each labelled with its $ per million tokens.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def pareto_figure(points: pd.DataFrame, frontier: pd.DataFrame, x: str, y: str, cost: str | None,
                  title: str, group: str | None = None, cost_unit: str = "M tok",
                  meets: str | None = None) -> Figure:
    """Scatter of all points (coloured by `group` if given) with the frontier, labelled with
    `cost` in $ per `cost_unit`; points whose `meets` column is false are crossed out in red."""
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    if group and group in points:
        for name, g in points.groupby(group, sort=False):
            g = g.sort_values(x)
            ax.plot(g[x], g[y], "-o", ms=4, lw=1, alpha=0.8, label=str(name))
    else:
        ax.scatter(points[x], points[y], s=22, alpha=0.5, color="0.5", label="points")
    if meets and meets in points:
        missed = points[~points[meets].astype(bool)]
        if len(missed):
            ax.scatter(missed[x], missed[y], marker="x", s=60, color="crimson", lw=1.5, zorder=3,
                       label="misses the SLO")
    ax.plot(frontier[x], frontier[y], "--", color="black", lw=2, alpha=0.6, label="Pareto frontier")
    if cost and cost in frontier:
        for xv, yv, c in zip(frontier[x], frontier[y], frontier[cost], strict=True):
            ax.annotate(f"${c:.3g}/{cost_unit}", (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("tokens/s per user (1 / TPOT, median)")
    ax.set_ylabel("total tokens/s per GPU")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def latency_figure(done: pd.DataFrame, ttft_slo_s: float, tpot_slo_s: float, percentile: float) -> Figure:
    """Cumulative share of requests within a TTFT (left) and a TPOT (right), the SLO targets dashed."""
    fig = Figure(figsize=(9, 3.6))
    for i, (col, label, slo, scale, unit) in enumerate((("ttft_s", "time to first token", ttft_slo_s, 1.0, "s"),
                                                        ("tpot_s", "time per output token", tpot_slo_s, 1000.0, "ms"))):
        ax = fig.add_subplot(1, 2, i + 1)
        v = done[col].to_numpy(dtype=float) * scale
        v = np.sort(v[np.isfinite(v)])
        if len(v):
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), lw=1.8)
        ax.axvline(slo * scale, ls="--", color="crimson", lw=1.2, label=f"SLO {slo * scale:g} {unit}")
        ax.axhline(percentile / 100.0, ls=":", color="0.4", lw=1, label=f"p{percentile:g}")
        ax.set_xlabel(f"{label} ({unit})")
        ax.set_ylabel("share of requests")
        ax.set_ylim(0, 1.02)
        if len(v) and v[-1] > 20 * max(v[0], 1e-9) and v[0] > 0:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _busy_share(iterations: pd.DataFrame, edges: np.ndarray, replicas: int) -> np.ndarray:
    """Share of replica-time each bin spent in iterations (0..1)."""
    busy = np.zeros(len(edges) - 1)
    t0, t1 = iterations["t_start_s"].to_numpy(), iterations["t_end_s"].to_numpy()
    width = edges[1] - edges[0]
    for k in range(len(edges) - 1):
        lo, hi = edges[k], edges[k + 1]
        busy[k] = np.clip(np.minimum(t1, hi) - np.maximum(t0, lo), 0.0, None).sum() / (width * max(replicas, 1))
    return busy


def _level_series(levels: pd.DataFrame, col: str, edges: np.ndarray) -> np.ndarray:
    """The sum over replicas of a logged level, sampled at the bins' starts."""
    total = np.zeros(len(edges) - 1)
    for _, g in levels.groupby("replica"):
        t, v = g["t_s"].to_numpy(), g[col].to_numpy()
        idx = np.searchsorted(t, edges[:-1], side="right") - 1
        total += np.where(idx >= 0, v[np.clip(idx, 0, None)], 0)
    return total


def timeseries_figure(levels: pd.DataFrame, iterations: pd.DataFrame, kv_blocks_per_replica: int, replicas: int,
                      window_start_s: float, window_end_s: float, bins: int = 240) -> Figure:
    """Queue length and running requests, KV-cache occupancy and GPU busy share against simulated
    time, summed over replicas (occupancy and busy share as fractions of all replicas')."""
    fig = Figure(figsize=(9, 6.2))
    end = float(max(iterations["t_end_s"].max() if len(iterations) else 0.0, window_end_s, 1e-9))
    edges = np.linspace(0.0, end, bins + 1)
    mid = (edges[:-1] + edges[1:]) / 2
    axes = [fig.add_subplot(3, 1, i + 1) for i in range(3)]
    if len(levels):
        axes[0].step(mid, _level_series(levels, "waiting", edges), where="mid", label="queued (waiting)")
        axes[0].step(mid, _level_series(levels, "running", edges), where="mid", label="running (batch)")
        axes[0].legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("requests")
    if len(iterations) and kv_blocks_per_replica:
        centers = ((iterations["t_start_s"] + iterations["t_end_s"]) / 2).to_numpy()
        which = np.clip(np.searchsorted(edges, centers, side="right") - 1, 0, bins - 1)
        occ = np.zeros(bins)
        for _, g in iterations.assign(_bin=which).groupby("replica"):
            occ += g.groupby("_bin")["kv_blocks_peak"].max().reindex(range(bins)).ffill().fillna(0).to_numpy()
        axes[1].plot(mid, occ / (kv_blocks_per_replica * max(replicas, 1)), lw=1.2, color="tab:purple")
    axes[1].set_ylabel("KV cache used\n(share of HBM blocks)")
    axes[1].set_ylim(0, 1.05)
    if len(iterations):
        axes[2].plot(mid, _busy_share(iterations, edges, replicas), lw=1.2, color="tab:green")
    axes[2].set_ylabel("GPU busy share")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_xlabel("simulated time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlim(0, end)
        if window_start_s > 0:
            ax.axvspan(0, window_start_s, color="0.9", zorder=0)
        if window_end_s < end:
            ax.axvspan(window_end_s, end, color="0.9", zorder=0)
    fig.tight_layout()
    return fig


def cost_figure(cost_usd: float, busy_fraction: float, uncached_usd_per_m: float, cached_usd_per_m: float,
                output_usd_per_m: float) -> Figure:
    """Left: the window's cost split into busy and idle GPU time ($). Right: the price per million
    tokens of each token class that recovers the cost ($/M)."""
    fig = Figure(figsize=(9, 3.4))
    finite = [x if math.isfinite(x) else 0.0 for x in (cost_usd, busy_fraction, uncached_usd_per_m, cached_usd_per_m,
                                                          output_usd_per_m)]
    cost_usd, busy_fraction, uncached_usd_per_m, cached_usd_per_m, output_usd_per_m = finite   # n/a drawn as 0
    ax = fig.add_subplot(1, 2, 1)
    ax.barh(["GPU time"], [cost_usd * busy_fraction], color="tab:blue", label="busy")
    ax.barh(["GPU time"], [cost_usd * (1 - busy_fraction)], left=[cost_usd * busy_fraction], color="0.75",
            label="idle")
    ax.set_xlabel("cost of the measured window ($)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    ax2 = fig.add_subplot(1, 2, 2)
    names = ["uncached input", "cached input", "output"]
    vals = [uncached_usd_per_m, cached_usd_per_m, output_usd_per_m]
    bars = ax2.bar(names, vals, color=["tab:orange", "tab:olive", "tab:blue"])
    for b, v in zip(bars, vals, strict=True):
        ax2.annotate(f"${v:,.3f}/M", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax2.set_ylabel("price recovering the cost ($ per million tokens)")
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def latency_load_figure(points: pd.DataFrame, x: str, x_label: str, group: str | None, ttft_slo_s: float,
                        tpot_slo_s: float, percentile: float, ticks: list[str] | None = None) -> Figure:
    """TTFT (left) and TPOT (right) at the SLO's percentile (solid) and the median (dotted) against
    load, one colour per configuration (`group`), 95% confidence bars where there are replications,
    the SLO targets dashed red. With `ticks`, x is a category position (configurations, not loads)
    labelled by them. `points` holds `<metric>_mean` and `<metric>_ci95` columns (sim/sweep.py
    `aggregate`) for ttft_s_p50, ttft_s_at_slo_percentile, tpot_s_p50 and tpot_s_at_slo_percentile."""
    groups = list(points.groupby(group, sort=False)) if group and group in points else [("", points)]
    fig = Figure(figsize=(9.5, 4.0 + 0.2 * ((len(groups) + 1) // 2)), layout="constrained")
    axes = []
    for i, (base, label, slo, scale, unit) in enumerate((("ttft_s", "time to first token", ttft_slo_s, 1.0, "s"),
                                                         ("tpot_s", "time per output token", tpot_slo_s, 1000.0, "ms"))):
        ax = fig.add_subplot(1, 2, i + 1)
        axes.append(ax)
        for j, (name, g) in enumerate(groups):
            g = g.sort_values(x)
            color = f"C{j % 10}"
            for col, style, median in ((f"{base}_at_slo_percentile", "-o", False), (f"{base}_p50", ":", True)):
                if f"{col}_mean" not in g:
                    continue
                y = g[f"{col}_mean"].to_numpy(dtype=float) * scale
                err = g[f"{col}_ci95"].to_numpy(dtype=float) * scale if f"{col}_ci95" in g else None
                yerr = None
                if err is not None and not np.isnan(err).all():
                    err = np.nan_to_num(err)
                    yerr = np.vstack([np.minimum(err, 0.9 * y), err])   # never below zero (log axes)
                ax.errorbar(g[x].to_numpy(dtype=float), y, yerr=yerr, fmt=style, color=color, ms=4, lw=1.2,
                            capsize=2, alpha=0.55 if median else 0.9,
                            label=str(name) if (not median and name != "") else "_nolegend_")
        ax.axhline(slo * scale, color="red", ls="--", lw=1)
        ax.set_title(f"{label}: p{percentile:g} solid, p50 dotted; SLO ≤ {slo * scale:g} {unit} dashed", fontsize=8)
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{label} ({unit})")
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), [t if len(t) <= 28 else t[:27] + "…" for t in ticks], rotation=20,
                          ha="right", fontsize=7)
        else:
            xs = points[x].to_numpy(dtype=float)
            if len(xs) and xs.min() > 0 and xs.max() > 20 * xs.min():
                ax.set_xscale("log")
        if ax.get_ylim()[1] > 30 * slo * scale:          # a collapsed point would flatten the rest: log scale
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if len(groups) > 1:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    return fig


def sensitivity_figure(rows: pd.DataFrame, baseline_usd_per_m: float) -> Figure:
    """Tornado chart: the change of $ per million output tokens (%) when each lever moves down
    (upper bar) or up (lower bar) by 20%; a hatched bar misses the SLO."""
    from matplotlib.patches import Patch

    levers = list(dict.fromkeys(rows["lever"]))
    fig = Figure(figsize=(8, 0.8 * len(levers) + 1.6))
    ax = fig.add_subplot()
    for i, lever in enumerate(levers):
        for _, r in rows[rows["lever"] == lever].iterrows():
            v = float(r["usd_per_m_output_tokens"]) if r["usd_per_m_output_tokens"] is not None else math.nan
            change = (v / baseline_usd_per_m - 1) * 100 if baseline_usd_per_m and math.isfinite(v) else 0.0
            down = r["change"] < 0
            missed = r.get("slo_met") is False or r.get("slo_met") == 0
            y = i - 0.19 if down else i + 0.19
            color = "tab:blue" if down else "tab:orange"
            ax.barh(y, change, color=color, hatch="//" if missed else None, edgecolor="red" if missed else color,
                    height=0.36)
            ax.annotate(f"{change:+.1f}%", (change, y), xytext=(4 if change >= 0 else -4, 0),
                        textcoords="offset points", ha="left" if change >= 0 else "right", va="center", fontsize=8)
    ax.set_yticks(range(len(levers)), levers)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("change of $ per million output tokens (%)")
    ax.grid(alpha=0.3, axis="x")
    lo, hi = ax.get_xlim()
    ax.set_xlim(min(lo, -5) * 1.3, max(hi, 5) * 1.3)
    ax.legend(handles=[Patch(color="tab:blue", label="lever -20%"), Patch(color="tab:orange", label="lever +20%"),
                       Patch(facecolor="white", edgecolor="red", hatch="//", label="misses the SLO")],
              fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
