"""`ftlab train`: fine-tune or pre-train from a YAML config and `key=value` overrides."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ftlab.cli import SUMMARY, guarded, setup_logging
from ftlab.config import TrainRunConfig, describe_config, load_config
from ftlab.kinds.peft import PEFT_NAMES
from ftlab.paths import Workspace
from ftlab.train.runner import run_training

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML file with model:, data:, peft:, quant:, train: sections")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its default and doc")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. peft.method=DoRa peft.r=8 train.max_steps=50 "
                             f"(peft.method: {', '.join(PEFT_NAMES.names())}; --help-config lists every key)")


def load_train_config(config: str | None, overrides: list[str], base: dict | None = None, overwrite: bool = False):
    overrides = list(overrides) + (["train.overwrite=true"] if overwrite else [])
    return load_config(TrainRunConfig, config, overrides, base=base)


def run(args: argparse.Namespace, base: dict | None = None) -> int:
    if getattr(args, "help_config", False):
        print("\n".join(describe_config(TrainRunConfig)))
        return 0

    cfg = load_train_config(args.config, args.overrides, base=base, overwrite=args.overwrite)
    folder = run_training(cfg, Workspace.default())
    print(folder)
    return 0


def main_script(base: dict, argv: list[str] | None = None, prog: str = "01_Train.py") -> int:
    """Entry for `Fine-tuning/01_Train.py`: its edit block is `base`; the command line may add
    `--config FILE` and `key=value` overrides on top. Errors print one line and exit 2, like `ftlab`."""


    parser = argparse.ArgumentParser(prog=prog, description=SUMMARY["train"])
    parser.add_argument("--workdir", default=None, help="workspace root (default: $FTLAB_HOME or the current folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    add_arguments(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging(args.verbose, args.quiet)
    if args.workdir:
        os.environ["FTLAB_HOME"] = os.path.abspath(args.workdir)
    return guarded(lambda: run(args, base=base))
