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
    from matplotlib import colormaps  # lazy: matplotlib takes 1.2 s

    cmap = colormaps["tab10"]
    return {q: cmap(i % 10) for i, q in enumerate(quant_order(quants))}


def _interval_chart(rows: pd.DataFrame, *, value: str, labels: list[str], xlabel: str, title: str,
                    scale: float = 1.0, reference: float | None = None) -> bytes:
    """One panel per task: each row's `value` as a dot with its [ci_low, ci_high] bar, coloured by quant."""
    tasks = list(dict.fromkeys(rows["task"]))
    colors = _colors(rows["quant"])
    rows = rows.assign(_label=labels)
    height = max(len(g) for _, g in rows.groupby("task"))
    fig, axes = subplots(1, len(tasks), figsize=(max(5.0, 4.6 * len(tasks)), 0.38 * height + 1.6), squeeze=False,
                         layout="constrained")
    for ax, task in zip(axes[0], tasks):
        g = rows[rows["task"] == task].reset_index(drop=True)
        for quant, q in g.groupby("quant", sort=False):
            # An unbounded upper end (a ratio whose resampled source scored 0) is drawn to the point only.
            err = np.vstack([(q[value] - q["ci_low"]).clip(lower=0),
                             (q["ci_high"] - q[value]).clip(lower=0).replace(np.inf, 0)]) * scale
            ax.errorbar(q[value] * scale, q.index, xerr=err, fmt="o", color=colors[quant], capsize=3, label=quant)
        if reference is not None:
            ax.axvline(reference, color="grey", lw=1, ls="--")
        ax.set_yticks(np.arange(len(g)), g["_label"], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, title="quant", title_fontsize=7)
    fig.suptitle(title)
    return figure_png(fig)


def scores_by_recipe(ranking: pd.DataFrame, confidence: float) -> bytes:
    """Per task, each (recipe, quant) score with its interval, best at the top of each variant."""
    labels = [r.recipe + (" (baseline)" if r.baseline else "") for r in ranking.itertuples(index=False)]
    return _interval_chart(ranking, value="mean", labels=labels, xlabel="score (mean over seeds)",
                           title=f"score by recipe ({confidence:.0%} bootstrap interval over items)")


def recovery(recovery_rows: pd.DataFrame, confidence: float) -> bytes | None:
    """Per task, quantized / source score ratio of each (recipe, PTQ variant), with its interval."""
    rows = recovery_rows.dropna(subset=["ratio"])
    if rows.empty:
        return None
    return _interval_chart(rows, value="ratio", labels=[f"{r.recipe} · {r.quant}" for r in rows.itertuples(index=False)],
                           xlabel="% of the unquantized source's score", scale=100.0, reference=100.0,
                           title=f"quantization recovery ({confidence:.0%} paired bootstrap interval)")


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
