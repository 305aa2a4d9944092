"""Figures from result tables (matplotlib; returned, never saved: the CLI writes files).

Figures are built with matplotlib's object-oriented API (`Figure`, no pyplot), so importing this
module sets no global backend and keeps no figure alive.

Pareto chart as published inference benchmarks draw it: throughput per GPU (y) against the
streaming speed one user sees, 1/TPOT (x). Every configuration x load point is a dot; the
non-dominated points form the frontier, each labelled with its $ per million tokens.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def pareto_figure(points: pd.DataFrame, frontier: pd.DataFrame, x: str, y: str, cost: str | None,
                  title: str, group: str | None = None) -> Figure:
    """Scatter of all points (coloured by `group` if given) with the frontier and cost labels."""
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    if group and group in points:
        for name, g in points.groupby(group, sort=False):
            g = g.sort_values(x)
            ax.plot(g[x], g[y], "-o", ms=4, lw=1, alpha=0.8, label=str(name))
    else:
        ax.scatter(points[x], points[y], s=22, alpha=0.5, color="0.5", label="points")
    ax.plot(frontier[x], frontier[y], "--", color="black", lw=2, alpha=0.6, label="Pareto frontier")
    if cost and cost in frontier:
        for xv, yv, c in zip(frontier[x], frontier[y], frontier[cost], strict=True):
            ax.annotate(f"${c:.3g}/M tok", (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("tokens/s per user (1 / TPOT, median)")
    ax.set_ylabel("total tokens/s per GPU")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
