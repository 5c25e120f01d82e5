"""Registered experiment trackers: where `ftlab evaluate --track` and `ftlab study run --track` log
their runs (`tracking.to`), the Python package each needs and the extra that installs it.

Each name's behaviour (how a run is found, logged and given artifacts) is one
`ftlab.tracking.trackers.Tracker` in `ftlab.tracking.trackers.TRACKERS`; `tests/kinds/test_kinds.py`
checks the two lists are equal.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ftlab.registry import Registry

NONE = "none"
EXTRA = "track"  # [project.optional-dependencies] track: mlflow-skinny (+ its sqlite store) and wandb


@dataclass(frozen=True)
class TrackerName:
    name: str
    package: str  # the module the tracker imports
    doc: str

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def missing(self) -> str:
        """The one line saying how to install the package (empty when it is installed)."""
        if self.installed():
            return ""
        return (f"tracking to {self.name} needs the {self.package} package: pip install 'ftlab[{EXTRA}]' "
                f"(or uv sync --extra {EXTRA})")


TRACKER_NAMES: Registry[TrackerName] = Registry("tracker")
TRACKER_NAMES.add("mlflow", TrackerName("mlflow", "mlflow", "MLflow: a local store in the workspace, or a server (tracking.uri)"))
TRACKER_NAMES.add("wandb", TrackerName("wandb", "wandb", "Weights & Biases (WANDB_MODE=offline keeps runs on disk)"))


def tracker_problems(name: str | None) -> list[str]:
    """Problems with `tracking.to` (an unknown name lists the valid ones; a missing package names the extra)."""
    if name in (None, "", NONE):
        return []
    if name not in TRACKER_NAMES:
        valid = ", ".join([NONE, *TRACKER_NAMES.names()])
        return [f"tracking.to={name!r} is not a tracker; valid: {valid}"]
    missing = TRACKER_NAMES.get(name).missing()
    return [missing] if missing else []
