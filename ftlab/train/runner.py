"""`run_training(cfg, workspace) -> Path`: one fine-tuning / pre-training run into `Models/<run name>/`.

The recipe, top to bottom: resolve (model source, run name, output folder, device checks) -> load
the data -> claim the output -> train (one attempt per setting the OOM back-off tries; the model
loads inside it) -> write the folder (staged, then renamed into place). The config was validated
before this runs (model-free rules in TrainRunConfig.validate).

Where each step lives: settings.py (precision, QLoRA spec, names), checkpoints.py (fingerprint,
resume), attempt.py (load the model, build the trainer, train), oom.py (the back-off loop),
output.py (metadata, card, atomic publish). Checkpoints live in `Models/.checkpoints/<output
folder name>/` so a killed run resumes from the newest one; they are deleted once the folder is in
place.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

from ftlab.config import TrainRunConfig
from ftlab.env import set_threads
from ftlab.errors import FtlabError
from ftlab.jobs.locks import output_claim
from ftlab.models.sources import load_model, resolve_model
from ftlab.paths import Workspace
from ftlab.train.attempt import train_once
from ftlab.train.checkpoints import checkpoint_dir_for
from ftlab.train.compat import ensure_peft_usable
from ftlab.train.data import load_train_data
from ftlab.train.oom import train_with_backoff
from ftlab.train.output import write_folder, write_snapshot
from ftlab.train.ranks import barrier, is_main
from ftlab.train.settings import check_can_run, final_dir_for, run_name

log = logging.getLogger(__name__)


def run_training(cfg: TrainRunConfig, workspace: Workspace, *, callbacks: Sequence[Any] = ()) -> Path:
    """Trains (or snapshots) as `cfg` says and returns the finished model folder.

    `callbacks` are extra `transformers.TrainerCallback`s (progress hooks, tests injecting faults).
    """

    # resolve
    if cfg.train.threads:
        set_threads(cfg.train.threads)
    source = resolve_model(cfg.model.name, workspace, revision=cfg.model.revision)
    if cfg.data.dataset is None:
        return save_base_snapshot(cfg, workspace, source)
    name = run_name(cfg, source.base_name)
    final_dir = check_can_run(cfg, workspace, name)
    # load the data
    data = load_train_data(cfg, workspace)
    log.info("run %s: %d training rows, %d held out", name, len(data.train_rows), len(data.val_rows))
    # Keyed by the output folder, not the run name: study variants of one run name (seeds, learning
    # rates) may train at the same time and must not share checkpoints.
    ckpt_dir = checkpoint_dir_for(workspace, final_dir.name)
    main = is_main()
    with contextlib.ExitStack() as claims:
        # A second `ftlab train` aiming at the same folder fails here, before training. Only the
        # output folder is claimed: checkpoints are keyed by it too, and claiming the run name as
        # well made two seeds of one recipe (same name, own train.output_dir) refuse each other.
        if main:
            claims.enter_context(output_claim(final_dir))
        ensure_peft_usable()  # imports peft (seconds): after every cheap check and the claim
        return _train_and_publish(cfg, workspace, source, data, name, final_dir, ckpt_dir, callbacks, main)


def _train_and_publish(cfg: TrainRunConfig, workspace: Workspace, source, data, name: str, final_dir: Path,
                       ckpt_dir: Path, callbacks: Sequence[Any], main: bool) -> Path:
    def drop_checkpoints() -> None:
        if main and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # its checkpoints belong to the old settings

    # train (the model loads inside each attempt)
    outcome, final_cfg, attempts = train_with_backoff(
        cfg, lambda settings: train_once(settings, source, data, ckpt_dir, workspace, callbacks, main),
        on_retry=drop_checkpoints)
    final_name = run_name(final_cfg, source.base_name)
    if final_name != name and not cfg.train.output_dir:
        final_dir = final_dir_for(final_cfg, workspace, final_name)
        log.warning("OOM back-off changed the run's name to %s", final_name)
    # write
    if main:
        write_folder(outcome, cfg, source, data, workspace, final_dir, final_name, ckpt_dir, attempts)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            ckpt_dir.parent.rmdir()  # only when no other run's checkpoints remain
        log.info("saved %s", final_dir)
    barrier()
    return final_dir


def save_base_snapshot(cfg: TrainRunConfig, workspace: Workspace, source) -> Path:
    """`data.dataset=None`: the untrained base saved as `<base>-base` (the evaluation baseline)."""

    if cfg.quant.method != "NoQuant":
        raise FtlabError(f"a base snapshot (data.dataset=None) is not trained, so quant.method={cfg.quant.method} has no "
                         "meaning; set quant.method=NoQuant (quantize snapshots with `ftlab quantize`)")
    name = run_name(cfg, source.base_name)
    final_dir = final_dir_for(cfg, workspace, name)
    if final_dir.exists() and not cfg.train.overwrite:
        raise FtlabError(f"output folder {final_dir} already exists; set train.overwrite=true to replace it")
    if not is_main():
        barrier()
        return final_dir
    model, tok, _ = load_model(source, workspace=workspace, dtype=cfg.model.dtype,
                               trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision,
                               seed=cfg.train.seed)
    write_snapshot(cfg, model, tok, source, final_dir, name)
    barrier()
    log.info("saved base snapshot %s", final_dir)
    return final_dir
