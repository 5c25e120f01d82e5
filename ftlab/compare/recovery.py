"""Recovery: each post-training-quantized model against its own unquantized source.

"Delta vs base" answers whether a fine-tune helped; for a quantized model the base snapshot is the
wrong reference. Its source is found in its metadata (`source.name`, written by `ftlab quantize`;
older folders: the last `history` entry), and both are compared on the samples they both answered:
* recovery = quantized score / source score per task, with a paired-bootstrap interval of that ratio;
* McNemar's exact test on the per-sample correct/incorrect outcomes (`lost` = source right,
  quantized wrong; `gained` = the reverse), from `ftlab.compare.pair` / `ftlab.compare.stats`;
* the fidelity figures recorded at quantization time (answer-token KL, top-1 agreement, answer
  perplexity), so a reader sees what changed in the distributions next to what changed in scores.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from ftlab.compare.pair import ALL_TASKS, compare_pair
from ftlab.errors import FtlabError
from ftlab.kinds.quant import parse_quant_tag
from ftlab.paths import Workspace
from ftlab.schema import load_training_metadata

log = logging.getLogger(__name__)

COLUMNS = ["quantized", "source", "task", "n", "score", "source_score", "quantized_score", "recovery",
           "recovery_low", "recovery_high", "lost", "gained", "mcnemar_p", "kl_mean", "kl_p99", "top1_agreement",
           "answer_ppl_source", "answer_ppl_quantized", "note"]
_FIDELITY = {"kl_mean": "kl_mean", "kl_p99": "kl_p99", "top1_agreement": "top1_agreement",
             "answer_ppl_source": "answer_perplexity_before", "answer_ppl_quantized": "answer_perplexity_after"}


def _is_ptq(quant_tag) -> bool:
    if not isinstance(quant_tag, str) or not quant_tag:
        return False
    try:
        return parse_quant_tag(quant_tag).method.is_ptq
    except FtlabError:
        return False


def _metadata(workspace: Workspace, model: str, path) -> dict | None:
    for folder in ([Path(path)] if isinstance(path, str) and path else []) + [workspace.models_dir / model]:
        if folder.is_dir():
            try:
                return load_training_metadata(folder, required=False)
            except FtlabError as exc:
                log.warning("recovery: cannot read the metadata of %s (%s)", model, exc)
                return None
    return None


def source_of(meta: dict | None) -> str | None:
    """The unquantized model a PTQ folder was made from, by its metrics name."""
    if not meta:
        return None
    name = (meta.get("source") or {}).get("name")
    if name:
        return name
    history = meta.get("history") or []
    return history[-1].get("run_name") if history and isinstance(history[-1], dict) else None


def lineage(df: pd.DataFrame, workspace: Workspace) -> list[tuple[str, str | None, dict]]:
    """(quantized model, its source or None, its fidelity figures) for each PTQ model in the frame."""
    out = []
    for model, g in df.groupby("model", sort=True):
        if not _is_ptq(g["quant"].iloc[0]):
            continue
        meta = _metadata(workspace, model, g["path"].iloc[0])
        fid = (((meta or {}).get("results") or {}).get("ptq") or {}).get("fidelity") or {}
        out.append((model, source_of(meta), fid))
    return out


def recovery_table(workspace: Workspace, df: pd.DataFrame, *, resamples: int = 10_000, confidence: float = 0.95,
                   seed: int = 0) -> pd.DataFrame:
    """One row per quantized model x task (plus `all` over several tasks); `df` is the (filtered)
    tidy frame of `load_metrics`, which picks the models and tasks."""
    evaluated = set(df["model"])
    tasks = sorted(set(df["task"]))
    rows = []
    for model, source, fid in lineage(df, workspace):
        fixed = {"quantized": model, "source": source} | {k: fid.get(v, math.nan) for k, v in _FIDELITY.items()}
        if source is None:
            rows.append(fixed | {"note": "no source recorded in its training_metadata.json"})
            continue
        if source not in evaluated:
            rows.append(fixed | {"note": f"source not evaluated (ftlab evaluate {source})"})
            continue
        try:
            pair = compare_pair(workspace, source, model, resamples=resamples, confidence=confidence, seed=seed,
                                tasks=tasks)
        except FtlabError as exc:
            rows.append(fixed | {"note": str(exc)})
            continue
        for r in pair.itertuples(index=False):
            rows.append(fixed | {
                "task": r.task, "n": r.n, "score": r.score, "source_score": r.a, "quantized_score": r.b,
                "recovery": r.ratio, "recovery_low": r.ratio_low, "recovery_high": r.ratio_high,
                "lost": r.a_only, "gained": r.b_only, "mcnemar_p": r.mcnemar_p,
                "note": "" if not math.isnan(r.ratio) else "source scores 0: recovery undefined",
            })
    return pd.DataFrame(rows, columns=COLUMNS)


HEADER = ("recovery of each quantized model vs its unquantized source (quantized score / source score, "
          "paired bootstrap; McNemar on lost/gained answers; KL, top-1 and answer perplexity as measured by "
          "ftlab quantize):")


def render(table: pd.DataFrame, confidence: float = 0.95, markdown: bool = False) -> str:
    """The console section: one line per quantized model and task."""
    from ftlab.compare.frame import to_markdown, to_text  # lazy: ftlab.compare.frame imports pandas

    if table.empty:
        return ""
    shown = table.copy()
    for col in ("n", "lost", "gained"):
        shown[col] = pd.to_numeric(shown[col]).round().astype("Int64")
    pct = f"{confidence:.0%}"
    shown["recovery [" + pct + "]"] = [
        "" if math.isnan(r) else f"{r:.3f} [{lo:.3f}, {hi:.3f}]" if not math.isnan(lo) else f"{r:.3f}"
        for r, lo, hi in zip(shown["recovery"].astype(float), shown["recovery_low"].astype(float),
                             shown["recovery_high"].astype(float))]
    shown["answer ppl"] = [
        "" if math.isnan(a) else f"{a:.3f} -> {b:.3f}"
        for a, b in zip(shown["answer_ppl_source"].astype(float), shown["answer_ppl_quantized"].astype(float))]
    cols = ["quantized", "source", "task", "n", "source_score", "quantized_score", "recovery [" + pct + "]", "lost",
            "gained", "mcnemar_p", "kl_mean", "kl_p99", "top1_agreement", "answer ppl", "note"]
    shown = shown[cols].rename(columns={"source_score": "source score", "quantized_score": "quantized score",
                                        "source": "unquantized source", "kl_mean": "KL mean", "kl_p99": "KL p99",
                                        "top1_agreement": "top-1"})
    # Columns nothing filled in (no fidelity recorded, no pair evaluated) are left out.
    shown = shown.loc[:, [c for c in shown.columns if not shown[c].map(lambda v: pd.isna(v) or v == "").all()]]
    return to_markdown(shown) if markdown else to_text(shown)


def plot_recovery(table: pd.DataFrame, path: Path) -> Path | None:
    """Bars of recovery per quantized model and task with their intervals; the line at 1 is the source."""
    import numpy as np  # lazy: numpy takes 0.18 s

    from ftlab.compare.plots import pyplot, save_figure  # lazy: ftlab.compare.plots imports numpy

    data = table[table["recovery"].notna() & (table["task"] != ALL_TASKS)]
    if data.empty:
        return None
    plt = pyplot()
    tasks = sorted(data["task"].unique())
    models = sorted(data["quantized"].unique())
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(tasks) * max(1, len(models)) ** 0.5), 0.5 * len(models) + 3))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        g = data[data["quantized"] == model].set_index("task").reindex(tasks)
        vals = g["recovery"].to_numpy(dtype=float)
        err = np.vstack([np.nan_to_num(np.clip(vals - g["recovery_low"].to_numpy(dtype=float), 0, None)),
                         np.nan_to_num(np.clip(g["recovery_high"].to_numpy(dtype=float) - vals, 0, None))])
        ax.bar(np.arange(len(tasks)) + i * width - 0.4 + width / 2, np.nan_to_num(vals), width, yerr=err, capsize=3,
               label=model)
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("score of quantized / score of its source")
    ax.set_title("recovery after quantization (bars: paired-bootstrap interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
