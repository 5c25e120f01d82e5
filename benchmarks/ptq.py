#!/usr/bin/env python
"""Post-training quantization of SmolLM2-135M-Instruct with every registered method.

For each method: `ftlab quantize` in its own subprocess (clean peak RSS; time, size on disk and
the fidelity to the source come from the output's training_metadata.json: answer-token KL, top-1
agreement, answer perplexity, whole-text perplexity as a secondary figure), then boxed accuracy on
the first N held-out `synthetic-arith` questions through the real evaluator
(`ftlab.eval.evaluator.evaluate`, also in a subprocess), and recovery against the unquantized
source on the same questions (`ftlab.compare.pair.compare_pair`: score ratio with a paired
bootstrap interval, McNemar on lost/gained answers).

    OMP_NUM_THREADS=1 uv run python benchmarks/ptq.py --out benchmarks/ptq_results.json

A method may carry bits or a setting after a colon (`HQQ:8`, `GGUF:q4_1`, `HQQ:axis=0`).

Everything is written to a temporary workspace unless --workdir is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ("GPTQ", "AWQ", "HQQ", "BNB_NF4", "BNB_INT8", "GGUF:q8_0", "GGUF:q4_0", "GGUF:q4_1")


def child_eval(args) -> int:
    """Evaluates one model in this (child) process and prints the summary as JSON."""
    import torch

    from ftlab.config import EvalRunConfig, load_config
    from ftlab.env import PeakMemory
    from ftlab.eval.evaluator import evaluate
    from ftlab.paths import Workspace

    torch.set_num_threads(args.threads)
    cfg = load_config(EvalRunConfig, overrides=[
        f"eval.datasets={args.task}", f"eval.limit={args.n}", f"eval.batch_size={args.batch_size}",
        f"eval.threads={args.threads}", f"model.dtype={args.dtype}", "eval.bootstrap_samples=200",
    ])
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        doc = evaluate(args.child_eval, cfg, Workspace(Path(args.workdir)))
        wall = time.perf_counter() - t0
    block = doc["datasets"][args.task]
    print("RESULT " + json.dumps({
        "accuracy": block["metrics"]["accuracy"], "interval": block.get("intervals", {}).get("accuracy"),
        "format_success_rate": block.get("format_success_rate"), "n": block["n"], "eval_wall_s": round(wall, 1),
        "eval_peak_rss_mb": round(mem.peak_rss_mb, 1), "samples_per_s": block.get("samples_per_s"),
    }))
    return 0


def _run(cmd: list[str], log_path: Path) -> tuple[int, str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    from ftlab.io import atomic_write_text

    atomic_write_text(log_path, out.stdout + "\n--- stderr ---\n" + out.stderr)
    return out.returncode, out.stdout, wall


def _evaluate(model: str, args, ws: Path, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--child-eval", model, "--workdir", str(ws), "--task", args.task,
           "--n", str(args.n), "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--dtype", dtype]
    rc, stdout, _ = _run(cmd, ws / f"eval-{Path(model).name}.log")
    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
    if rc != 0 or line is None:
        return {"error": f"evaluation failed (rc={rc}); see {ws / f'eval-{Path(model).name}.log'}"}
    return json.loads(line[len("RESULT "):])


def render_markdown(results: dict) -> str:
    """The results tables for benchmarks/ptq.md: cost and fidelity, then accuracy and recovery."""
    def acc(e: dict | None) -> str:
        if not e or "accuracy" not in e:
            return (e or {}).get("error", "n/a")
        lo, hi = e.get("interval") or (None, None)
        ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
        return f"{e['accuracy']:.2f}{ci}"

    def rec(r: dict | None) -> str:
        if not r:
            return "n/a"
        ci = f" [{r['ratio_low']:.2f}, {r['ratio_high']:.2f}]" if r.get("ratio_low") is not None else ""
        return f"{r['ratio']:.2f}{ci}"

    base = results.get("baseline")
    cost = ["| method (tag, compute dtype) | quantize s | process wall s | peak RSS MB | weights MB | "
            "answer KL mean / p99 | top-1 agreement | answer ppl | whole-text ppl (secondary) |",
            "|---|---|---|---|---|---|---|---|---|"]
    quality = ["| method | accuracy [95% CI] | recovery vs source [95% CI] | lost / gained | McNemar p | eval q/s |",
               "|---|---|---|---|---|---|",
               f"| unquantized source (fp32) | {acc(base)} | 1 | - | - | {(base or {}).get('samples_per_s') or 0:.2f} |"]
    for method, r in results["methods"].items():
        if "error" in r:
            cost.append(f"| {method} | {r['error']} | | | | | | | |")
            continue
        f = r["fidelity"]
        cost.append(
            f"| {method} (`{r['tag']}`, {r['compute_dtype']}) | {r['quantization_time_s']:.0f} | {r['process_wall_s']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['weights_before_mb']:.0f} -> {r['weights_after_mb']:.0f} | "
            f"{f['kl_mean']:.4f} / {f['kl_p99']:.3f} | {100 * f['top1_agreement']:.1f}% | "
            f"{f['answer_perplexity_before']:.3f} -> {f['answer_perplexity_after']:.3f} | "
            f"{f['whole_text_perplexity_before']:.2f} -> {f['whole_text_perplexity_after']:.2f} |")
        e, rv = r.get("eval") or {}, r.get("recovery")
        lost = f"{rv['lost']} / {rv['gained']}" if rv else "n/a"
        p = f"{rv['mcnemar_p']:.3g}" if rv else "n/a"
        quality.append(f"| {method} | {acc(e)} | {rec(rv)} | {lost} | {p} | {e.get('samples_per_s') or 0:.2f} |")
    return "\n".join(cost) + "\n\n" + "\n".join(quality)


def _recovery(ws: Path, source: str, quantized: str) -> dict | None:
    from ftlab.compare.pair import compare_pair

    try:
        row = compare_pair(ws, source, quantized, resamples=10_000).iloc[0]
    except Exception as exc:  # a failed evaluation leaves no samples: reported, not fatal
        return {"error": str(exc)}
    return {"ratio": float(row["ratio"]), "ratio_low": float(row["ratio_low"]), "ratio_high": float(row["ratio_high"]),
            "lost": int(row["a_only"]), "gained": int(row["b_only"]), "mcnemar_p": float(row["mcnemar_p"]),
            "diff": float(row["diff"]), "diff_low": float(row["ci_low"]), "diff_high": float(row["ci_high"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="source model (folder or built-in name)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--calib-dataset", default="openmath")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--fidelity-samples", type=int, default=64)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"),
                   help="folder with train-/test-<task>.parquet (calibration and perplexity texts)")
    p.add_argument("--task", default="synthetic-arith", help="accuracy task")
    p.add_argument("--n", type=int, default=100, help="held-out accuracy questions")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default=None, help="workspace to keep (default: a temporary folder)")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--group-size", action="append", default=[], metavar="METHOD=G",
                   help="per-method group size, e.g. HQQ=32 (default: each method's, fitted to the layer widths)")
    p.add_argument("--no-baseline", action="store_true", help="skip evaluating the unquantized model")
    p.add_argument("--render", default=None, metavar="RESULTS_JSON", help="print the markdown table of a results file")
    p.add_argument("--child-eval", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="auto", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_eval:
        return child_eval(args)
    if args.render:
        print(render_markdown(json.loads(Path(args.render).read_text())))
        return 0

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="ftlab-ptq-bench-")
    ws = Path(args.workdir or tmp.name).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": args.model, "calib_dataset": args.calib_dataset, "calib_samples": args.calib_samples,
                     "task": args.task, "n": args.n, "threads": args.threads, "cpu_count": os.cpu_count(),
                     "load_average_start": os.getloadavg(), "methods": {}}
    print(f"workspace {ws}", flush=True)
    base = None
    if not args.no_baseline:
        base = _evaluate(args.model, args, ws, "fp32")
        results["baseline"] = base
        print(f"baseline: {base}", flush=True)
    group_sizes = dict(item.split("=", 1) for item in args.group_size)

    for entry in [m.strip() for m in args.methods.split(",") if m.strip()]:
        method, _, bits = entry.partition(":")
        cmd = [sys.executable, "-m", "ftlab", "--workdir", str(ws), "quantize", "--model", args.model,
               "--method", method, "--calib-dataset", args.calib_dataset, "--calib-samples", str(args.calib_samples),
               "--fidelity-samples", str(args.fidelity_samples), "--data-dir", args.data_dir, "--threads",
               str(args.threads), "--overwrite"]
        if bits.isdigit():
            cmd += ["--bits", bits]
        elif bits:  # a GGUF type (GGUF:q4_1) or another method setting
            cmd += ["--option", f"gguf_type={bits}" if method == "GGUF" else bits]
        if method in group_sizes:
            cmd += ["--group-size", group_sizes[method]]
        method = entry
        rc, stdout, wall = _run(cmd, ws / f"quantize-{method}.log")
        if rc != 0:
            results["methods"][method] = {"error": f"quantize failed (rc={rc}); see {ws / f'quantize-{method}.log'}"}
            print(f"{method}: FAILED rc={rc}", flush=True)
            continue
        folder = Path(stdout.strip().splitlines()[-1])
        meta = json.loads((folder / "training_metadata.json").read_text())
        ptq = meta["results"]["ptq"]
        weights_after = ptq["size_on_disk_bytes"]["weights_after"] or ptq["size_on_disk_bytes"]["folder_after"]
        row = {
            "folder": folder.name, "tag": (meta.get("name_fields") or {}).get("quant_tag") or meta["quantization"]["method"],
            "process_wall_s": round(wall, 1),
            "quantization_time_s": ptq["quantization_time_s"], "peak_rss_mb": ptq["peak_memory"]["peak_rss_mb"],
            "weights_before_mb": round(ptq["size_on_disk_bytes"]["weights_before"] / 2**20, 1),
            "weights_after_mb": round(weights_after / 2**20, 1),
            "fidelity": ptq["fidelity"], "fidelity_of_cast": ptq.get("fidelity_of_cast"),
            "backend": meta["quantization"]["backend"], "compute_dtype": meta["quantization"]["compute_dtype"],
            "quantization": meta["quantization"],
        }
        row["eval"] = _evaluate(str(folder), args, ws, "auto")
        if base is not None:
            row["recovery"] = _recovery(ws, Path(args.model).name, folder.name)
        results["methods"][method] = row
        print(f"{method}: {row}", flush=True)
        if args.out:  # partial results survive a crash of a later method
            from ftlab.io import atomic_write_text

            atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    results["load_average_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        from ftlab.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
