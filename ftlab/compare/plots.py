"""PNG charts of a comparison frame: per-task scores, accuracy vs latency, accuracy vs size (Pareto)."""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ftlab.compare.frame import OVERALL_TASK, SCORE
from ftlab.errors import FtlabError
from ftlab.io import atomic_write_bytes

log = logging.getLogger(__name__)

PRIMARY_METRICS = ("accuracy", "f1", "exact_match")


def pyplot():
    import matplotlib  # lazy: matplotlib takes 1.2 s

    # Agg before pyplot is imported: no display on servers, and no GUI backend probing.
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # lazy: matplotlib takes 1.2 s

    return plt


def subplots(*args, **kwargs):
    """`plt.subplots` on the Agg backend (no display needed)."""
    return pyplot().subplots(*args, **kwargs)


def figure_png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps every open one alive)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def save_figure(fig, path: Path) -> Path:
    atomic_write_bytes(path, figure_png(fig))
    return path


def primary_scores(df: pd.DataFrame) -> pd.DataFrame:
    """For each task the first of PRIMARY_METRICS it reports; tasks with none of them (perplexity,
    lower-is-better) do not belong on a 0-1 score axis and are left out."""
    scores = df[df["group"] == SCORE]
    picked = []
    for task, g in scores.groupby("task", sort=True):
        names = set(g["metric"])
        metric = next((m for m in PRIMARY_METRICS if m in names), None)
        if metric is None:
            log.info("score plot: skipping %s (no %s)", task, "/".join(PRIMARY_METRICS))
            continue
        picked.append(g[g["metric"] == metric])
    return pd.concat(picked, ignore_index=True) if picked else scores.iloc[0:0]


def model_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean accuracy across tasks, sample-weighted mean latency, size on disk."""
    rows = []
    for model, g in df.groupby("model", sort=True):
        overall = g[(g["task"] == OVERALL_TASK) & (g["metric"] == "mean_accuracy")]["value"]
        acc = g[(g["group"] == SCORE) & (g["metric"] == "accuracy")]["value"]
        mean_acc = float(overall.iloc[0]) if len(overall) and not math.isnan(overall.iloc[0]) else (
            float(acc.mean()) if len(acc) else math.nan)
        lat = g[g["metric"] == "latency_mean_s"]
        weights = lat["n"].fillna(1.0).to_numpy()
        latency = float(np.average(lat["value"], weights=weights)) if len(lat) and weights.sum() > 0 else math.nan
        rows.append({"model": model, "quant": g["quant"].iloc[0], "mean_accuracy": mean_acc,
                     "latency_mean_s": latency, "size_on_disk_bytes": float(g["size_on_disk_bytes"].iloc[0])})
    return pd.DataFrame(rows, columns=["model", "quant", "mean_accuracy", "latency_mean_s", "size_on_disk_bytes"])


def pareto_front(x, y) -> np.ndarray:
    """Indices of points no other point beats (smaller or equal x and larger or equal y, one strictly)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = []
    for i in range(len(x)):
        dominated = np.any((x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i])))
        if not dominated:
            keep.append(i)
    return np.array(sorted(keep, key=lambda i: x[i]), dtype=int)


def plot_scores_by_task(df: pd.DataFrame, path: Path) -> Path | None:
    plt = pyplot()
    scores = primary_scores(df)
    if scores.empty:
        return None
    tasks = sorted(scores["task"].unique())
    models = sorted(scores["model"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.0, 3.6 * len(tasks)), 0.45 * len(models) + 1.8),
                             squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        g = scores[scores["task"] == task].set_index("model").reindex(models)
        vals = g["value"].to_numpy(dtype=float)
        lo = np.clip(vals - g["ci_low"].to_numpy(dtype=float), 0, None)
        hi = np.clip(g["ci_high"].to_numpy(dtype=float) - vals, 0, None)
        err = np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)])
        ax.barh(range(len(models)), np.nan_to_num(vals), xerr=err, color="tab:blue", alpha=0.8, capsize=3)
        metric = g["metric"].dropna().iloc[0] if g["metric"].notna().any() else ""
        ax.set_title(f"{task} ({metric})")
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(models)), models, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle("score by task (bars: 95% interval)", y=1.04)
    return save_figure(fig, path)


def _scatter(summary: pd.DataFrame, xcol: str, xlabel: str, title: str, path: Path, *, logx=False, pareto=False) -> Path:
    plt = pyplot()
    data = summary.dropna(subset=[xcol, "mean_accuracy"])
    fig, ax = plt.subplots(figsize=(7, 5))
    for quant, g in data.groupby(data["quant"].fillna("?"), sort=True):
        ax.scatter(g[xcol], g["mean_accuracy"], label=quant, s=40)
    for r in data.itertuples(index=False):
        ax.annotate(r.model, (getattr(r, xcol), r.mean_accuracy), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if pareto and len(data) > 1:
        idx = pareto_front(data[xcol], data["mean_accuracy"])
        front = data.iloc[idx]
        ax.step(front[xcol], front["mean_accuracy"], where="post", color="tab:red", lw=1.2, label="Pareto front")
    if logx and (data[xcol] > 0).all() and len(data):
        from matplotlib.ticker import FuncFormatter  # lazy: matplotlib takes 1.2 s

        ax.set_xscale("log")
        # Plain numbers (0.5, 2, 300) instead of 2x10^0 mantissa labels.
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="quant", title_fontsize=7)
    return save_figure(fig, path)


def write_plots(df: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Writes the three charts into `out_dir`; returns the paths written."""
    if df.empty:
        raise FtlabError("no metrics to plot; evaluate models first or loosen the filters")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FtlabError(f"--plot {out} is a file; give a folder")
    summary = model_summary(df)
    written = []
    scores_png = plot_scores_by_task(df, out / "score_by_task.png")
    if scores_png is not None:
        written.append(scores_png)
    else:
        log.warning("no accuracy/f1/exact_match scores; skipping score_by_task.png")
    if summary["latency_mean_s"].notna().any():
        written.append(_scatter(summary, "latency_mean_s", "mean latency per sample (s)",
                                "accuracy vs latency", out / "accuracy_vs_latency.png"))
    else:
        log.warning("no latency in the metrics; skipping accuracy_vs_latency.png")
    sized = summary.assign(size_mb=summary["size_on_disk_bytes"] / 2**20)
    if sized["size_mb"].notna().any():
        written.append(_scatter(sized, "size_mb", "size on disk (MiB)", "accuracy vs size on disk (quantization trade-off)",
                                out / "accuracy_vs_size.png", logx=True, pareto=True))
    else:
        log.warning("no model sizes known (metadata or model folders); skipping accuracy_vs_size.png")
    return written
