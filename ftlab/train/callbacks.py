"""Trainer callbacks: a progress bar that shows the loss beside its ETA."""

from __future__ import annotations

import logging
import math

from transformers.trainer_callback import ProgressCallback

log = logging.getLogger(__name__)


def add_perplexity(logs: dict) -> dict:
    """exp(loss) beside every loss; capped so a diverged run logs a number, not an overflow."""
    for key, out in (("loss", "perplexity"), ("eval_loss", "eval_perplexity")):
        value = logs.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            logs[out] = math.exp(min(value, 50.0))
    return logs


class LossProgressCallback(ProgressCallback):
    """tqdm bar (steps, ETA) with the latest loss/eval loss as postfix; log lines go to logging,
    not stdout, so scripts that parse stdout stay clean."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        shown = {}
        for key in ("loss", "eval_loss", "learning_rate"):
            value = logs.get(key)
            if isinstance(value, (int, float)):
                shown[key.replace("learning_rate", "lr")] = f"{value:.3g}"
        if self.training_bar is not None and shown:
            self.training_bar.set_postfix(shown, refresh=False)
        simple = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in logs.items()}
        log.info("step %s: %s", state.global_step, simple)
