"""The metrics document (schema kind "metrics"): registration with ftlab.schema and reading."""

from __future__ import annotations

import os
from pathlib import Path

from ftlab.errors import FtlabError
from ftlab.io import read_json
from ftlab.schema import CURRENT_VERSIONS, register_upgrader, set_current_version, upgrade

METRICS_KIND = "metrics"
METRICS_VERSION = 1
REQUIRED_KEYS = ("model", "datasets", "eval_config_hash")


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


if CURRENT_VERSIONS.get(METRICS_KIND) != METRICS_VERSION:
    set_current_version(METRICS_KIND, METRICS_VERSION)
register_upgrader(METRICS_KIND, 0, _metrics_v0_to_v1)


def load_metrics_document(path: str | os.PathLike) -> dict:
    """A metrics JSON upgraded to the current version; FtlabError when missing or malformed."""
    path = Path(path)
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
