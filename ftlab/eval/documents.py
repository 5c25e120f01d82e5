"""The metrics document (schema kind "metrics"): upgraders from older versions and reading.

The version itself is `ftlab.schema.METRICS_SCHEMA_VERSION`; this module only registers how older
documents become current ones, so readers (the evaluator, the orchestrator, `ftlab compare`) always
see the current structure.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftlab.errors import FtlabError
from ftlab.eval.answer_kinds import ANSWER_KINDS
from ftlab.io import read_json
from ftlab.schema import register_upgrader, upgrade

METRICS_KIND = "metrics"
REQUIRED_KEYS = ("model", "datasets")


def _metrics_v0_to_v1(doc: dict) -> dict:
    """v0 (prototype evaluator): `model` was the name string and per-task results sat under
    `results` as flat {metric: value}; v1 nests them as datasets.<task>.metrics."""
    model = doc.get("model")
    if isinstance(model, str):
        doc["model"] = {"name": model, "path": doc.pop("model_path", None), "metadata": {}}
    if "datasets" not in doc:
        datasets = {}
        for task, res in (doc.pop("results", None) or {}).items():
            res = dict(res or {})
            n = res.pop("n", None)
            datasets[task] = {"n": n, "metrics": res, "intervals": {}}
        doc["datasets"] = datasets
    doc.setdefault("kind", METRICS_KIND)
    doc.setdefault("status", "complete")
    doc.setdefault("eval_config", {})
    doc.setdefault("eval_config_hash", None)
    doc.setdefault("quantization", None)
    if "summary" not in doc:
        accs = [d["metrics"]["accuracy"] for d in doc["datasets"].values()
                if isinstance(d.get("metrics", {}).get("accuracy"), (int, float))]
        doc["summary"] = {"mean_accuracy": sum(accs) / len(accs) if accs else None,
                          "total_samples": sum(int(d.get("n") or 0) for d in doc["datasets"].values())}
    return doc


# What schema v1's evaluator applied to every number, whatever the task.
_V1_TOLERANCE = {"rel": 1e-4, "abs": 1e-6}


def _metrics_v1_to_v2(doc: dict) -> dict:
    """v1 keyed the whole document by one eval config hash; v2 gives every task block its own
    `settings` (rebuilt from the v1 config), `settings_key` and `scoring_version` (1: these
    results were scored by the v1 rules, so the orchestrator sees them as stale and the evaluator
    rescores them from their stored responses). `legacy_eval_config_hash` lets readers find the
    block's v1 sample lines, which carry only that hash."""
    from ftlab.eval.results import TaskSpec, settings_key, task_settings

    cfg = doc.get("eval_config") or {}
    eval_cfg = cfg["eval"] if isinstance(cfg.get("eval"), dict) else cfg
    model_cfg = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    legacy_hash = doc.pop("eval_config_hash", None)
    for key, block in (doc.get("datasets") or {}).items():
        if not isinstance(block, dict):
            continue
        kind = block.get("answer_kind")
        tolerance = None
        if kind in ANSWER_KINDS and ANSWER_KINDS.get(kind).uses_tolerance:
            tolerance = {"rel": eval_cfg.get("numeric_rel_tol", _V1_TOLERANCE["rel"]),
                         "abs": eval_cfg.get("numeric_abs_tol", _V1_TOLERANCE["abs"]), "rounded_golds": False}
        runner = "perplexity" if str(key).startswith("perplexity:") else "generate"
        spec = TaskSpec(key=key, runner=runner, task=block.get("task", key), answer_kind=kind, instruction=None,
                        max_new_tokens=block.get("max_new_tokens"), tolerance=tolerance, scoring_version=1)
        block["settings"] = task_settings(spec, eval_cfg, model_cfg)
        block["settings_key"] = settings_key(block["settings"])
        block["scoring_version"] = 1
        block["legacy_eval_config_hash"] = legacy_hash
    doc.setdefault("superseded", [])
    return doc


register_upgrader(METRICS_KIND, 0, _metrics_v0_to_v1)
register_upgrader(METRICS_KIND, 1, _metrics_v1_to_v2)


def load_metrics_document(path: str | os.PathLike, *, missing_ok: bool = False) -> dict | None:
    """A metrics JSON upgraded to the current version (None when absent and `missing_ok`);
    FtlabError when missing or malformed."""
    path = Path(path)
    if missing_ok and not path.exists():
        return None
    doc = read_json(path, "metrics file")
    if not isinstance(doc, dict):
        raise FtlabError(f"metrics file {path} does not hold a JSON object; delete it or re-run ftlab evaluate")
    doc = upgrade(METRICS_KIND, doc, source=f"metrics file {path}")
    if doc.get("kind", METRICS_KIND) != METRICS_KIND:
        raise FtlabError(f"{path} is a {doc.get('kind')!r} document, not metrics")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise FtlabError(f"metrics file {path} lacks {', '.join(missing)}; re-run ftlab evaluate for this model")
    if not isinstance(doc["datasets"], dict):
        raise FtlabError(f"metrics file {path}: 'datasets' must be an object of per-task results")
    return doc
