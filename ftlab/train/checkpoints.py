"""Checkpoints of a run in progress: where they live, whose they are (a fingerprint of the settings
that change the optimisation), and which one a restarted run resumes from."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from ftlab.config import AFTER_TRAINING, RUN_ONLY, TrainRunConfig, config_to_dict, config_without, keys_with_effect
from ftlab.errors import FtlabError
from ftlab.io import atomic_write_json
from ftlab.paths import Workspace

log = logging.getLogger(__name__)

CHECKPOINTS_DIRNAME = ".checkpoints"
RUN_FINGERPRINT_FILE = "ftlab_run.json"
# Settings that do not change the optimisation (marked on the config fields); a checkpoint stays
# valid when only these differ.
NON_TRAINING_KEYS = keys_with_effect(TrainRunConfig, RUN_ONLY, AFTER_TRAINING)


def checkpoint_dir_for(workspace: Workspace, name: str) -> Path:
    return workspace.models_dir / CHECKPOINTS_DIRNAME / name


def training_fingerprint(cfg: TrainRunConfig) -> str:
    d = config_without(cfg, NON_TRAINING_KEYS)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- checkpoints -----------------------------------------------------------------------------


def resume_checkpoint(cfg: TrainRunConfig, ckpt_dir: Path, is_main: bool) -> str | None:
    """The checkpoint to resume from (`train.resume`), after checking it belongs to this config."""
    mode = cfg.train.resume
    if mode == "never":
        return None
    if mode != "auto":
        path = Path(mode).expanduser()
        if not (path / "trainer_state.json").is_file():
            raise FtlabError(f"train.resume={mode} is not a checkpoint folder (no trainer_state.json); "
                             "use auto, never or a checkpoint-<step> folder")
        return str(path)
    if not ckpt_dir.is_dir():
        return None
    fp_file = ckpt_dir / RUN_FINGERPRINT_FILE
    expected = training_fingerprint(cfg)
    try:
        found = json.loads(fp_file.read_text()).get("fingerprint")
    except (OSError, ValueError):
        found = None
    if found != expected:
        if is_main and any(ckpt_dir.glob("checkpoint-*")):
            log.warning("checkpoints in %s come from different settings; starting from scratch", ckpt_dir)
        return None
    last = newest_complete_checkpoint(ckpt_dir)
    if last:
        log.info("resuming from %s", last)
    return last


def newest_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """Trainer writes trainer_state.json last, so a checkpoint without a readable one was cut
    short by the crash; fall back to the one before it."""
    found = []
    for path in ckpt_dir.glob("checkpoint-*"):
        step = path.name.split("-", 1)[1]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log.warning("skipping incomplete checkpoint %s", path)
    return None


def prepare_checkpoint_dir(cfg: TrainRunConfig, ckpt_dir: Path, resume: str | None) -> None:
    if resume is None and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # stale checkpoints of other settings or 'never'
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ckpt_dir / RUN_FINGERPRINT_FILE, {"fingerprint": training_fingerprint(cfg),
                                                        "config": config_to_dict(cfg)})
