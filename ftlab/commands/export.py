"""`ftlab export`: a model folder as a file other runtimes load (GGUF for llama.cpp and Ollama).

The export is a registered quantization method (`ftlab.quant.engines.gguf`), so it runs through
the same pipeline as `ftlab quantize`: checks before any load, a staging folder, metadata with the
fidelity of the exported file to its source, measured after transformers reloads it. Its flags
are `ftlab quantize`'s output settings (`QuantRunConfig`) with the method fixed to GGUF.
"""

from __future__ import annotations

import argparse

from ftlab.errors import FtlabError
from ftlab.commands.quantize import add_output_arguments, load_cli_config, run_request
from ftlab.quant.engines.gguf import TYPES

FORMATS = ("gguf",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=False, help="model folder (Models/X, a run name, an adapter folder, which "
                                                        "is merged first) or a built-in model name")
    parser.add_argument("--format", default="gguf", help="output format: gguf")
    parser.add_argument("--type", default="q8_0", help=f"GGUF tensor type: {', '.join(TYPES)} (K-quants need "
                                                       "llama.cpp's llama-quantize on PATH; default q8_0)")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.format.lower() not in FORMATS:
        raise FtlabError(f"--format {args.format!r} is not supported; use one of {', '.join(FORMATS)}")
    gtype = args.type.lower()
    if gtype not in TYPES:
        raise FtlabError(f"--type {args.type!r} is not a GGUF type ftlab writes; use one of {', '.join(TYPES)}")
    # No calibration; fidelity is measured on the source's own training task unless --fidelity-dataset
    # names one (ftlab.quant.pipeline.default_task), and skipped with a warning when offline without it.
    cfg = load_cli_config(args, fixed=["quant.method=GGUF", f"quant.options.gguf_type={gtype}"])
    return run_request(cfg, getattr(args, "workdir", None))
