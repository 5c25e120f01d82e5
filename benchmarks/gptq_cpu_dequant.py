#!/usr/bin/env python
"""gptqmodel's CPU torch kernel with and without its torch.compile, on one GPTQ 4-bit model.

gptqmodel's `TorchLinear` (the CPU kernel with autograd, the one ftlab loads so LoRA can train on
top) wraps its de-quantization in `torch.compile` when a folder loads. ftlab undoes that on CPU
(`ftlab.quant.engines.gptq.eager_dequantization`). This script is the measurement behind it: one
GPTQ folder of the model, then, in a fresh process per mode and round,

* `compiled`: gptqmodel's own load (ftlab's undo replaced by a no-op),
* `eager`: ftlab's load,

each timing the load, two fidelity passes against the fp32 source (64 held-out synthetic-arith
texts, the pass `ftlab quantize` runs) and the greedy answers to N held-out questions through the
real evaluator, plus the whole process. Both modes must give the same KL and the same answers.

    uv run python benchmarks/gptq_cpu_dequant.py --out benchmarks/gptq_cpu_dequant.results.json

Modes alternate (compiled, eager, compiled, eager, ...) so a slow stretch of the machine hits both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def child(args) -> int:
    """One mode in this (fresh) process; prints RESULT <json>."""
    t_process = time.perf_counter()
    import torch

    from ftlab import console

    console.setup(quiet=True)
    torch.set_num_threads(args.threads)
    from ftlab.quant.engines import gptq

    if args.child == "compiled":
        gptq.eager_dequantization = lambda model: 0  # gptqmodel's load as it comes
    from ftlab.config import EvalRunConfig, load_config
    from ftlab.eval.evaluator import evaluate
    from ftlab.models.sources import load_model, load_tokenizer, resolve_model
    from ftlab.paths import Workspace
    from ftlab.quant import fidelity
    from ftlab.quant.calibration import task_texts
    from ftlab.quant.registry import load_quantized
    from ftlab.kinds.quant import QuantizationSpec

    ws = Workspace(Path(args.workdir) / f"ws-{args.child}-{args.round}")
    folder = Path(args.folder)
    meta = json.loads((folder / "training_metadata.json").read_text())
    spec = QuantizationSpec.from_dict(meta["quantization"])
    tok = load_tokenizer(resolve_model(str(folder), ws), ws)
    session = fidelity.Session(tok, task_texts("synthetic-arith", "test", 64, tok, workspace=ws), max_length=512)
    source, _, _ = load_model(args.model, workspace=ws, dtype="fp32")
    session.run_reference(source)
    del source

    t0 = time.perf_counter()
    model = load_quantized(folder, spec)
    load_s = time.perf_counter() - t0
    compiled = sum("dequantize_weight" in vars(m) for m in model.modules())
    passes, measured = [], None
    for _ in range(2):
        t0 = time.perf_counter()
        measured = session.compare(model)
        passes.append(round(time.perf_counter() - t0, 2))
    del model

    cfg = load_config(EvalRunConfig, overrides=[
        "eval.datasets=synthetic-arith", f"eval.limit={args.n}", f"eval.threads={args.threads}",
        "eval.bootstrap_samples=200"])
    t0 = time.perf_counter()
    doc = evaluate(str(folder), cfg, ws, model_name="gptq")
    eval_s = time.perf_counter() - t0
    samples = ws.metrics_dir / "gptq.samples.jsonl"
    responses = [json.loads(line)["response"] for line in samples.read_text().splitlines() if line.strip()]
    block = doc["datasets"]["synthetic-arith"]
    print("RESULT " + json.dumps({
        "mode": args.child, "round": args.round, "compiled_layers": compiled, "load_s": round(load_s, 2),
        "fidelity_pass_s": passes, "kl_mean": measured["kl_mean"], "top1_agreement": measured["top1_agreement"],
        "evaluate_s": round(eval_s, 2), "accuracy": block["metrics"]["accuracy"], "responses": responses,
        "responses_sha": hashlib.sha256("\n".join(responses).encode()).hexdigest()[:16],
        "process_s_before_exit": round(time.perf_counter() - t_process, 2),
    }))
    return 0


def _run(cmd: list[str], threads: int) -> tuple[int, str, str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    return out.returncode, out.stdout, out.stderr, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=100, help="held-out synthetic-arith questions answered")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", help="default: a temporary folder")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=["compiled", "eager"], help=argparse.SUPPRESS)
    ap.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ftlab-gptq-dequant-"))
    folder = workdir / "Models" / "gptq"
    if not folder.is_dir():
        rc, _, err, wall = _run([sys.executable, "-m", "ftlab", "--workdir", str(workdir), "quantize", "--model",
                                 args.model, "--method", "GPTQ", "--bits", "4", "--calib-dataset", "synthetic-arith",
                                 "--calib-samples", "32", "--no-fidelity", "--output", str(folder)], args.threads)
        if rc != 0:
            print(err[-3000:], file=sys.stderr)
            return 1
    runs = []
    for r in range(args.rounds):
        for mode in ("compiled", "eager"):
            cmd = [sys.executable, __file__, "--child", mode, "--round", str(r), "--folder", str(folder),
                   "--model", args.model, "--n", str(args.n), "--threads", str(args.threads), "--workdir", str(workdir)]
            rc, out, err, wall = _run(cmd, args.threads)
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            if rc != 0 or line is None:
                print(err[-3000:], file=sys.stderr)
                return 1
            res = json.loads(line[len("RESULT "):])
            res["process_wall_s"] = round(wall, 2)
            runs.append(res)
            print(f"{mode} round {r}: load {res['load_s']} s, fidelity passes {res['fidelity_pass_s']} s, "
                  f"evaluate {res['evaluate_s']} s, process {res['process_wall_s']} s, compiled layers "
                  f"{res['compiled_layers']}, KL {res['kl_mean']:.6f}, accuracy {res['accuracy']}", flush=True)
    first = runs[0]["responses"]
    same = [sum(a == b for a, b in zip(first, r["responses"])) / len(first) for r in runs]

    def median(key, mode, index=None):
        vals = sorted(r[key][index] if index is not None else r[key] for r in runs if r["mode"] == mode)
        return vals[len(vals) // 2] if len(vals) % 2 else round((vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2, 2)

    summary = {mode: {"load_s": median("load_s", mode), "first_fidelity_pass_s": median("fidelity_pass_s", mode, 0),
                      "second_fidelity_pass_s": median("fidelity_pass_s", mode, 1),
                      "evaluate_s": median("evaluate_s", mode), "process_wall_s": median("process_wall_s", mode)}
               for mode in ("compiled", "eager")}
    doc = {
        "model": args.model, "n": args.n, "threads": args.threads, "rounds": args.rounds,
        "date": time.strftime("%Y-%m-%d"), "median": summary,
        "identical_responses_vs_first_run": same,
        "kl_mean_per_run": [r["kl_mean"] for r in runs],
        "runs": [{k: v for k, v in r.items() if k != "responses"} for r in runs],
    }
    print(json.dumps({"median": summary, "identical_responses_vs_first_run": same}, indent=1))
    if args.out:
        from ftlab.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
