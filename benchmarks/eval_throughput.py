#!/usr/bin/env python
"""ftlab's evaluator vs a seed-style loop (one prompt at a time, `model.generate`, fixed
max_new_tokens) on the same prompts, same model, same greedy decoding, the same torch thread
count on both sides (default: every core, which is what each side uses when nobody sets it).

Each side runs in its own subprocess (clean peak RSS, no shared allocator state), one after the
other. The ftlab side is the real `ftlab.eval.evaluator.evaluate` (generation, scoring, sample
lines and metrics JSON written to a temporary workspace); the seed side is the loop the seed
repository used. Reported: wall time of the generation phase (model load excluded), samples/s,
peak RSS, and the share of identical responses and identical extracted answers; then a matmul
floor: the model's Linear layers timed on this CPU, times the tokens ftlab has to compute, i.e.
the least time any exact fp32 implementation needs, and the largest speed-up it allows.

    uv run python benchmarks/eval_throughput.py --n 200 --sweep 32,64      # ftlab at its default batch (auto)
    uv run python benchmarks/eval_throughput.py --n 200 --threads 1 --sweep 64  # one core each
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


def _prompts(task_name: str, n: int, tokenizer) -> tuple[list, list[str]]:
    from ftlab.data.loading import load_examples
    from ftlab.data.prompts import build_messages, render_prompt
    from ftlab.data.tasks import get_task

    task = get_task(task_name)
    examples = load_examples(task_name, "test", limit=n)
    return examples, [render_prompt(tokenizer, build_messages(task, ex)) for ex in examples]


def side_floor(args) -> dict:
    """Seconds per token of the matmuls one forward pass must do (every Linear of the model, the
    output head apart), timed on this CPU at the given thread count and row count. No exact fp32
    implementation does less matmul work than tokens x these costs, so they bound the speed-up."""
    import torch

    from ftlab.models.sources import load_model

    torch.set_num_threads(args.threads)
    model, _, _ = load_model(args.model, dtype="fp32")
    head = model.get_output_embeddings()
    body = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]

    def seconds_per_token(mods, rows: int) -> float:
        inputs = {m.in_features: torch.randn(rows, m.in_features) for m in mods}
        with torch.inference_mode():
            for m in mods:  # warm-up
                torch.nn.functional.linear(inputs[m.in_features], m.weight)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for m in mods:
                    torch.nn.functional.linear(inputs[m.in_features], m.weight)
                best = min(best, time.perf_counter() - t0)
        return best / rows

    prefill_rows = 256  # refills prefill ~8 prompts of ~30 tokens at once
    return {"body_s_per_token_prefill": seconds_per_token(body, prefill_rows),
            "body_s_per_token_decode": seconds_per_token(body, args.batch_size),
            "head_s_per_token_decode": seconds_per_token([head], args.batch_size),
            "body_params": sum(m.weight.numel() for m in body), "head_params": head.weight.numel()}


def side_seed(args) -> dict:
    """The seed's loop: each prompt alone through model.generate with a fixed max_new_tokens."""
    import torch

    from ftlab.env import PeakMemory
    from ftlab.models.sources import load_model

    torch.set_num_threads(args.threads)
    model, tok, _ = load_model(args.model, dtype="fp32")
    model.eval()
    examples, prompts = _prompts(args.task, args.n, tok)
    responses = []
    with PeakMemory() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for prompt in prompts:
                enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
                out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                responses.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"responses": responses, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": mem.peak_rss_mb}


def side_ftlab(args) -> dict:
    import torch

    from ftlab.config import EvalRunConfig, load_config
    from ftlab.env import PeakMemory
    from ftlab.eval.evaluator import evaluate, metrics_paths, model_file_name
    from ftlab.eval.generation import build_generator
    from ftlab.eval.kv_cache import shared_prefix_length
    from ftlab.io import read_jsonl
    from ftlab.paths import Workspace

    torch.set_num_threads(args.threads)
    cfg = load_config(EvalRunConfig, overrides=[
        f"eval.datasets={args.task}", f"eval.limit={args.n}", f"eval.batch_size={args.batch_size}",
        f"eval.max_new_tokens={args.max_new_tokens}", f"eval.threads={args.threads}", "model.dtype=fp32",
        f"eval.backend={args.backend}",
    ])
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        generator = build_generator(args.model, cfg, ws)  # model load, excluded from the timing
        with PeakMemory() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            doc = evaluate(args.model, cfg, ws, generator=generator)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        _, samples_path = metrics_paths(ws, model_file_name(args.model))
        lines = sorted(read_jsonl(samples_path), key=lambda r: r["index"])
    block = doc["datasets"][args.task]
    # Token counts for the matmul floor: what ftlab must prefill (beyond the shared prefix it
    # computes once) and decode.
    encoded = generator.encode(_prompts(args.task, args.n, generator.tokenizer)[1])
    prefix = shared_prefix_length(encoded)  # the rule the generator applies
    tokens = {"prompt_tokens": sum(len(e) for e in encoded), "shared_prefix_tokens": prefix,
              "prefill_tokens": sum(len(e) - prefix for e in encoded),
              "new_tokens": sum(int(r["new_tokens"]) for r in lines)}
    return {"responses": [r["response"] for r in lines], "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": mem.peak_rss_mb,
            "tokens": tokens, "batch_size_used": block["batch_size"],
            "accuracy": block["metrics"]["accuracy"], "new_tokens_mean": block["new_tokens"]["mean"],
            "stop_reasons": {k: sum(1 for r in lines if r.get("stop_reason") == k) for k in ("box", "eos", "length")}}


SIDES = {"seed": side_seed, "ftlab": side_ftlab, "floor": side_floor}


def _batch_arg(text: str) -> int | None:
    return None if text in ("auto", "None") else int(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--task", default="synthetic-arith")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch-size", type=_batch_arg, default=None,
                   help="ftlab rows generated together (default: auto, the evaluator's default)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="both sides (default: the task's)")
    p.add_argument("--backend", default="hf", help="ftlab generation backend (hf = continuous batching, hf-generate)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads, the same on both sides (default: every core this process may use, "
                        "which is what both sides use when nobody sets it)")
    p.add_argument("--sweep", default="", help="extra ftlab batch sizes to time after the main runs, e.g. 32,128")
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="write the comparison JSON here")
    args = p.parse_args(argv)
    if args.max_new_tokens is None:
        from ftlab.data.tasks import get_task

        args.max_new_tokens = get_task(args.task).max_new_tokens

    if args.side:  # child process
        print(json.dumps(SIDES[args.side](args)))
        return 0

    from ftlab.eval.extraction import extract
    from ftlab.data.tasks import get_task

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    runs: dict[str, list[dict]] = {"seed": [], "ftlab": []}
    # ftlab runs before and after the (long) seed run: the CPU is shared with other jobs, and
    # bracketing averages the ftlab side over the conditions the seed side ran under.
    sweep = [int(b) for b in args.sweep.split(",") if b.strip()]
    runs["floor"], runs["sweep"] = [], []

    def run(side: str, batch: int | None) -> dict:
        cmd = [sys.executable, __file__, "--side", side, "--model", args.model, "--task", args.task, "--n", str(args.n),
               "--batch-size", "auto" if batch is None else str(batch), "--max-new-tokens", str(args.max_new_tokens),
               "--backend", args.backend, "--threads", str(args.threads)]
        print(f"running {side} side (batch {batch or 'auto'}) ...", file=sys.stderr, flush=True)
        start_load = os.getloadavg()[0]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(1)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["load_average_1min"] = [start_load, os.getloadavg()[0]]
        res["batch_size"] = res.get("batch_size_used") or batch
        if "wall_s" in res:
            print(f"  {side}: {res['wall_s']:.1f} s wall, {res['cpu_s']:.1f} s CPU", file=sys.stderr, flush=True)
        return res

    for side in ("ftlab", "seed", "ftlab"):
        runs[side].append(run(side, args.batch_size))
    headline_batch = runs["ftlab"][-1]["batch_size"]  # what auto chose, when it was auto
    runs["floor"].append(run("floor", headline_batch))
    for b in sweep:
        runs["sweep"].append(run("ftlab", b))
        runs["floor"].append(run("floor", b))

    def mean(side, key):
        return sum(r[key] for r in runs[side]) / len(runs[side])

    kind = get_task(args.task).answer_kind
    seed = runs["seed"][0]
    n = len(seed["responses"])
    identical = []
    for ours in runs["ftlab"]:
        same_text = sum(a == b for a, b in zip(seed["responses"], ours["responses"]))
        same_answer = sum(extract(a, kind) == extract(b, kind) for a, b in zip(seed["responses"], ours["responses"]))
        # ftlab stops at a closed box, the seed loop keeps going: equal up to ftlab's stop point.
        same_prefix = sum(a.startswith(b) for a, b in zip(seed["responses"], ours["responses"]))
        identical.append((same_text / n, same_answer / n, same_prefix / n))
    ours = runs["ftlab"][-1]

    def floor_s(run, floor) -> float:
        """The least matmul time any exact fp32 implementation needs for this run's tokens."""
        tok = run["tokens"]
        decode = tok["new_tokens"] - n  # each row's first token comes out of its prefill
        return (tok["prefill_tokens"] * floor["body_s_per_token_prefill"]
                + decode * (floor["body_s_per_token_decode"] + floor["head_s_per_token_decode"])
                + n * floor["head_s_per_token_decode"])

    floors = {r["batch_size"]: r for r in runs["floor"]}
    sweep_rows = [{"batch_size": headline_batch, "wall_s": mean("ftlab", "wall_s"), "cpu_s": mean("ftlab", "cpu_s"),
                   "speedup_wall": seed["wall_s"] / mean("ftlab", "wall_s"),
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in runs["ftlab"]),
                   "matmul_floor_s": floor_s(ours, floors[headline_batch])}]
    for r in runs["sweep"]:
        same = sum(a == b for a, b in zip(seed["responses"], r["responses"])) / n
        same_answer = sum(extract(a, kind) == extract(b, kind) for a, b in zip(seed["responses"], r["responses"])) / n
        sweep_rows.append({"batch_size": r["batch_size"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                           "speedup_wall": seed["wall_s"] / r["wall_s"], "peak_rss_mb": r["peak_rss_mb"],
                           "matmul_floor_s": floor_s(r, floors[r["batch_size"]]),
                           "identical_responses": same, "identical_answers": same_answer})
    for row in sweep_rows:
        row["max_speedup_at_floor"] = seed["wall_s"] / row["matmul_floor_s"]
    summary = {
        "model": args.model, "task": args.task, "n": n, "max_new_tokens": args.max_new_tokens,
        "batch_size": "auto" if args.batch_size is None else args.batch_size, "batch_size_used": headline_batch,
        "backend": args.backend, "threads": args.threads,
        "seed_wall_s": seed["wall_s"], "ftlab_wall_s_runs": [r["wall_s"] for r in runs["ftlab"]],
        "seed_samples_per_s": n / seed["wall_s"], "ftlab_samples_per_s": n / mean("ftlab", "wall_s"),
        "speedup_wall": seed["wall_s"] / mean("ftlab", "wall_s"),
        # The CPU is shared with other jobs: process CPU time is the steadier measure of work done.
        "seed_cpu_s": seed["cpu_s"], "ftlab_cpu_s_runs": [r["cpu_s"] for r in runs["ftlab"]],
        "speedup_cpu_time": seed["cpu_s"] / mean("ftlab", "cpu_s"),
        "seed_peak_rss_mb": seed["peak_rss_mb"], "ftlab_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["ftlab"]),
        "identical_responses_runs": [a for a, _, _ in identical], "identical_answers_runs": [b for _, b, _ in identical],
        "identical_until_early_stop_runs": [c for _, _, c in identical],
        "ftlab_accuracy": ours["accuracy"], "ftlab_new_tokens_mean": ours["new_tokens_mean"],
        "ftlab_stop_reasons": ours["stop_reasons"], "ftlab_tokens": ours["tokens"],
        "batch_sweep": sorted(sweep_rows, key=lambda r: r["batch_size"]),
        "matmul_cost_per_token": runs["floor"],
        "load_average_1min": {"seed": seed["load_average_1min"], "ftlab": [r["load_average_1min"] for r in runs["ftlab"]]},
        "cpu_count": os.cpu_count(),
    }
    if args.out:
        from ftlab.io import atomic_write_json

        atomic_write_json(args.out, summary)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
