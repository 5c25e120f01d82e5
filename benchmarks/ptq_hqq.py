#!/usr/bin/env python
"""HQQ settings measured on one source model: which of hqq's knobs cost the accuracy.

For each variant the source (fp32) is copied, quantized in memory with hqq's own API
(`AutoHQQHFModel.quantize_model`, the call ftlab's engine makes), then measured against the source
with ftlab's fidelity figures (answer-token KL, top-1 agreement, answer perplexity on held-out
texts of the task) and evaluated with the real evaluator (greedy boxed accuracy on the first N
held-out questions). A plain round-to-nearest variant (`optimize=False`) and 8-bit are included
as references; so is the source itself (accuracy) and the source cast to bf16.

    OMP_NUM_THREADS=2 uv run python benchmarks/ptq_hqq.py --model Models/<fine-tune> --out hqq.json
    uv run python benchmarks/ptq_hqq.py --render hqq.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (nbits, group_size, axis, optimize, round_zero); hqq's documented defaults are
# BaseQuantizeConfig(nbits=4, group_size=64, axis=1) with optimize=True and round_zero=True at 4 bits.
VARIANTS = {
    "w4 g64 axis1 (ftlab before)": (4, 64, 1, True, True),
    "w4 g64 axis1 round_zero off": (4, 64, 1, True, False),
    "w4 g64 axis1 no optimizer (RTN)": (4, 64, 1, False, True),
    "w4 g64 axis0": (4, 64, 0, True, True),
    "w4 g32 axis1": (4, 32, 1, True, True),
    "w8 g64 axis1": (8, 64, 1, True, False),
    "w4 g64 axis1 RTN round_zero off": (4, 64, 1, False, False),
    "w4 g32 axis1 RTN round_zero off": (4, 32, 1, False, False),
    "w4 g64 axis0 round_zero off": (4, 64, 0, True, False),
}


def _hqq(model, nbits, group_size, axis, optimize, round_zero):
    import torch
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    cfg = BaseQuantizeConfig(nbits=nbits, group_size=group_size, axis=axis)
    cfg["weight_quant_params"]["optimize"] = optimize
    cfg["weight_quant_params"]["round_zero"] = round_zero
    AutoHQQHFModel.quantize_model(model, quant_config=cfg, compute_dtype=torch.float32, device="cpu")
    return model


def _accuracy(model, tok, args, ws, name: str) -> dict:
    from ftlab.config import EvalRunConfig, load_config
    from ftlab.eval.evaluator import evaluate
    from ftlab.eval.backends.hf import HFGenerator

    cfg = load_config(EvalRunConfig, overrides=[
        f"eval.datasets={args.task}", f"eval.limit={args.n}", f"eval.threads={args.threads}", "eval.bootstrap_samples=1000",
    ])
    t0 = time.perf_counter()
    doc = evaluate(args.model, cfg, ws, generator=HFGenerator(model, tok, progress=False), model_name=name)
    block = doc["datasets"][args.task]
    return {"accuracy": block["metrics"]["accuracy"], "interval": block.get("intervals", {}).get("accuracy"),
            "format_success_rate": block.get("format_success_rate"), "eval_s": round(time.perf_counter() - t0, 1)}


def render(results: dict) -> str:
    rows = ["| HQQ variant | quantize s | answer KL mean | KL p99 | top-1 agreement | answer ppl (source -> quantized) "
            "| whole-text ppl | accuracy [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    src = results["source"]
    lo, hi = src["interval"]
    rows.append(f"| source (fp32) | - | 0 | 0 | 100% | {results['answer_ppl_source']:.3f} | "
                f"{results['whole_text_ppl_source']:.3f} | {src['accuracy']:.2f} [{lo:.2f}, {hi:.2f}] |")
    for name, r in results["variants"].items():
        f, a = r["fidelity"], r["eval"]
        lo, hi = a["interval"]
        rows.append(f"| {name} | {r['quantize_s']:.0f} | {f['kl_mean']:.4f} | {f['kl_p99']:.3f} | "
                    f"{100 * f['top1_agreement']:.1f}% | {f['answer_perplexity_after']:.3f} | "
                    f"{f['whole_text_perplexity_after']:.3f} | {a['accuracy']:.2f} [{lo:.2f}, {hi:.2f}] |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="source model folder (unquantized)")
    p.add_argument("--task", default="synthetic-arith")
    p.add_argument("--n", type=int, default=100, help="held-out accuracy questions")
    p.add_argument("--fidelity-samples", type=int, default=100, help="held-out texts for the fidelity figures")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--out", default=None)
    p.add_argument("--render", default=None, metavar="RESULTS_JSON")
    args = p.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    import torch

    from ftlab.io import atomic_write_text
    from ftlab.models.sources import load_model
    from ftlab.paths import Workspace
    from ftlab.quant.calibration import task_texts
    from ftlab.quant.fidelity import Session

    torch.set_num_threads(args.threads)
    ws = Workspace(Path(tempfile.mkdtemp(prefix="ftlab-hqq-bench-")))
    source, tok, _ = load_model(args.model, dtype="fp32")
    session = Session(tok, task_texts(args.task, "test", args.fidelity_samples, tok), max_length=512)
    session.run_reference(source)
    cast = session.compare(copy.deepcopy(source).to(torch.bfloat16))
    results = {"model": args.model, "task": args.task, "n": args.n, "threads": args.threads,
               "load_average_start": os.getloadavg(), "source": _accuracy(source, tok, args, ws, "source"),
               "answer_ppl_source": cast["answer_perplexity_before"],
               "whole_text_ppl_source": cast["whole_text_perplexity_before"], "bf16_cast": cast, "variants": {}}
    print("source", results["source"], flush=True)
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        t0 = time.perf_counter()
        model = _hqq(copy.deepcopy(source), *VARIANTS[name])
        row = {"settings": dict(zip(("nbits", "group_size", "axis", "optimize", "round_zero"), VARIANTS[name])),
               "quantize_s": round(time.perf_counter() - t0, 1), "fidelity": session.compare(model)}
        row["eval"] = _accuracy(model, tok, args, ws, name.replace(" ", "_"))
        results["variants"][name] = row
        print(name, row["quantize_s"], {k: round(v, 4) for k, v in row["fidelity"].items() if isinstance(v, float)},
              row["eval"], flush=True)
        del model
        if args.out:
            atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    results["load_average_end"] = os.getloadavg()
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
