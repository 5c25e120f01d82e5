"""A study's results as the two frames the analysis reads: one row per (model, task, item) and one
per (model, task), labelled with the recipe, seed and quant variant each model stands for."""

from __future__ import annotations

import math

import pandas as pd

from ftlab.errors import FtlabError
from ftlab.io import read_json
from ftlab.paths import Workspace
from ftlab.schema import TRAINING_METADATA_FILE

SAMPLE_COLUMNS = ["recipe", "seed", "quant", "task", "index", "correct", "score", "model", "source_model"]


def _flat_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _fidelity(workspace: Workspace, model: str) -> dict:
    """The PTQ fidelity figures recorded in the model folder's metadata, when there are any."""

    path = workspace.models_dir / model / TRAINING_METADATA_FILE
    try:
        meta = read_json(path, "training metadata")
    except FtlabError:
        return {}
    fid = ((meta.get("quantization") or {}).get("fidelity") or meta.get("fidelity") or {}) if isinstance(meta, dict) else {}
    return {"fidelity_kl_mean": fid.get("kl_mean"), "fidelity_top1": fid.get("top1_agreement")}


def collect(workspace: Workspace, evaluations: list[dict], tasks: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`evaluations`: the info of every evaluation job whose metrics exist (recipe, seed, quant,
    model, source_model). Returns (samples, models); tasks not in the metrics are skipped."""
    from ftlab.compare.pair import load_samples  # lazy: ftlab.compare.pair imports pandas

    sample_frames, model_rows = [], []
    for info in evaluations:
        model = info["model"]
        doc_path = workspace.metrics_dir / f"{model}.json"
        if not doc_path.exists():
            continue
        samples, doc = load_samples(workspace, model)
        size = ((doc.get("model") or {}).get("metadata") or {}).get("size_on_disk_bytes")
        labels = {"recipe": info["recipe"], "seed": info.get("seed"), "quant": info["quant"], "model": model,
                  "source_model": info.get("source_model")}
        fidelity = _fidelity(workspace, model) if info.get("source_model") else {}
        for task in tasks:
            block = (doc.get("datasets") or {}).get(task)
            if not block:
                continue
            rows = samples[samples["dataset"] == task]
            # The per-sample score the verdict tests: token F1 (squad_v2), an lm-eval task's primary
            # metric (`score`, also for continuous ones), else right/wrong.
            key = next((k for k in ("f1", "score") if k in rows and rows[k].notna().all()), "correct")
            score = rows[key].astype(float)
            sample_frames.append(pd.DataFrame({
                **{k: [v] * len(rows) for k, v in labels.items()}, "task": task,
                "index": rows["index"].astype(int).to_numpy(), "correct": rows["correct"].fillna(False).astype(bool).to_numpy(),
                "score": score.to_numpy(),
            }))
            latency = (block.get("latency_s") or {}).get("mean")
            model_rows.append({**labels, "task": task, "n": block.get("n"), "size_bytes": size,
                               "samples_per_s": block.get("samples_per_s"), "latency_mean_s": latency,
                               **_flat_metrics(block.get("metrics")), **fidelity})
    samples_df = (pd.concat(sample_frames, ignore_index=True) if sample_frames
                  else pd.DataFrame(columns=SAMPLE_COLUMNS))[SAMPLE_COLUMNS]
    samples_df["seed"] = samples_df["seed"].astype("Int64")
    models_df = pd.DataFrame(model_rows)
    if not models_df.empty:
        models_df["seed"] = models_df["seed"].astype("Int64")
    return samples_df, models_df
