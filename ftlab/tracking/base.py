"""What a tracker logs: `RunRecord` (one run: its key, params, metrics, tags), the `Tracker`
interface each backend implements, and the readers that turn ftlab's own files (a training curve,
a metrics document) into metrics."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

from ftlab.config import TrackingConfig, dotted
from ftlab.paths import Workspace

KEY_TAG = "ftlab_key"  # every run's identity (a job id, a study's name): how a rerun finds it
ROLE_TAG = "kind"  # "study" (a parent), or the job's kind, or "evaluation"


@dataclass
class RunRecord:
    key: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[tuple[str, float, int | None]] = field(default_factory=list)  # (name, value, step)
    tags: dict[str, str] = field(default_factory=dict)

    def all_tags(self) -> dict[str, str]:
        return {**{k: str(v) for k, v in self.tags.items()}, KEY_TAG: self.key}


class Session(Protocol):
    """One connection to a tracker, for one experiment (an MLflow experiment, a W&B project)."""

    def parent(self, record: RunRecord) -> Any:
        """The parent run of `record.key`, found again or created; a handle for the calls below."""

    def logged(self, parent: Any, keys: list[str]) -> set[str]:
        """Those of `keys` that already have a complete run (under `parent`, or at top level when None)."""

    def log(self, record: RunRecord, parent: Any) -> None:
        """One complete run (a child of `parent` unless None)."""

    def attach(self, parent: Any, record: RunRecord, files: list[Path]) -> None:
        """Files as the parent's artifacts, and its params (replacing earlier ones)."""

    def close(self) -> None:
        ...


class Tracker(Protocol):
    name: str

    def open(self, settings: TrackingConfig, workspace: Workspace, experiment: str) -> Session:
        ...


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (`train.learning_rate`) for a tracker's params; lists and
    empty mappings stay values."""
    return dotted(tree, prefix, keep_empty=True)


def number(value: Any) -> float | None:
    """A finite float, or None (bools, strings, NaN and missing values are not metrics)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def metric_name(name: str) -> str:
    """A name every tracker accepts (letters, digits, `_-./ `)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def curve_metrics(log_history: Iterable[dict]) -> list[tuple[str, float, int | None]]:
    """A training run's curve (Trainer's log_history): every number at its step."""
    out = []
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            if key != "step" and number(value) is not None:
                out.append((metric_name(key), number(value), int(step) if isinstance(step, int) else None))
    return out


def result_metrics(results: dict | None, prefix: str = "results") -> list[tuple[str, float, int | None]]:
    """The numbers of a model folder's metadata `results` (final loss, runtime, ...)."""
    return [(metric_name(k), number(v), None) for k, v in flatten(results or {}, prefix).items() if number(v) is not None]


def evaluation_metrics(doc: dict) -> list[tuple[str, float, int | None]]:
    """A metrics document's numbers: `<task>.<metric>` per task, `<task>.<metric>.ci_low/ci_high`
    for each interval, and the summary's."""
    out = []
    for task, block in (doc.get("datasets") or {}).items():
        for key, value in (block.get("metrics") or {}).items():
            if number(value) is not None:
                out.append((metric_name(f"{task}.{key}"), number(value), None))
        for key, bounds in (block.get("intervals") or {}).items():
            if isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(number(b) is not None for b in bounds):
                out += [(metric_name(f"{task}.{key}.ci_low"), float(bounds[0]), None),
                        (metric_name(f"{task}.{key}.ci_high"), float(bounds[1]), None)]
        for key in ("n", "format_success_rate", "cut_off_rate", "samples_per_s"):
            if number(block.get(key)) is not None:
                out.append((metric_name(f"{task}.{key}"), number(block[key]), None))
    for key, value in (doc.get("summary") or {}).items():
        if number(value) is not None:
            out.append((metric_name(f"summary.{key}"), number(value), None))
    return out
