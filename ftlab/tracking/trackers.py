"""The trackers by name (`ftlab.kinds.tracking.TRACKER_NAMES` lists the names) and `sync`, the one
way runs reach them.

A `Sync` logs each piece of work as it finishes (`Sync.log`) and, at the end, every finished one
that has no complete run yet, found by its key (a job's id): a catch-up, so a run after an outage
logs what the last one missed. It runs in the driver, never inside a job, and any failure of the
tracker (down, refused, misconfigured) is one warning line: the results on disk are untouched."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ftlab.config import TrackingConfig
from ftlab.errors import FtlabError
from ftlab.kinds.tracking import TRACKER_NAMES
from ftlab.paths import Workspace
from ftlab.registry import Registry
from ftlab.tracking.base import RunRecord, Session, Tracker
from ftlab.tracking.mlflow_tracker import MlflowTracker
from ftlab.tracking.wandb_tracker import WandbTracker

log = logging.getLogger(__name__)

TRACKERS: Registry[Tracker] = Registry("tracker")
TRACKERS.add("mlflow", MlflowTracker())
TRACKERS.add("wandb", WandbTracker())


@dataclass
class Synced:
    tracker: str
    logged: int  # runs logged by this sync
    present: int  # runs that were already there


class Sync:
    """One sync with a tracker: `log` one run as soon as its work finished, `finish` with every run
    still missing and the parent's artifacts. The tracker is opened on first use; its first failure
    is one warning line and ends this sync (later calls do nothing), so a dead tracker costs one
    timeout, not one per job."""

    def __init__(self, settings: TrackingConfig, workspace: Workspace, experiment: str, parent: RunRecord | None):
        self.settings, self.workspace, self.experiment, self.parent = settings, workspace, experiment, parent
        self.name = TRACKER_NAMES.canonical(settings.to)
        self.where = settings.uri or ("the local store" if self.name == "mlflow" else "W&B")
        self.failed = False
        self.logged = 0
        self.skipped = 0
        self._session: Session | None = None
        self._handle = None

    def _open(self) -> Session:
        if self._session is None:
            session = TRACKERS.get(self.name).open(self.settings, self.workspace, self.experiment)
            self._handle = session.parent(self.parent) if self.parent is not None else None
            self._session = session
        return self._session

    def _guard(self, step: Callable[[], None]) -> bool:
        if self.failed:
            return False
        try:
            step()
            return True
        except Exception as exc:  # a tracker never fails a job: its results are on disk, the next run logs them
            self.failed = True
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            log.warning(f"tracking to {self.name} ({self.where}) failed, results are kept and the next run logs "
                        f"them: {type(exc).__name__}{': ' + first if first else ''}")
            return False

    def _record(self, key: str, build: Callable[[], RunRecord | None]) -> RunRecord | None:
        """The run's record; one whose files cannot be read (removed, damaged) is skipped with a
        warning, not the end of the sync: the others are still logged."""
        try:
            return build()
        except (FtlabError, OSError, ValueError, KeyError, TypeError) as exc:
            self.skipped += 1
            log.warning(f"tracking: {key} not logged, its results could not be read: {type(exc).__name__}: {exc}")
            return None

    def log(self, key: str, build: Callable[[], RunRecord | None]) -> None:
        """One run, unless its key has a complete run already."""

        def step() -> None:
            session = self._open()
            if key not in session.logged(self._handle, [key]):
                record = self._record(key, build)
                if record is not None:
                    session.log(record, self._handle)
                    self.logged += 1

        self._guard(step)

    def finish(self, children: Sequence[tuple[str, Callable[[], RunRecord | None]]],
               files: Sequence[Path] = ()) -> Synced | None:
        """Every child (key, builder) without a complete run (a builder returning None is
        skipped), then `files` as the parent's artifacts. None when the tracker failed."""
        present: set[str] = set()

        def step() -> None:
            session = self._open()
            present.update(session.logged(self._handle, [key for key, _ in children]))
            for key, build in children:
                if key not in present:
                    record = self._record(key, build)
                    if record is not None:
                        session.log(record, self._handle)
                        self.logged += 1
            if self.parent is not None:
                session.attach(self._handle, self.parent, [Path(f) for f in files if Path(f).is_file()])
            session.close()

        if not self._guard(step):
            return None
        there = len(children) - self.logged - self.skipped
        log.info(f"tracking: {self.logged} run(s) logged to {self.name} ({self.where}), {there} already there")
        return Synced(self.name, self.logged, there)


def sync(settings: TrackingConfig, workspace: Workspace, experiment: str, *, parent: RunRecord | None,
         children: Sequence[tuple[str, Callable[[], RunRecord | None]]], files: Sequence[Path] = ()) -> Synced | None:
    """Logs `parent` (found again by its key, else created), then each child without a complete run,
    then `files` as the parent's artifacts (`Sync.finish`); None when tracking is off or failed."""
    if not settings.on:
        return None
    return Sync(settings, workspace, experiment, parent).finish(children, files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--track NAME` and `--track-uri URI` (a command turns them into `tracking.*` overrides)."""
    parser.add_argument("--track", default=None, metavar="NAME",
                        help=f"log the runs to an experiment tracker: {', '.join(TRACKER_NAMES.names())} "
                             "(needs the `track` extra)")
    parser.add_argument("--track-uri", default=None, metavar="URI",
                        help="mlflow: tracking server (default: a local store in Testing/tracking/); "
                             "wandb: server base URL")


def overrides(args: argparse.Namespace) -> list[str]:
    """The `tracking.*` overrides the flags ask for (after the user's own, so the flags win)."""
    out = []
    if getattr(args, "track", None):
        out.append(f"tracking.to={args.track}")
    if getattr(args, "track_uri", None):
        out.append(f"tracking.uri={args.track_uri}")
    return out

