"""The study report's charts, as PNG bytes (the report embeds them in HTML and writes them beside the markdown).

Each function returns None when the study has nothing to draw (no quantized variant, no sizes).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftlab.compare.plots import figure_png, pareto_front, subplots
from ftlab.study.analysis import quant_order

_MARKERS = "osD^v<>p*h"


def _colors(quants) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {q: cmap(i % 10) for i, q in enumerate(quant_order(quants))}


def scores_by_recipe(ranking: pd.DataFrame, confidence: float) -> bytes:
    """Per task, each (recipe, quant) score with its interval, best at the top of each variant."""
    tasks = list(dict.fromkeys(ranking["task"]))
    colors = _colors(ranking["quant"])
    height = max(len(g) for _, g in ranking.groupby("task"))
    fig, axes = subplots(1, len(tasks), figsize=(max(5.0, 4.6 * len(tasks)), 0.38 * height + 1.6), squeeze=False,
                         layout="constrained")
    for ax, task in zip(axes[0], tasks):
        g = ranking[ranking["task"] == task].reset_index(drop=True)
        y = np.arange(len(g))
        for quant, rows in g.groupby("quant", sort=False):
            err = np.vstack([(rows["mean"] - rows["ci_low"]).clip(lower=0), (rows["ci_high"] - rows["mean"]).clip(lower=0)])
            ax.errorbar(rows["mean"], y[rows.index], xerr=err, fmt="o", color=colors[quant], capsize=3, label=quant)
        labels = [f"{r.recipe}" + (" (baseline)" if r.baseline else "") for r in g.itertuples(index=False)]
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(task)
        ax.set_xlabel("score (mean over seeds)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, title="quant", title_fontsize=7)
    fig.suptitle(f"score by recipe ({confidence:.0%} bootstrap interval over items)")
    return figure_png(fig)


def recovery(recovery_rows: pd.DataFrame, confidence: float) -> bytes | None:
    """Per task, quantized / source score ratio of each (recipe, PTQ variant), with its interval."""
    rows = recovery_rows.dropna(subset=["ratio"])
    if rows.empty:
        return None
    tasks = list(dict.fromkeys(rows["task"]))
    colors = _colors(rows["quant"])
    height = max(len(g) for _, g in rows.groupby("task"))
    fig, axes = subplots(1, len(tasks), figsize=(max(5.0, 4.6 * len(tasks)), 0.38 * height + 1.6), squeeze=False,
                         layout="constrained")
    for ax, task in zip(axes[0], tasks):
        g = rows[rows["task"] == task].reset_index(drop=True)
        lo = (g["ratio"] - g["ci_low"]).clip(lower=0)
        hi = (g["ci_high"] - g["ratio"]).clip(lower=0).replace(np.inf, 0)
        for i, r in g.iterrows():
            ax.errorbar([r["ratio"] * 100], [i], xerr=[[lo[i] * 100], [hi[i] * 100]], fmt="o",
                        color=colors[r["quant"]], capsize=3)
        ax.axvline(100, color="grey", lw=1, ls="--")
        ax.set_yticks(np.arange(len(g)), [f"{r.recipe} · {r.quant}" for r in g.itertuples(index=False)], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(task)
        ax.set_xlabel("% of the unquantized source's score")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"quantization recovery ({confidence:.0%} paired bootstrap interval)")
    return figure_png(fig)


_AXES = (("size_bytes", "size on disk (MiB)", 2**20), ("latency_mean_s", "mean latency per sample (s)", 1.0))


def pareto(points: pd.DataFrame) -> bytes | None:
    """Per task (rows) score vs size and vs latency (columns), the Pareto front as a step line."""
    axes_present = [a for a in _AXES if points[a[0]].notna().any()]
    if not axes_present:
        return None
    tasks = list(dict.fromkeys(points["task"]))
    colors = _colors(points["quant"])
    fig, axes = subplots(len(tasks), len(axes_present), figsize=(6.2 * len(axes_present), 4.2 * len(tasks)),
                         squeeze=False, layout="constrained")
    for row, task in zip(axes, tasks):
        g = points[points["task"] == task]
        for ax, (col, label, scale) in zip(row, axes_present):
            known = g.dropna(subset=[col, "score"])
            for i, (quant, q) in enumerate(known.groupby("quant", sort=False)):
                ax.scatter(q[col] / scale, q["score"], color=colors[quant], marker=_MARKERS[i % len(_MARKERS)],
                           label=quant, s=40)
            for r in known.itertuples(index=False):
                ax.annotate(r.recipe, (getattr(r, col) / scale, r.score), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
            if len(known) > 1:
                front = known.iloc[pareto_front(known[col], known["score"])]
                ax.step(front[col] / scale, front["score"], where="post", color="tab:red", lw=1.2, label="Pareto front")
            ax.set_xlabel(label)
            ax.set_ylabel("score")
            ax.set_title(task)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return figure_png(fig)
