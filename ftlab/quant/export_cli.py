"""`ftlab export`: a model folder as a file other runtimes load (GGUF for llama.cpp and Ollama).

The export is a registered quantization method (`ftlab.quant.engines.gguf`), so it runs through
the same pipeline as `ftlab quantize`: checks before any load, a staging folder, metadata with the
fidelity of the exported file to its source, measured after transformers reloads it.
"""

from __future__ import annotations

import argparse

from ftlab.errors import FtlabError

FORMATS = ("gguf",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ftlab.quant.cli import add_output_arguments
    from ftlab.quant.engines.gguf import TYPES

    parser.add_argument("--model", required=False, help="model folder (Models/X, a run name, an adapter folder, which "
                                                        "is merged first) or a built-in model name")
    parser.add_argument("--format", default="gguf", help="output format: gguf")
    parser.add_argument("--type", default="q8_0", help=f"GGUF tensor type: {', '.join(TYPES)} (K-quants need "
                                                       "llama.cpp's llama-quantize on PATH; default q8_0)")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ftlab.quant.cli import build_request, run_request
    from ftlab.quant.engines.gguf import TYPES
    from ftlab.kinds.quant import QuantizationSpec

    if args.format.lower() not in FORMATS:
        raise FtlabError(f"--format {args.format!r} is not supported; use one of {', '.join(FORMATS)}")
    gtype = args.type.lower()
    if gtype not in TYPES:
        raise FtlabError(f"--type {args.type!r} is not a GGUF type ftlab writes; use one of {', '.join(TYPES)}")
    args.fidelity_dataset = args.fidelity_dataset or "openmath"
    return run_request(args, build_request(args, QuantizationSpec("GGUF", extra={"gguf_type": gtype})))
