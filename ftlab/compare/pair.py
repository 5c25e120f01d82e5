"""`--pair A B`: per-sample comparison of two models on the samples both answered."""

from __future__ import annotations

import logging
import os

import pandas as pd

from ftlab.compare.frame import load_document, metrics_dir_of
from ftlab.compare.stats import format_p, mcnemar_exact, paired_bootstrap
from ftlab.errors import FtlabError
from ftlab.eval.records.results import current_samples
from ftlab.io import read_jsonl
from ftlab.paths import MetricsFiles, Workspace

log = logging.getLogger(__name__)

ALL_TASKS = "all"
# Per-sample graded scores a task may record beside `correct` (SQuAD-style F1); the bootstrap uses
# the first present in both models' lines, else the 0/1 correctness.
# Per-sample scores preferred over right/wrong when both models have them: token F1 (squad_v2),
# then an lm-eval task's primary metric (`score`, ftlab.eval.lmeval.runner: 0/1 or continuous).
_SCORE_KEYS = ("f1", "score")


def samples_path(metrics_dir, model: str):
    return MetricsFiles.of(metrics_dir, model).samples


def load_samples(source: Workspace | str | os.PathLike, model: str) -> tuple[pd.DataFrame, dict]:
    """The sample lines behind the model's current task results, one per (task, row), and the
    metrics document they belong to.

    Lines of superseded settings (an older prompt, token cap or limit) stay in the samples file;
    only those under each task block's own settings key enter a comparison (ftlab.eval.records.results).
    """

    mdir = metrics_dir_of(source)
    path = samples_path(mdir, model)
    doc_path = mdir / f"{model}.json"
    if not doc_path.exists():
        raise FtlabError(f"no metrics for {model!r} ({doc_path} missing); evaluate it first: ftlab evaluate {model}")
    doc = load_document(doc_path)
    lines = read_jsonl(path)
    kept = current_samples(doc, lines)
    if not kept:
        raise FtlabError(f"no samples for {model!r} ({path} missing, empty or from other settings); "
                         f"evaluate it first: ftlab evaluate {model}")
    if len(kept) < len(lines):
        log.debug("%s: %d of %d sample lines belong to superseded settings or rescoring; using the current %d",
                 model, len(lines) - len(kept), len(lines), len(kept))
    df = pd.DataFrame(kept)
    for col in ("dataset", "index", "correct"):
        if col not in df.columns:
            raise FtlabError(f"samples file {path} lacks the {col!r} field; re-run ftlab evaluate {model}")
    # None where a sample is scored, not judged right or wrong (an lm-eval task whose primary metric
    # is continuous): kept as missing, so such a task gets no McNemar test rather than one on all-False.
    df["correct"] = df["correct"].astype(object).where(df["correct"].notna(), None)
    return df.reset_index(drop=True), doc


def _check_same_rules(doc_a: dict, doc_b: dict, tasks, model_a: str, model_b: str) -> None:
    """Both models' results of a task must be scored by the same rule, or the test compares rules."""
    for task in tasks:
        va = (doc_a["datasets"].get(task) or {}).get("scoring_version")
        vb = (doc_b["datasets"].get(task) or {}).get("scoring_version")
        if va != vb:
            old = model_a if (va or 0) < (vb or 0) else model_b
            raise FtlabError(f"{task}: {model_a} was scored by scoring v{va}, {model_b} by v{vb}; rescore {old} "
                             f"from its stored responses first: ftlab evaluate {old} --datasets {task}")


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
    a, doc_a = load_samples(source, model_a)
    b, doc_b = load_samples(source, model_b)
    joined = a.merge(b, on=["dataset", "index"], suffixes=("_a", "_b"), how="inner")
    if tasks:
        joined = joined[joined["dataset"].isin(tasks)]
    if joined.empty:
        raise FtlabError(f"{model_a!r} and {model_b!r} share no answered samples (dataset+index); evaluate both on the same tasks")
    _check_same_rules(doc_a, doc_b, sorted(set(joined["dataset"])), model_a, model_b)
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
        judged = g["correct_a"].notna().all() and g["correct_b"].notna().all()
        if score == "correct" and not judged:
            raise FtlabError(f"{task}: some samples of {model_a} or {model_b} are neither right/wrong nor scored; "
                             f"re-run ftlab evaluate on both")
        bs = paired_bootstrap(sub_a[score].astype(float).to_numpy(), sub_b[score].astype(float).to_numpy(),
                              resamples=resamples, confidence=confidence, seed=seed)
        mc = mcnemar_exact(g["correct_a"].astype(bool).to_numpy(), g["correct_b"].astype(bool).to_numpy()) if judged else None
        rows.append({
            "task": task, "n": len(g), "score": "accuracy" if score == "correct" else score,
            "a": bs.mean_a, "b": bs.mean_b, "diff": bs.diff, "ci_low": bs.ci_low, "ci_high": bs.ci_high,
            "bootstrap_p": bs.p_value, "bootstrap_resamples": bs.resamples,
            # McNemar needs right/wrong per sample; a continuous score gets the bootstrap only.
            "a_only": mc.a_only if mc else None, "b_only": mc.b_only if mc else None,
            "mcnemar_p": mc.p_value if mc else float("nan"),
            "ratio": bs.ratio, "ratio_low": bs.ratio_low, "ratio_high": bs.ratio_high,
        })
    return pd.DataFrame(rows)


def describe_pair(result: pd.DataFrame, model_a: str, model_b: str, confidence: float = 0.95) -> str:
    lines = [f"paired comparison: A = {model_a}, B = {model_b} (diff = B - A, {confidence:.0%} paired-bootstrap interval)"]
    for r in result.itertuples(index=False):
        p_boot = format_p(r.bootstrap_p, resamples=r.bootstrap_resamples)
        p_boot = f"p {p_boot}" if p_boot.startswith("<") else f"p={p_boot}"
        if r.a_only is None or r.a_only != r.a_only:  # a continuous score: no McNemar (compare_pair)
            verdict = "significant" if r.bootstrap_p < 1 - confidence else "not significant"
            test = f"McNemar: n/a (scores are not right/wrong; {verdict} by the bootstrap)"
        else:
            verdict = "significant" if r.mcnemar_p < 1 - confidence else "not significant"
            test = f"McNemar: A-only={int(r.a_only)} B-only={int(r.b_only)} p={r.mcnemar_p:.4g} ({verdict})"
        lines.append(
            f"  {r.task:<14} n={r.n:<5} {r.score} A={r.a:.4f} B={r.b:.4f} diff={r.diff:+.4f} "
            f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] bootstrap {p_boot}  {test}"
        )
    return "\n".join(lines)
