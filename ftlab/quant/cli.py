"""`ftlab quantize` / `tools/quantize.py`: post-training quantization of a model folder."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ftlab.errors import FtlabError

log = logging.getLogger(__name__)

_METHODS_DOC = "GPTQ, AWQ, HQQ, BNB_NF4, BNB_INT8"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=False,
                        help="model folder (Models/X, a run name under Models/, a merged fine-tune or an adapter "
                             "folder, which is merged first) or a built-in model name")
    parser.add_argument("--method", required=False, help=f"quantization method: {_METHODS_DOC}")
    parser.add_argument("--bits", type=int, default=None, help="weight bits (default: the method's, usually 4)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="weights per quantization group, -1 = per channel (GPTQ default 128, HQQ 64)")
    parser.add_argument("--lm-head", default=None, metavar="DTYPE",
                        help="dtype the unquantized output head (and the other unquantized tensors) are kept in: "
                             "bf16, fp16, fp32; recorded in the tag as head<dtype> (default: the method's)")
    parser.add_argument("--calib-dataset", default="openmath",
                        help="task name or data file used for calibration (train split) and held-out perplexity "
                             "(test split)")
    parser.add_argument("--calib-samples", type=int, default=128, help="calibration texts (GPTQ, AWQ)")
    parser.add_argument("--ppl-dataset", default=None, help="held-out perplexity task (default: --calib-dataset)")
    parser.add_argument("--ppl-samples", type=int, default=32, help="held-out texts for perplexity before/after")
    parser.add_argument("--no-perplexity", action="store_true", help="skip the perplexity before/after measurement")
    parser.add_argument("--max-length", type=int, default=512, help="token cap per perplexity text")
    parser.add_argument("--data-dir", default=None, help="folder with <split>-<task>.parquet files (else Datasets/)")
    parser.add_argument("--output", default=None,
                        help="output folder name under Models/ (default: Models/<model name with quant tag>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--list-methods", action="store_true", help="print what each method supports and exit")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def build_request(args: argparse.Namespace):
    from ftlab.quant.pipeline import QuantRequest
    from ftlab.quant.registry import get_engine
    from ftlab.quant.spec import QuantizationSpec

    if not args.model:
        raise FtlabError("--model is required: a model folder, a run name under Models/ or a built-in model name")
    if not args.method:
        raise FtlabError(f"--method is required: one of {_METHODS_DOC}")
    engine = get_engine(args.method)
    lm_head = args.lm_head.lower() if args.lm_head else None
    spec = QuantizationSpec(method=engine.method, bits=args.bits, group_size=args.group_size, lm_head_dtype=lm_head,
                            compute_dtype=lm_head)
    for flag, value in (("--calib-samples", args.calib_samples), ("--ppl-samples", args.ppl_samples),
                        ("--max-length", args.max_length)):
        if value is not None and value <= 0:
            raise FtlabError(f"{flag}={value} must be a positive integer")
    return QuantRequest(
        model=args.model, spec=spec, calib_dataset=args.calib_dataset, calib_samples=args.calib_samples,
        ppl_dataset=args.ppl_dataset, ppl_samples=args.ppl_samples, max_length=args.max_length,
        output=Path(args.output) if args.output else None, overwrite=args.overwrite,
        source_dir=Path(args.data_dir) if args.data_dir else None, measure_perplexity=not args.no_perplexity,
    )


def run(args: argparse.Namespace) -> int:
    from ftlab.paths import Workspace

    if args.list_methods:
        from ftlab.quant.registry import get_engine, method_names

        for name in method_names():
            print(json.dumps(get_engine(name).describe()))
        return 0
    request = build_request(args)
    from ftlab.env import set_threads
    from ftlab.quant.pipeline import quantize

    set_threads(args.threads)
    folder = quantize(request, Workspace.at(getattr(args, "workdir", None)))
    print(folder)
    return 0
