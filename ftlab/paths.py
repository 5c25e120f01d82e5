"""Where the platform's folders live: Models/, Datasets/, Testing/metrics/ under one root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def default(cls) -> "Workspace":
        return cls(Path(os.environ.get("FTLAB_HOME") or os.getcwd()).resolve())

    @classmethod
    def at(cls, root: str | os.PathLike | None) -> "Workspace":
        return cls.default() if root is None else cls(Path(root).resolve())

    @property
    def models_dir(self) -> Path:
        return self.root / "Models"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "Datasets"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "Testing" / "metrics"

    def metrics_files(self, model: str) -> "MetricsFiles":
        return MetricsFiles.of(self.metrics_dir, model)

    @property
    def jobs_dir(self) -> Path:
        """The job engine's ledger and journal (ftlab.jobs), shared by studies and sweeps."""
        return self.root / "Testing" / ".jobs"

    @property
    def studies_dir(self) -> Path:
        return self.root / "Testing" / "studies"

    @property
    def tracking_dir(self) -> Path:
        """Experiment trackers' local files (ftlab.tracking): the embedded MLflow store, W&B run files."""
        return self.root / "Testing" / "tracking"

    @property
    def summary_csv(self) -> Path:
        return self.root / "Testing" / "metrics_summary.csv"


@dataclass(frozen=True)
class MetricsFiles:
    """The files one evaluated model keeps in Testing/metrics/ (docs/ARCHITECTURE.md): its metrics
    document, its per-sample lines, the answers to lm-eval requests it has computed (reused on a
    rerun), and the error report of a failed evaluation job."""

    metrics: Path
    samples: Path
    requests: Path
    error: Path

    SUFFIXES = {"metrics": ".json", "samples": ".samples.jsonl", "requests": ".requests.jsonl", "error": ".error.json"}

    @classmethod
    def of(cls, metrics_dir: Path, model: str) -> "MetricsFiles":
        return cls(**{field: Path(metrics_dir) / f"{model}{suffix}" for field, suffix in cls.SUFFIXES.items()})

    @classmethod
    def other_suffixes(cls) -> tuple[str, ...]:
        """The suffixes of a model's files other than its metrics document."""
        return tuple(suffix for field, suffix in cls.SUFFIXES.items() if field != "metrics")

    def all(self) -> tuple[Path, ...]:
        return tuple(getattr(self, field) for field in self.SUFFIXES)


def cache_dir() -> Path:
    """ftlab's cache (converted offline models): $FTLAB_CACHE or ~/.cache/ftlab."""
    return Path(os.environ.get("FTLAB_CACHE") or Path.home() / ".cache" / "ftlab")
