"""The `ftlab` console command: the command framework (parser, error guard, signals). `ftlab X` is
the module `ftlab/commands/X.py` (add_arguments(parser), run(args) -> int), imported only when that
command runs, so `ftlab --help` and light commands do not pay for torch/transformers imports."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from ftlab import console
from ftlab.errors import FtlabError

# Each command's one-line help, the only copy: `ftlab --help` shows it without importing each
# module, and a module that needs its own description (a script's parser) reads it from here.
SUMMARY: dict[str, str] = {
    "train": "fine-tune (SFT: NoPeft, LoRA, rsLoRA, DoRA, VeRA, PiSSA, OLoRA, LoftQ; QLoRA) or pre-train a scratch model",
    "quantize": "post-training quantization of a model folder: GPTQ, AWQ, HQQ, bitsandbytes (BNB_NF4, BNB_INT8), GGUF",
    "export": "export a model folder as GGUF (llama.cpp, Ollama) with its tokenizer, chat template and a Modelfile",
    "evaluate": "evaluate one model (boxed answers, log-likelihood, perplexity) into Testing/metrics/<model>.json; "
                "results accumulate per task; resumable",
    "orchestrate": "evaluate every model under Models/ whose metrics are missing, incomplete, stale (or failed); "
                   "crash-safe sweep",
    "study": "plan, run and report a study: a grid of train x quantize x evaluate jobs ending in a recipe-level verdict",
    "compare": "compare evaluated models: tables, deltas vs baseline, recovery vs source, paired significance tests, "
               "CSV, plots",
    "score": "recompute a task's metrics from a JSONL of raw responses ({\"response\": ..., \"answer\": ...} per line)",
    "datasets": "list, prepare and validate datasets",
    "models": "list built-in offline models and the model folders under Models/",
    "chat": "answer one prompt with a model",
    "demo": "a small study offline on the built-in SmolLM2 model: fine-tune, quantize, evaluate, verdict",
    "doctor": "print the environment: torch, devices, engines, offline models, datasets, disk",
}

# name -> the module that implements it: one naming rule, `ftlab/commands/<name>.py`.
COMMANDS: dict[str, str] = {name: f"ftlab.commands.{name}" for name in SUMMARY}


def build_parser(with_subcommands: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftlab", description="Fine-tune, quantize and evaluate LLMs with numbers you can trust.")
    parser.add_argument("--workdir", default=None,
                        help="workspace root holding Models/, Datasets/, Testing/ (default: $FTLAB_HOME or the current folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in SUMMARY.items():
        p = sub.add_parser(name, help=summary, description=summary)
        if name in with_subcommands:
            module = importlib.import_module(COMMANDS[name])
            module.add_arguments(p)
    return parser


def setup_logging(verbose: bool, quiet: bool) -> None:
    console.setup(verbose, quiet)


def _hoist_workdir(argv: list[str]) -> list[str]:
    """`--workdir` is accepted anywhere (`ftlab train --workdir X`, the numbered scripts)."""
    out, front, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--workdir" and i + 1 < len(argv):
            front += [a, argv[i + 1]]
            i += 2
            continue
        if a.startswith("--workdir="):
            front.append(a)
        else:
            out.append(a)
        i += 1
    return front + out


def main(argv: list[str] | None = None) -> int:
    argv = _hoist_workdir(list(sys.argv[1:] if argv is None else argv))
    # Before any library is imported (parsing imports the chosen command's module): third-party
    # noise is switched off at its source, unless -v asks for it.
    setup_logging("-v" in argv or "--verbose" in argv, "-q" in argv or "--quiet" in argv)
    # Only the chosen subcommand's module is imported (its arguments are needed to parse).
    chosen = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser((chosen,) if chosen else ())
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    setup_logging(args.verbose, args.quiet)
    if args.workdir:
        os.environ["FTLAB_HOME"] = os.path.abspath(args.workdir)
    return guarded(lambda: importlib.import_module(COMMANDS[args.command]).run(args))


class Terminated(SystemExit):
    """SIGTERM turned into an exception, so cleanup (staging folders, temp files) runs."""


def _raise_terminated(signum, frame):
    raise Terminated(128 + signum)


def guarded(fn) -> int:
    """Runs a command body: user errors print one line and exit 2 (no traceback), Ctrl-C exits 130,
    SIGTERM exits 143 after the same cleanup as an error (by default SIGTERM would kill the
    process on the spot and leave half-built `.staging-*` folders behind)."""

    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(fn() or 0)
    except FtlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print("terminated", file=sys.stderr)
        return int(exc.code)
    except Exception as exc:
        # A full disk hit by a library's own writer (Trainer checkpoints) is still one line; any
        # other exception is a bug and keeps its traceback.
        from ftlab.io import disk_full_error  # lazy: ftlab.io's imports cost 17 ms, 40% of `ftlab --help`
        from ftlab.paths import Workspace  # lazy: only a failed command needs it (`ftlab --help` stays at 0.04 s)

        root = Workspace.default().root
        err = disk_full_error(exc, root, writing=f"files under {root}")
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_entry(command: str, argv: list[str] | None = None) -> int:
    """For the numbered scripts: `Testing/02_TestModels.py ARGS` == `ftlab evaluate ARGS`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return main([command, *argv])
