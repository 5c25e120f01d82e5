"""`ftlab quantize` / `tools/quantize.py`: post-training quantization of a model folder."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ftlab.errors import FtlabError

log = logging.getLogger(__name__)


def _methods_doc() -> str:
    from ftlab.quant.registry import method_names

    return ", ".join(method_names())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=False,
                        help="model folder (Models/X, a run name under Models/, a merged fine-tune or an adapter "
                             "folder, which is merged first) or a built-in model name")
    parser.add_argument("--method", required=False, help=f"quantization method: {_methods_doc()}")
    parser.add_argument("--bits", type=int, default=None, help="weight bits (default: the method's, usually 4)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="weights per quantization group, -1 = per channel (default: the method's, fitted to "
                             "the model's layer widths for GPTQ/AWQ)")
    parser.add_argument("--lm-head", default=None, metavar="DTYPE",
                        help="dtype the unquantized output head (and the other unquantized tensors) are kept in: "
                             "bf16, fp16, fp32; recorded in the tag as head<dtype> (default: the method's)")
    parser.add_argument("--calib-dataset", default="openmath",
                        help="task name or data file used for calibration (train split) and, by default, for the "
                             "fidelity measurement (test split)")
    parser.add_argument("--calib-samples", type=int, default=128, help="calibration texts (GPTQ, AWQ)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a method-specific setting, e.g. HQQ axis=0 (repeatable; --list-methods shows each "
                             "method's options and defaults)")
    add_output_arguments(parser)
    parser.add_argument("--list-methods", action="store_true", help="print what each method supports and exit")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Fidelity, data, output and thread flags shared with `ftlab export`."""
    parser.add_argument("--fidelity-dataset", "--ppl-dataset", dest="fidelity_dataset", default=None,
                        help="held-out task for fidelity to the source: answer-token KL, top-1 agreement, "
                             "answer perplexity (default: the calibration task; openmath)")
    parser.add_argument("--fidelity-samples", "--ppl-samples", dest="fidelity_samples", type=int, default=64,
                        help="held-out texts for the fidelity measurement (default 64)")
    parser.add_argument("--no-fidelity", "--no-perplexity", dest="no_fidelity", action="store_true",
                        help="skip the fidelity measurement (source and quantized forward passes)")
    parser.add_argument("--max-length", type=int, default=512, help="token cap per held-out text")
    parser.add_argument("--data-dir", default=None, help="folder with <split>-<task>.parquet files (else Datasets/)")
    parser.add_argument("--output", default=None,
                        help="output folder name under Models/ (default: Models/<model name with quant tag>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def build_request(args: argparse.Namespace, spec=None):
    """The QuantRequest of `ftlab quantize` (or of `ftlab export`, which passes its own spec)."""
    from ftlab.quant.pipeline import QuantRequest
    from ftlab.quant.registry import get_engine
    from ftlab.kinds.quant import QuantizationSpec

    if not args.model:
        raise FtlabError("--model is required: a model folder, a run name under Models/ or a built-in model name")
    if spec is None:
        if not args.method:
            raise FtlabError(f"--method is required: one of {_methods_doc()}")
        engine = get_engine(args.method)
        lm_head = args.lm_head.lower() if args.lm_head else None
        spec = QuantizationSpec(method=engine.method, bits=args.bits, group_size=args.group_size,
                                lm_head_dtype=lm_head, compute_dtype=lm_head, extra=_options(args.option))
    calib_samples, calib_dataset = getattr(args, "calib_samples", None), getattr(args, "calib_dataset", "openmath")
    for flag, value in (("--calib-samples", calib_samples), ("--fidelity-samples", args.fidelity_samples),
                        ("--max-length", args.max_length)):
        if value is not None and value <= 0:
            raise FtlabError(f"{flag}={value} must be a positive integer")
    return QuantRequest(
        model=args.model, spec=spec, calib_dataset=calib_dataset, calib_samples=calib_samples or 128,
        fidelity_dataset=args.fidelity_dataset, fidelity_samples=args.fidelity_samples, max_length=args.max_length,
        output=Path(args.output) if args.output else None, overwrite=args.overwrite,
        source_dir=Path(args.data_dir) if args.data_dir else None, measure_fidelity=not args.no_fidelity,
    )


def _options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise FtlabError(f"--option {item!r} must look like NAME=VALUE (e.g. axis=0)")
        out[name.strip()] = value.strip()
    return out


def run(args: argparse.Namespace) -> int:
    if args.list_methods:
        from ftlab.quant.registry import get_engine, method_names

        for name in method_names():
            print(json.dumps(get_engine(name).describe()))
        return 0
    return run_request(args, build_request(args))


def run_request(args: argparse.Namespace, request) -> int:
    from ftlab.env import set_threads
    from ftlab.paths import Workspace
    from ftlab.quant.pipeline import quantize

    set_threads(args.threads)
    folder = quantize(request, Workspace.at(getattr(args, "workdir", None)))
    _print_fidelity(folder)
    print(folder)
    return 0


def _print_fidelity(folder: Path) -> None:
    """What was lost, on the console (the folder path stays the last line, for scripts)."""
    from ftlab.quant.fidelity import summary_line
    from ftlab.schema import load_training_metadata

    ptq = load_training_metadata(folder)["results"]["ptq"]
    for key, label in (("fidelity_of_cast", "the dtype cast alone"), ("fidelity", "quantized")):
        if ptq.get(key):
            print(f"fidelity vs the fp32 source, {label}: {summary_line(ptq[key])}")
