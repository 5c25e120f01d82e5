"""What reaches the console: ftlab's own log lines and progress bars, and one `error:` line on failure.

Third-party libraries print things that say nothing about the user's run: gptqmodel's banner and
GIL/environment advice, torch's `_pytree` registration notices and missing-CUDA note, transformers'
and peft's `FutureWarning`/`DeprecationWarning`s, bitsandbytes' missing-kernel warning, datasets'
per-map progress bars. Without `-v` they are silenced here, once, before any of them is imported;
`-v` shows everything (and debug logging). transformers' own warnings (such as weights missing from
a checkpoint) are kept: they describe the user's model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from typing import Iterator

VERBOSE = False
# Read by each library when it is imported; setdefault leaves a user's own choice alone.
_QUIET_ENV = {
    "TORCH_LOGS": "-all",  # torch's internal loggers (e.g. torch.utils._pytree) at ERROR
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # "Tokenizing train dataset" and friends
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    # huggingface_hub sets its own logger to WARNING: offline, every hub request printed five
    # "Retrying in Ns" lines above ftlab's one-line error (measured on `ftlab evaluate ... arc:ll`).
    "HF_HUB_VERBOSITY": "error",
    # Experiment trackers (`--track`, train.report_to): MLflow's INFO lines (creating its tables,
    # "View run at ...") and W&B's banner, sync hints and run summary.
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "WANDB_SILENT": "true",
}
FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup(verbose: bool = False, quiet: bool = False) -> None:
    """ftlab's loggers at INFO (WARNING with -q, DEBUG with -v); everything else at ERROR unless -v."""
    global VERBOSE
    VERBOSE = verbose
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
    logging.getLogger("ftlab").setLevel(level)
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
        return
    logging.getLogger().setLevel(logging.ERROR)
    quiet_libraries()


def quiet_libraries() -> None:
    """Third-party noise off at its source: the variables libraries read when imported (a user's own
    setting is left alone) and Python warnings (ftlab reports through logging, never `warnings`, so
    every one is a library's). Also used by the job zygote before its imports."""
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.simplefilter("ignore")


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Swallows what a library prints straight to stdout/stderr while the block runs (gptqmodel's
    import banner goes through its own logger to sys.stdout); a no-op with -v."""
    if VERBOSE:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
