"""`--pair A B`: per-sample comparison of two models on the samples both answered."""

from __future__ import annotations

import logging
import math
import os

import pandas as pd

from ftlab.compare.frame import load_document, metrics_dir_of
from ftlab.compare.stats import mcnemar_exact, paired_bootstrap
from ftlab.errors import FtlabError
from ftlab.io import read_jsonl
from ftlab.paths import Workspace

log = logging.getLogger(__name__)

ALL_TASKS = "all"
# Per-sample graded scores a task may record beside `correct` (SQuAD-style F1); the bootstrap uses
# the first present in both models' lines, else the 0/1 correctness.
_SCORE_KEYS = ("f1",)


def samples_path(metrics_dir, model: str):
    return metrics_dir / f"{model}.samples.jsonl"


def load_samples(source: Workspace | str | os.PathLike, model: str) -> pd.DataFrame:
    """The model's sample lines from its current evaluation, one per (dataset, index).

    Lines written under another eval config (a stale run the evaluator will redo) are dropped when
    the metrics document names the current hash; a resumed run may repeat a line, the last wins.
    """
    mdir = metrics_dir_of(source)
    path = samples_path(mdir, model)
    lines = read_jsonl(path)
    if not lines:
        raise FtlabError(f"no samples for {model!r} ({path} missing or empty); evaluate it first: ftlab evaluate {model}")
    doc_path = mdir / f"{model}.json"
    current = load_document(doc_path).get("eval_config_hash") if doc_path.exists() else None
    if current:
        kept = [r for r in lines if r.get("eval_config_hash") in (None, current)]
        if len(kept) < len(lines):
            log.info("%s: ignoring %d sample lines from an older eval config", model, len(lines) - len(kept))
        lines = kept
    df = pd.DataFrame(lines)
    for col in ("dataset", "index", "correct"):
        if col not in df.columns:
            raise FtlabError(f"samples file {path} lacks the {col!r} field; re-run ftlab evaluate {model}")
    df = df.drop_duplicates(["dataset", "index"], keep="last")
    df["correct"] = df["correct"].fillna(False).astype(bool)
    return df.reset_index(drop=True)


def _score_column(a: pd.DataFrame, b: pd.DataFrame) -> str:
    for key in _SCORE_KEYS:
        if key in a.columns and key in b.columns and a[key].notna().all() and b[key].notna().all():
            return key
    return "correct"


def compare_pair(source: Workspace | str | os.PathLike, model_a: str, model_b: str, *, resamples: int = 10_000,
                 confidence: float = 0.95, seed: int = 0, tasks=None) -> pd.DataFrame:
    """One row per task (plus `all`): McNemar on correct/incorrect, paired bootstrap of B - A."""
    if model_a == model_b:
        raise FtlabError("--pair needs two different models")
    a = load_samples(source, model_a)
    b = load_samples(source, model_b)
    joined = a.merge(b, on=["dataset", "index"], suffixes=("_a", "_b"), how="inner")
    if tasks:
        joined = joined[joined["dataset"].isin(tasks)]
    if joined.empty:
        raise FtlabError(f"{model_a!r} and {model_b!r} share no answered samples (dataset+index); evaluate both on the same tasks")
    if "prompt_hash_a" in joined.columns and "prompt_hash_b" in joined.columns:
        differ = int((joined["prompt_hash_a"] != joined["prompt_hash_b"]).sum())
        if differ:
            log.warning("%d paired samples were asked with different prompts (system prompt or template differ)", differ)
    rows = []
    groups = [(t, g) for t, g in joined.groupby("dataset", sort=True)]
    if len(groups) > 1:
        groups.append((ALL_TASKS, joined))
    for task, g in groups:
        sub_a = g[[c for c in g.columns if c.endswith("_a")]].rename(columns=lambda c: c[:-2])
        sub_b = g[[c for c in g.columns if c.endswith("_b")]].rename(columns=lambda c: c[:-2])
        score = _score_column(sub_a, sub_b)
        mc = mcnemar_exact(g["correct_a"].to_numpy(), g["correct_b"].to_numpy())
        bs = paired_bootstrap(sub_a[score].astype(float).to_numpy(), sub_b[score].astype(float).to_numpy(),
                              resamples=resamples, confidence=confidence, seed=seed)
        rows.append({
            "task": task, "n": mc.n, "score": "accuracy" if score == "correct" else score,
            "a": bs.mean_a, "b": bs.mean_b, "diff": bs.diff, "ci_low": bs.ci_low, "ci_high": bs.ci_high,
            "bootstrap_p": bs.p_value, "a_only": mc.a_only, "b_only": mc.b_only, "mcnemar_p": mc.p_value,
            "ratio": bs.ratio, "ratio_low": bs.ratio_low, "ratio_high": bs.ratio_high,
        })
    return pd.DataFrame(rows)


def describe_pair(result: pd.DataFrame, model_a: str, model_b: str, confidence: float = 0.95) -> str:
    lines = [f"paired comparison: A = {model_a}, B = {model_b} (diff = B - A, {confidence:.0%} paired-bootstrap interval)"]
    for r in result.itertuples(index=False):
        verdict = "significant" if r.mcnemar_p < 1 - confidence else "not significant"
        p_boot = "" if math.isnan(r.bootstrap_p) else f"{r.bootstrap_p:.4g}"
        lines.append(
            f"  {r.task:<14} n={r.n:<5} {r.score} A={r.a:.4f} B={r.b:.4f} diff={r.diff:+.4f} "
            f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] bootstrap p={p_boot}  "
            f"McNemar: A-only={r.a_only} B-only={r.b_only} p={r.mcnemar_p:.4g} ({verdict})"
        )
    return "\n".join(lines)
