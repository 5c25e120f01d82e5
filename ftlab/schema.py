"""Versioned JSON documents (model metadata, metrics) with upgraders from older versions.

A reader always sees the current version: `upgrade(kind, doc)` applies the registered
upgraders in order (v1 -> v2 -> ...), so old files stay readable after a schema change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ftlab.env import environment_info, now_iso
from ftlab.errors import FtlabError
from ftlab.io import atomic_write_json, read_json
from ftlab.kinds.quant import QuantizationSpec
from ftlab.naming import parse_run_name

TRAINING_METADATA_FILE = "training_metadata.json"
# One schema version per document kind, defined here and nowhere else. Bump it together with an
# upgrader from the previous version (registered where the kind's document is built).
MODEL_SCHEMA_VERSION = 1
METRICS_SCHEMA_VERSION = 2  # v2: results keyed per task with their own settings (ftlab.eval.records.results)
CURRENT_VERSIONS: dict[str, int] = {"model": MODEL_SCHEMA_VERSION, "metrics": METRICS_SCHEMA_VERSION}
_UPGRADERS: dict[tuple[str, int], Callable[[dict], dict]] = {}


class NewerSchemaError(FtlabError):
    """A document written by a newer ftlab: not damaged, and not for this one to rewrite."""


def register_upgrader(kind: str, from_version: int, fn: Callable[[dict], dict]) -> None:
    """`fn` turns a version `from_version` document into version `from_version + 1`."""
    _UPGRADERS[(kind, from_version)] = fn


def upgrade(kind: str, doc: dict, source: str = "document") -> dict:
    if not isinstance(doc, dict):
        raise FtlabError(f"{source} must be a JSON object")
    current = CURRENT_VERSIONS.get(kind)
    if current is None:
        raise FtlabError(f"unknown document kind {kind!r}; known: {', '.join(CURRENT_VERSIONS)}")
    version = doc.get("schema_version")
    if not isinstance(version, int):
        raise FtlabError(f"{source} has no integer schema_version; it was not written by ftlab or is damaged")
    if version > current:
        raise NewerSchemaError(f"{source} has schema_version {version}, newer than this ftlab understands ({current}); "
                               "upgrade ftlab")
    while version < current:
        fn = _UPGRADERS.get((kind, version))
        if fn is None:
            raise FtlabError(f"{source}: no upgrader for {kind} schema v{version} -> v{version + 1}")
        doc = fn(dict(doc))
        version += 1
        doc["schema_version"] = version
    return doc


def _model_v0_to_v1(doc: dict) -> dict:
    # v0: the seed's flat metadata (base_model as a string, quant_method string, no kind).
    base = doc.get("base_model")
    if isinstance(base, str):
        doc["base_model"] = {"ref": base, "source_kind": None, "revision": None, "base_name": None}
    if "quantization" not in doc:
        method = doc.pop("quant_method", "NoQuant") or "NoQuant"
        try:
            doc["quantization"] = QuantizationSpec(method=method).to_dict()
        except FtlabError:
            doc["quantization"] = QuantizationSpec().to_dict()
    doc.setdefault("kind", "model")
    doc.setdefault("history", [])
    return doc


register_upgrader("model", 0, _model_v0_to_v1)


def write_training_metadata(folder: str | os.PathLike, meta: dict[str, Any]) -> Path:
    meta = dict(meta)
    meta["schema_version"] = MODEL_SCHEMA_VERSION
    meta.setdefault("kind", "model")
    return atomic_write_json(Path(folder) / TRAINING_METADATA_FILE, meta)


# --- the model-metadata document -------------------------------------------------------------

# Every model folder ftlab writes (training run, base snapshot, post-training quantization) carries
# these keys; `model_metadata` builds the document and `write_model_metadata` checks it on write.
MODEL_METADATA_KEYS = ("kind", "run_name", "name_fields", "base_model", "dataset", "method", "peft", "adapter_only",
                       "merged", "quantization", "history", "training_args", "results", "environment",
                       "created_at")
_MODEL_METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "run_name": (str,), "name_fields": (dict, type(None)), "base_model": (dict,), "dataset": (dict, str, type(None)),
    "method": (str, type(None)), "peft": (dict, type(None)), "adapter_only": (bool,), "merged": (bool,),
    "quantization": (dict,), "history": (list,), "training_args": (dict, type(None)), "results": (dict,),
    "environment": (dict,), "created_at": (str,),
}


def model_metadata(*, run_name: str, base_model: dict, quantization: dict, results: dict, dataset: dict | None = None,
                   method: str | None = None, peft: dict | None = None, adapter_only: bool = False,
                   merged: bool = False, history: list | None = None, training_args: dict | None = None,
                   **extra: Any) -> dict[str, Any]:
    """The model-metadata document of a folder named `run_name` (name fields parsed from it when it
    is a run name), stamped with this machine's environment and the time; `extra` adds
    kind-specific sections (oom_backoff, requested_config, source)."""

    try:
        name_fields = vars(parse_run_name(run_name))
    except FtlabError:
        name_fields = None
    return {
        "kind": "model", "run_name": run_name, "name_fields": name_fields, "base_model": base_model,
        "dataset": dataset, "method": method, "peft": peft, "adapter_only": adapter_only, "merged": merged,
        "quantization": quantization, "history": list(history or []), "training_args": training_args,
        "results": results, **extra, "environment": environment_info(), "created_at": now_iso(),
    }


def model_metadata_problems(meta: dict[str, Any]) -> list[str]:
    """What is missing or mistyped in a model-metadata document (empty when it is well formed)."""

    problems = [f"missing key {k!r}" for k in MODEL_METADATA_KEYS if k not in meta]
    for key, types in _MODEL_METADATA_TYPES.items():
        if key in meta and not isinstance(meta[key], types):
            problems.append(f"{key} is a {type(meta[key]).__name__}, expected {' or '.join(t.__name__ for t in types)}")
    if meta.get("kind", "model") != "model":
        problems.append(f"kind is {meta['kind']!r}, expected 'model'")
    if isinstance(meta.get("quantization"), dict):
        try:
            QuantizationSpec.from_dict(meta["quantization"])
        except (FtlabError, TypeError) as exc:
            problems.append(f"quantization: {exc}")
    return problems


def write_model_metadata(folder: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Checks a document built by `model_metadata` and writes it atomically as training_metadata.json."""
    problems = model_metadata_problems(meta)
    if problems:
        raise FtlabError(f"model metadata for {folder} is malformed (an ftlab bug): {'; '.join(problems)}")
    return write_training_metadata(folder, meta)


def load_training_metadata(folder: str | os.PathLike, required: bool = True) -> dict | None:
    path = Path(folder) / TRAINING_METADATA_FILE
    if not path.exists():
        if required:
            raise FtlabError(f"{folder} has no {TRAINING_METADATA_FILE}; it is not an ftlab model folder")
        return None
    return upgrade("model", read_json(path, "training metadata"), source=str(path))
