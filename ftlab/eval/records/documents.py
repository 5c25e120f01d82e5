"""The metrics document (schema kind "metrics"): its builder, its check, upgraders from older
versions, writing and reading.

The version itself is `ftlab.schema.METRICS_SCHEMA_VERSION`; this module registers how older
documents become current ones, so readers (the evaluator, the orchestrator, `ftlab compare`) always
see the current structure. `metrics_document` is the one place the document is built and
`metrics_document_problems` the one check of its structure: every write runs it (a problem is an
ftlab bug) and so does every read (a problem is a damaged file, named with its field).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError
from ftlab.eval.records.results import TaskSpec, settings_key, task_settings
from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS
from ftlab.io import atomic_write_json, read_json
from ftlab.schema import METRICS_SCHEMA_VERSION, NewerSchemaError, register_upgrader, upgrade

METRICS_KIND = "metrics"
REQUIRED_KEYS = ("model", "datasets")
STATUSES = ("running", "complete")  # running: a run in progress, or killed before it finished

_NONE = type(None)
_NUMBER = (int, float)
# Top-level keys of a current document and their types. Every key is required: the builder writes
# them all, and the v1 -> v2 upgrader gives older documents the ones they lacked.
_DOCUMENT_TYPES: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "kind": (str,), "status": (str,), "model": (dict,), "eval_config": (dict,),
    "backend": (str, _NONE), "datasets": (dict,), "summary": (dict,), "superseded": (list,),
    "quantization": (dict, _NONE), "environment": (dict,), "started_at": (str, _NONE), "finished_at": (str, _NONE),
}
# Every task block, whatever its scoring mode (the fields readers rely on); blocks upgraded from
# older versions have them too (the v1 -> v2 upgrader rebuilds settings).
_BLOCK_TYPES: dict[str, tuple[type, ...]] = {
    "n": (int, _NONE), "metrics": (dict,), "settings": (dict,), "settings_key": (str,), "scoring_version": (int,),
}
# Optional block fields, checked when present.
_BLOCK_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "intervals": (dict,), "task": (str,), "answer_kind": (str, _NONE), "evaluated_at": (str,),
    "format_success_rate": (*_NUMBER, _NONE), "flexible_accuracy": (*_NUMBER, _NONE), "cut_off_rate": (*_NUMBER, _NONE),
}


def _type_problem(where: str, value: Any, types: tuple[type, ...]) -> str | None:
    # bool is an int to isinstance; a count or a version that is true/false is still malformed.
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    names = " or ".join("null" if t is _NONE else t.__name__ for t in types)
    return f"{where} is a {type(value).__name__}, expected {names}"


def _block_problems(where: str, block: Any) -> list[str]:
    if not isinstance(block, dict):
        return [f"{where} is a {type(block).__name__}, expected an object (one task's result)"]
    problems = [f"{where} lacks {key}" for key in _BLOCK_TYPES if key not in block]
    for types, required in ((_BLOCK_TYPES, True), (_BLOCK_OPTIONAL_TYPES, False)):
        for key, allowed in types.items():
            if key in block:
                problem = _type_problem(f"{where}.{key}", block[key], allowed)
                if problem:
                    problems.append(problem)
    if isinstance(block.get("n"), int) and block["n"] < 0:
        problems.append(f"{where}.n is {block['n']}, expected a count >= 0")
    return problems


def metrics_document_problems(doc: Any) -> list[str]:
    """What is missing or mistyped in a (current-version) metrics document; empty when it is well
    formed. Each problem names its field (`datasets.arc.metrics is a list, expected dict`)."""
    if not isinstance(doc, dict):
        return [f"the document is a {type(doc).__name__}, expected a JSON object"]
    problems = [f"lacks {key}" for key in _DOCUMENT_TYPES if key not in doc]
    for key, types in _DOCUMENT_TYPES.items():
        if key in doc:
            problem = _type_problem(key, doc[key], types)
            if problem:
                problems.append(problem)
    if doc.get("schema_version", METRICS_SCHEMA_VERSION) != METRICS_SCHEMA_VERSION:
        problems.append(f"schema_version is {doc['schema_version']!r}, expected {METRICS_SCHEMA_VERSION}")
    if doc.get("kind", METRICS_KIND) != METRICS_KIND:
        problems.append(f"kind is {doc['kind']!r}, expected {METRICS_KIND!r}")
    if isinstance(doc.get("status"), str) and doc["status"] not in STATUSES:
        problems.append(f"status is {doc['status']!r}, expected {' or '.join(STATUSES)}")
    model = doc.get("model")
    if isinstance(model, dict):
        if not isinstance(model.get("name"), str) or not model["name"]:
            problems.append("model.name is missing or not a non-empty string")
        if "metadata" in model and not isinstance(model["metadata"], dict):
            problems.append(_type_problem("model.metadata", model["metadata"], (dict,)))
    if isinstance(doc.get("datasets"), dict):
        for key, block in doc["datasets"].items():
            problems += _block_problems(f"datasets.{key}", block)
    summary = doc.get("summary")
    if isinstance(summary, dict) and "mean_accuracy" in summary:
        problem = _type_problem("summary.mean_accuracy", summary["mean_accuracy"], (*_NUMBER, _NONE))
        if problem:
            problems.append(problem)
    if isinstance(doc.get("superseded"), list):
        for i, entry in enumerate(doc["superseded"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("task"), str):
                problems.append(f"superseded[{i}] is not an object naming its task")
            elif "block" in entry:
                problems += _block_problems(f"superseded[{i}].block", entry["block"])
    return problems


def metrics_document(*, model: dict, eval_config: dict, backend: str | None, quantization: dict | None,
                     environment: dict, started_at: str, datasets: dict | None = None,
                     superseded: list | None = None) -> dict[str, Any]:
    """A new metrics document of one model, status running: `datasets` and `superseded` carry the
    task blocks of the model's previous document (results accumulate), `summary` is filled in as
    tasks finish and `finished_at` when the run ends."""
    return {
        "schema_version": METRICS_SCHEMA_VERSION, "kind": METRICS_KIND, "status": "running",
        "model": model,
        # The config of the latest run; each task's own settings are in its block.
        "eval_config": eval_config, "backend": backend,
        "datasets": dict(datasets or {}), "summary": {},
        "superseded": list(superseded or []),
        "quantization": quantization, "environment": environment,
        "started_at": started_at, "finished_at": None,
    }


def write_metrics_document(path: str | os.PathLike, doc: dict) -> Path:
    """Checks a document built by `metrics_document` and writes it atomically."""
    problems = metrics_document_problems(doc)
    if problems:
        raise FtlabError(f"metrics document for {path} is malformed (an ftlab bug): {'; '.join(problems)}")
    return atomic_write_json(path, doc)


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
    # Keys the v2 evaluator always writes; a v1 document (the prototype's) may lack them.
    for key, default in (("backend", None), ("quantization", None), ("environment", {}), ("started_at", None),
                         ("finished_at", None)):
        doc.setdefault(key, default)
    return doc


register_upgrader(METRICS_KIND, 0, _metrics_v0_to_v1)
register_upgrader(METRICS_KIND, 1, _metrics_v1_to_v2)


def load_metrics_document(path: str | os.PathLike, *, missing_ok: bool = False) -> dict | None:
    """A metrics JSON upgraded to the current version (None when absent and `missing_ok`);
    FtlabError when missing or malformed (naming the file and the field), NewerSchemaError when a
    newer ftlab wrote it."""
    path = Path(path)
    if missing_ok and not path.exists():
        return None
    doc = read_json(path, "metrics file")
    if not isinstance(doc, dict):
        raise FtlabError(f"metrics file {path} does not hold a JSON object; delete it or re-run ftlab evaluate")
    try:
        doc = upgrade(METRICS_KIND, doc, source=f"metrics file {path}")
    except NewerSchemaError:
        raise NewerSchemaError(f"metrics file {path} was written by a newer ftlab: schema_version "
                               f"{doc.get('schema_version')} is newer than this ftlab understands "
                               f"({METRICS_SCHEMA_VERSION}); upgrade ftlab to read it") from None
    if doc.get("kind", METRICS_KIND) != METRICS_KIND:
        raise FtlabError(f"{path} is a {doc.get('kind')!r} document, not metrics")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise FtlabError(f"metrics file {path} lacks {', '.join(missing)}; re-run ftlab evaluate for this model")
    problems = metrics_document_problems(doc)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FtlabError(f"metrics file {path}: {problems[0]}{more}; re-run ftlab evaluate for this model")
    return doc
