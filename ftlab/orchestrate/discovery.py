"""Which model folders need an evaluation, and why — task by task.

Results are kept per task (ftlab.eval.records.results): a model needs an evaluation when a requested task
has no result yet (missing; incomplete when a run was interrupted), when a task's stored result was
made under other settings (stale: another prompt, limit, token cap, scoring rule, ...; the detail
names the task and the setting), or when an earlier attempt failed and the user asked to retry
failures. Tasks evaluated before but not requested now are kept and never make a model stale.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftlab.config import EvalRunConfig, load_config
from ftlab.errors import FtlabError
from ftlab.eval.records.results import NOT_EVALUATED, SampleStore, request_hash, stale_tasks
from ftlab.io import read_json
from ftlab.paths import Workspace
from ftlab.schema import TRAINING_METADATA_FILE, load_training_metadata

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
    expected: dict = field(default_factory=dict)  # task key -> settings the evaluation will store

    @property
    def request_hash(self) -> str:
        return request_hash(self.expected)

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
    return workspace.metrics_files(model).error


def _describe(stale: dict[str, str]) -> str:
    return "; ".join(f"{key}: {why}" for key, why in stale.items())


def assess(workspace: Workspace, folder: Path, cfg: EvalRunConfig, *, retry_failed: bool = False) -> PlanItem:
    """The plan entry for one model folder: why it runs or why it is skipped. `cfg` is the config
    `ftlab evaluate <folder>` would run with."""
    from ftlab.eval.evaluator import expected_settings, metrics_paths  # lazy: ftlab.eval.evaluator imports numpy
    from ftlab.eval.records.documents import load_metrics_document  # lazy: ftlab.eval.records.documents imports numpy

    model = metrics_name(folder)
    try:
        load_training_metadata(folder)
    except FtlabError as exc:
        return PlanItem(model, folder, BAD_FOLDER, str(exc))
    expected = expected_settings(cfg)

    def item(reason: str, detail: str) -> PlanItem:
        return PlanItem(model, folder, reason, detail, expected)

    json_path, samples_path = (Path(p) for p in metrics_paths(workspace, model))
    try:
        doc = load_metrics_document(json_path, missing_ok=True)
    except FtlabError as exc:
        return item(STALE, f"metrics file unreadable ({exc})")
    stale = stale_tasks(doc, expected)
    if not stale:
        return item(UP_TO_DATE, f"every task current ({', '.join(expected)})")
    err = error_path(workspace, model)
    if err.exists():
        try:
            failure = read_json(err, "error report")
        except FtlabError:
            failure = {}
        # A failure under another request (other tasks or settings) says nothing about this one.
        if failure.get("request_hash", request_hash(expected)) == request_hash(expected):
            line = str(failure.get("error", "unknown error"))[:160]
            if retry_failed:
                return item(FAILED, f"retrying: {line}")
            return item(FAILED_EARLIER, f"{line} (pass --retry-failed to retry)")
    changed = {k: why for k, why in stale.items() if why != NOT_EVALUATED}
    if changed:
        return item(STALE, _describe(changed))
    done = SampleStore.read(samples_path, doc).count({k: expected[k] for k in stale})
    if doc is not None and doc.get("status") != "complete":
        return item(INCOMPLETE, f"interrupted run: {', '.join(stale)} not finished ({done} samples done, resuming)")
    if done:
        return item(INCOMPLETE, f"{', '.join(stale)}: {done} samples done, resuming")
    return item(MISSING, f"{', '.join(stale)} not evaluated yet" if doc is not None else "no metrics")


def plan_sweep(workspace: Workspace, options: EvalOptions, *, retry_failed: bool = False,
               only: list[str] | None = None) -> list[PlanItem]:
    """Every model folder under Models/ with its reason; `only` restricts to named models."""
    folders = find_model_folders(workspace)
    if only:
        names = {p.name for p in folders}
        unknown = [m for m in only if m not in names]
        if unknown:
            raise FtlabError(f"--model {', '.join(unknown)} is not a model folder under {workspace.models_dir}"
                             f"; found: {', '.join(sorted(names)) or 'none'}")
        folders = [p for p in folders if p.name in set(only)]
    return [assess(workspace, folder, options.resolve(model_ref_for(folder)), retry_failed=retry_failed)
            for folder in folders]


def metrics_name(folder: Path) -> str:
    """The name `ftlab evaluate <folder>` files its metrics under (the folder name for every
    folder ftlab creates; sanitised for hand-made folders with unusual characters)."""
    from ftlab.eval.evaluator import model_file_name  # lazy: ftlab.eval.evaluator imports numpy

    return model_file_name(model_ref_for(folder))


def model_ref_for(folder: Path) -> str:
    """The reference passed to `ftlab evaluate` and hashed: the absolute folder path, identical
    in the planner and in the worker process wherever each runs."""
    return str(folder.resolve())
