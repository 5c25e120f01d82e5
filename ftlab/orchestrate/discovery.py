"""Which model folders need an evaluation, and why.

A model needs one when its metrics are missing, incomplete (a partial samples file or a document
not marked complete), stale (written under another eval config hash or an older schema version),
or when an earlier attempt failed and the user asked to retry failures.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ftlab.config import EvalRunConfig, load_config
from ftlab.errors import FtlabError
from ftlab.io import read_json, read_jsonl
from ftlab.paths import Workspace
from ftlab.schema import TRAINING_METADATA_FILE

log = logging.getLogger(__name__)

# Reasons a model is (re-)evaluated; everything else is skipped.
MISSING, INCOMPLETE, STALE, FAILED = "missing", "incomplete", "stale", "failed"
RUN_REASONS = (MISSING, INCOMPLETE, STALE, FAILED)
# Reasons a model is skipped.
UP_TO_DATE, FAILED_EARLIER, BAD_FOLDER, BUSY = "up-to-date", "failed-earlier", "bad-folder", "busy"


@dataclass
class EvalOptions:
    """The `ftlab evaluate` options a sweep applies to every model, in evaluate's precedence:
    defaults < --config YAML < key=value overrides < the dedicated flags."""

    datasets: list[str] | None = None
    limit: int | None = None
    batch_size: int | None = None
    max_new_tokens: int | None = None
    config: str | None = None
    overrides: list[str] = field(default_factory=list)

    def all_overrides(self) -> list[str]:
        out = list(self.overrides)
        if self.datasets:
            out.append("eval.datasets=" + ",".join(self.datasets))
        if self.limit is not None:
            out.append(f"eval.limit={self.limit}")
        if self.batch_size is not None:
            out.append(f"eval.batch_size={self.batch_size}")
        if self.max_new_tokens is not None:
            out.append(f"eval.max_new_tokens={self.max_new_tokens}")
        return out

    def resolve(self, model_ref: str | os.PathLike | None = None) -> EvalRunConfig:
        """The config `ftlab evaluate <model_ref>` would run with; raises ConfigError early so a
        typo fails the sweep once instead of once per model."""
        cfg = load_config(EvalRunConfig, self.config, self.all_overrides())
        if model_ref is not None:
            cfg = copy.deepcopy(cfg)
            cfg.model.name = str(model_ref)
        return cfg

    def cli_args(self) -> list[str]:
        args: list[str] = []
        if self.config:
            args += ["--config", str(Path(self.config).resolve())]
        if self.datasets:
            args += ["--datasets", *self.datasets]
        if self.limit is not None:
            args += ["--limit", str(self.limit)]
        if self.batch_size is not None:
            args += ["--batch-size", str(self.batch_size)]
        if self.max_new_tokens is not None:
            args += ["--max-new-tokens", str(self.max_new_tokens)]
        # Overrides last: evaluate re-parses its tail, and the planner hashed exactly these.
        return [*args, *self.overrides]


@dataclass
class PlanItem:
    model: str
    folder: Path
    reason: str
    detail: str = ""

    @property
    def runs(self) -> bool:
        return self.reason in RUN_REASONS


def is_model_folder(path: Path) -> bool:
    # `.staging-*` (half-built by train/quantize) and other hidden folders are never models.
    return path.is_dir() and not path.name.startswith(".") and (path / TRAINING_METADATA_FILE).is_file()


def find_model_folders(workspace: Workspace) -> list[Path]:
    models = workspace.models_dir
    if not models.is_dir():
        return []
    return sorted((p for p in models.iterdir() if is_model_folder(p)), key=lambda p: p.name)


def error_path(workspace: Workspace, model: str) -> Path:
    return workspace.metrics_dir / f"{model}.error.json"


def _eval_api():
    from ftlab.eval.evaluator import eval_config_hash, metrics_paths

    return eval_config_hash, metrics_paths


def assess(workspace: Workspace, folder: Path, current_hash: str, *, retry_failed: bool = False,
           metrics_paths: Callable | None = None) -> PlanItem:
    """The plan entry for one model folder: why it runs or why it is skipped."""
    import ftlab.eval.documents  # noqa: F401  (registers the metrics upgraders)
    from ftlab.schema import CURRENT_VERSIONS, load_training_metadata, upgrade

    model = metrics_name(folder)
    if metrics_paths is None:
        metrics_paths = _eval_api()[1]
    try:
        load_training_metadata(folder)
    except FtlabError as exc:
        return PlanItem(model, folder, BAD_FOLDER, str(exc))
    json_path, samples_path = metrics_paths(workspace, model)
    json_path, samples_path = Path(json_path), Path(samples_path)
    if json_path.exists():
        try:
            raw = read_json(json_path, "metrics file")
            version = raw.get("schema_version") if isinstance(raw, dict) else None
            doc = upgrade("metrics", raw, source=f"metrics file {json_path}")
        except FtlabError as exc:
            return PlanItem(model, folder, STALE, f"metrics file unreadable ({exc})")
        if isinstance(version, int) and version < CURRENT_VERSIONS["metrics"]:
            return PlanItem(model, folder, STALE, f"metrics schema v{version} < v{CURRENT_VERSIONS['metrics']}")
        if doc.get("eval_config_hash") != current_hash:
            return PlanItem(model, folder, STALE,
                            f"eval config changed ({str(doc.get('eval_config_hash'))[:12]} -> {current_hash[:12]})")
        if doc.get("status", "complete") != "complete":
            return PlanItem(model, folder, INCOMPLETE, f"metrics status {doc.get('status')!r}")
        return PlanItem(model, folder, UP_TO_DATE, "metrics current")
    err = error_path(workspace, model)
    if err.exists():
        try:
            failure = read_json(err, "error report")
        except FtlabError:
            failure = {}
        same_config = failure.get("eval_config_hash") in (None, current_hash)
        if same_config:
            line = str(failure.get("error", "unknown error"))[:160]
            if retry_failed:
                return PlanItem(model, folder, FAILED, f"retrying: {line}")
            return PlanItem(model, folder, FAILED_EARLIER, f"{line} (pass --retry-failed to retry)")
        # A failure under another config says nothing about this one.
    lines = read_jsonl(samples_path)
    if lines:
        current = sum(1 for r in lines if isinstance(r, dict) and r.get("eval_config_hash") == current_hash)
        if current:
            return PlanItem(model, folder, INCOMPLETE, f"{current} samples done, resuming")
        return PlanItem(model, folder, INCOMPLETE, f"{len(lines)} samples from another eval config, redoing")
    return PlanItem(model, folder, MISSING, "no metrics")


def plan_sweep(workspace: Workspace, options: EvalOptions, *, retry_failed: bool = False,
               only: list[str] | None = None) -> list[PlanItem]:
    """Every model folder under Models/ with its reason; `only` restricts to named models."""
    eval_config_hash, metrics_paths = _eval_api()
    folders = find_model_folders(workspace)
    if only:
        names = {p.name for p in folders}
        unknown = [m for m in only if m not in names]
        if unknown:
            raise FtlabError(f"--model {', '.join(unknown)} is not a model folder under {workspace.models_dir}"
                             f"; found: {', '.join(sorted(names)) or 'none'}")
        folders = [p for p in folders if p.name in set(only)]
    items = []
    for folder in folders:
        current = eval_config_hash(options.resolve(model_ref_for(folder)))
        items.append(assess(workspace, folder, current, retry_failed=retry_failed, metrics_paths=metrics_paths))
    return items


def metrics_name(folder: Path) -> str:
    """The name `ftlab evaluate <folder>` files its metrics under (the folder name for every
    folder ftlab creates; sanitised for hand-made folders with unusual characters)."""
    from ftlab.eval.evaluator import model_file_name

    return model_file_name(model_ref_for(folder))


def model_ref_for(folder: Path) -> str:
    """The reference passed to `ftlab evaluate` and hashed: the absolute folder path, identical
    in the planner and in the worker process wherever each runs."""
    return str(folder.resolve())
