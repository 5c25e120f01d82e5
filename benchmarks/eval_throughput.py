#!/usr/bin/env python
"""ftlab's evaluator against a seed-style loop and against lm-evaluation-harness (the peer), on the
same prompts, same model, same greedy decoding, the same torch thread count on every side
(default: every core, which is what each side uses when nobody sets it).

Three comparisons (`--parts`, default all):
- `seed`: the seed repository's loop (one prompt at a time through `model.generate`, fixed
  max_new_tokens), plus a matmul floor: the model's Linear layers timed on this CPU, times the
  tokens ftlab has to compute, i.e. the least time any exact fp32 implementation needs;
- `peer`: lm-evaluation-harness's HF backend (`HFLM.generate_until`) on the same rendered prompts
  with the same token cap, at `batch_size=auto` and at the batch ftlab used;
- `ll`: log-likelihood scoring of the same ARC questions (`arc:ll`): ftlab's evaluator against
  `HFLM.loglikelihood` on exactly the (context, continuation) pairs ftlab scores, lm-eval at
  `batch_size=auto`.

Each side runs in its own subprocess (clean peak RSS, no shared allocator state), one after the
other. The ftlab side is the real `ftlab.eval.evaluator.evaluate` (generation or scoring, sample
lines and metrics JSON written to a temporary workspace). Model loading is excluded everywhere.
Reported: wall time, samples/s, peak RSS, and the share of identical extracted answers (or
identical predicted options).

    uv run python benchmarks/eval_throughput.py --n 200 --sweep 32,64      # ftlab at its default batch (auto)
    uv run python benchmarks/eval_throughput.py --n 200 --threads 1 --sweep 64 --parts seed  # one core each
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


def _timed_evaluate(args, overrides: list[str]):
    """The real evaluator in a temporary workspace, model loading excluded from the timing:
    (document, sample lines by index, generator, wall s, CPU s, peak RSS MB)."""
    import torch

    from ftlab.config import EvalRunConfig, load_config
    from ftlab.env import PeakMemory
    from ftlab.eval.evaluator import evaluate, metrics_paths, model_file_name
    from ftlab.eval.backends.registry import build_generator
    from ftlab.io import read_jsonl
    from ftlab.paths import Workspace

    torch.set_num_threads(args.threads)
    cfg = load_config(EvalRunConfig, overrides=[*overrides, f"eval.threads={args.threads}", "model.dtype=fp32"])
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        generator = build_generator(args.model, cfg, ws)  # model load, excluded from the timing
        with PeakMemory() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            doc = evaluate(args.model, cfg, ws, generator=generator)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        lines = sorted(read_jsonl(metrics_paths(ws, model_file_name(args.model))[1]), key=lambda r: r["index"])
    return doc, lines, generator, wall, cpu, mem.peak_rss_mb


def side_ftlab(args) -> dict:
    from ftlab.eval.backends.kv_cache import shared_prefix_length

    doc, lines, generator, wall, cpu, peak = _timed_evaluate(args, [
        f"eval.datasets={args.task}", f"eval.limit={args.n}", f"eval.batch_size={args.batch_size}",
        f"eval.max_new_tokens={args.max_new_tokens}", f"eval.backend={args.backend}"])
    block = doc["datasets"][args.task]
    # Token counts for the matmul floor: what ftlab must prefill (beyond the shared prefix it
    # computes once) and decode.
    encoded = generator.encode(_prompts(args.task, args.n, generator.tokenizer)[1])
    prefix = shared_prefix_length(encoded)  # the rule the generator applies
    tokens = {"prompt_tokens": sum(len(e) for e in encoded), "shared_prefix_tokens": prefix,
              "prefill_tokens": sum(len(e) - prefix for e in encoded),
              "new_tokens": sum(int(r["new_tokens"]) for r in lines)}
    return {"responses": [r["response"] for r in lines], "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak,
            "tokens": tokens, "batch_size_used": block["batch_size"],
            "accuracy": block["metrics"]["accuracy"], "new_tokens_mean": block["new_tokens"]["mean"],
            "stop_reasons": {k: sum(1 for r in lines if r.get("stop_reason") == k) for k in ("box", "eos", "length")}}


def _hflm(model, tok, batch: int | None, max_length: int):
    """lm-eval's HF model class on the loaded model. Its batch_size=auto probes 64-row forwards
    of max_length tokens with a log-softmax over the vocabulary; at the model's own limit (8192
    for SmolLM2) that alone needs about 100 GB here, and at 512 it took 125 s and 19 GB on a
    2-layer model. So lm-eval gets max_length = the longest sequence of this run, the most
    favourable setting for it (nothing is truncated)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, batch_size="auto" if batch is None else batch,
                max_length=max_length, device=str(next(model.parameters()).device))


def _timed_peer_call(fn, batch: int | None) -> dict:
    """Runs an lm-eval call, timing it; lm-eval prints the batch size auto settles on to stdout,
    which carries this side's JSON, so it is captured and parsed instead."""
    import contextlib
    import io
    import re

    from ftlab.env import PeakMemory

    printed = io.StringIO()
    with PeakMemory() as mem, contextlib.redirect_stdout(printed):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    detected = [int(b) for b in re.findall(r"Determined largest batch size: (\d+)", printed.getvalue(), flags=re.I)]
    return {"out": out, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": mem.peak_rss_mb,
            "batch_size_used": batch if batch is not None else (max(detected) if detected else None)}


def side_lmeval(args) -> dict:
    """lm-evaluation-harness's HF backend: generate_until on the prompts ftlab renders."""
    import torch
    from lm_eval.api.instance import Instance

    from ftlab.models.sources import load_model

    torch.set_num_threads(args.threads)
    model, tok, _ = load_model(args.model, dtype="fp32")
    _, prompts = _prompts(args.task, args.n, tok)
    longest = max(len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"])
    lm = _hflm(model, tok, args.batch_size, longest + args.max_new_tokens)
    requests = [Instance("generate_until", {}, (p, {"until": [], "max_gen_toks": args.max_new_tokens, "do_sample": False}), i)
                for i, p in enumerate(prompts)]
    res = _timed_peer_call(lambda: lm.generate_until(requests, disable_tqdm=True), args.batch_size)
    res["responses"] = res.pop("out")
    res["max_length"] = lm.max_length
    return res


def _ll_examples(args):
    from ftlab.data.loading import load_examples

    return load_examples("arc", "test", limit=args.ll_n, source_dir=args.source_dir)


def side_ftlab_ll(args) -> dict:
    """ftlab's evaluator on `arc:ll`."""
    overrides = ["eval.datasets=[arc:ll]", f"eval.limit={args.ll_n}"]
    if args.source_dir:
        overrides.append(f"eval.source_dir={args.source_dir}")
    doc, lines, _, wall, cpu, peak = _timed_evaluate(args, overrides)
    block = doc["datasets"]["arc:ll"]
    return {"logprobs": [r["choice_logprobs"] for r in lines], "lengths": [r["choice_lengths"] for r in lines],
            "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "prompt_format": block["prompt_format"],
            "questions_per_forward": block["batch_size"], "kv_cache_reuse": block["kv_cache_reuse"],
            "acc": block["metrics"]["acc"], "acc_norm": block["metrics"]["acc_norm"]}


def side_lmeval_ll(args) -> dict:
    """lm-evaluation-harness's HFLM.loglikelihood on the (context, continuation) pairs ftlab scores."""
    import torch
    from lm_eval.api.instance import Instance

    from ftlab.data.tasks import get_task
    from ftlab.eval.scoring.choice_prompts import build_item, render
    from ftlab.eval.scoring.modes import SCORING_MODES
    from ftlab.eval.prompt_format import resolve_prompt_format
    from ftlab.models.sources import load_model

    torch.set_num_threads(args.threads)
    model, tok, _ = load_model(args.model, dtype="fp32")
    # The evaluator's own choice at eval.prompt_format=auto.
    chat = resolve_prompt_format("auto", tok, auto=SCORING_MODES.get("loglikelihood").auto_prompt_format) == "chat"
    task = get_task("arc")
    rendered = [render(build_item(task, ex), [], chat=chat, tokenizer=tok) for ex in _ll_examples(args)]
    requests, owner = [], []
    for q, (context, conts) in enumerate(rendered):
        for c in conts:
            requests.append(Instance("loglikelihood", {}, (context, c), len(requests)))
            owner.append(q)
    longest = max(len(ids) for ids in tok([c + x for c, xs in rendered for x in xs], add_special_tokens=False)["input_ids"])
    lm = _hflm(model, tok, args.batch_size, longest + 1)
    res = _timed_peer_call(lambda: lm.loglikelihood(requests, disable_tqdm=True), args.batch_size)
    logprobs: list[list[float]] = [[] for _ in rendered]
    for q, (ll, _) in zip(owner, res.pop("out")):
        logprobs[q].append(float(ll))
    res["logprobs"] = logprobs
    res["max_length"] = lm.max_length
    return res


SIDES = {"seed": side_seed, "ftlab": side_ftlab, "floor": side_floor, "lmeval": side_lmeval,
         "ftlab_ll": side_ftlab_ll, "lmeval_ll": side_lmeval_ll}
PARTS = ("seed", "peer", "ll")


def _batch_arg(text: str) -> int | None:
    return None if text in ("auto", "None") else int(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--task", default="synthetic-arith")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch-size", type=_batch_arg, default=None,
                   help="ftlab rows generated together (default: auto, the evaluator's default)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="every side (default: the task's)")
    p.add_argument("--backend", default="hf", help="ftlab generation backend (hf = continuous batching, hf-generate)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads, the same on every side (default: every core this process may use, "
                        "which is what each side uses when nobody sets it)")
    p.add_argument("--sweep", default="", help="extra ftlab batch sizes to time after the main runs, e.g. 32,128")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comparisons to run, of {', '.join(PARTS)}")
    p.add_argument("--ll-n", type=int, default=200, help="ARC questions of the log-likelihood comparison")
    shared = REPO.parent / "shared" / "datasets"
    p.add_argument("--source-dir", default=str(shared) if shared.is_dir() else None,
                   help="folder with test-ai2_arc.parquet (default: ../shared/datasets when present)")
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="write the comparison JSON here")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.max_new_tokens is None:
        from ftlab.data.tasks import get_task

        args.max_new_tokens = get_task(args.task).max_new_tokens
    if args.side:  # child process
        print(json.dumps(SIDES[args.side](args)))
        return 0
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; valid: {', '.join(PARTS)}")

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

    def run(side: str, batch: int | None) -> dict:
        cmd = [sys.executable, __file__, "--side", side, "--model", args.model, "--task", args.task, "--n", str(args.n),
               "--batch-size", "auto" if batch is None else str(batch), "--max-new-tokens", str(args.max_new_tokens),
               "--backend", args.backend, "--threads", str(args.threads), "--ll-n", str(args.ll_n)]
        if args.source_dir:
            cmd += ["--source-dir", args.source_dir]
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

    summary: dict = {"model": args.model, "threads": args.threads, "cpu_count": os.cpu_count(), "parts": parts}
    if "seed" in parts or "peer" in parts:
        summary.update(generation_comparison(args, parts, run))
    if "ll" in parts:
        summary["loglikelihood"] = loglikelihood_comparison(args, run)
    if args.out:
        from ftlab.io import atomic_write_json

        atomic_write_json(args.out, summary)
    print(json.dumps(summary, indent=2))
    return 0


def _same_answers(kind: str, a: list[str], b: list[str]) -> float:
    from ftlab.eval.scoring.answer_kinds import extract

    return sum(extract(x, kind) == extract(y, kind) for x, y in zip(a, b)) / len(a)


def generation_comparison(args, parts: list[str], run) -> dict:
    """ftlab's evaluator vs the seed loop and/or lm-eval's generate_until, same prompts."""
    from ftlab.data.tasks import get_task

    kind = get_task(args.task).answer_kind
    runs: dict[str, list[dict]] = {"ftlab": [], "floor": [], "sweep": []}
    # With the seed loop, ftlab runs before and after it: the CPU is shared with other jobs, and
    # bracketing averages the ftlab side over the conditions the (long) seed side ran under.
    runs["ftlab"].append(run("ftlab", args.batch_size))
    out: dict = {"task": args.task, "n": len(runs["ftlab"][0]["responses"]), "max_new_tokens": args.max_new_tokens,
                 "batch_size": "auto" if args.batch_size is None else args.batch_size, "backend": args.backend}
    n = out["n"]
    if "seed" in parts:
        seed = run("seed", args.batch_size)
        runs["ftlab"].append(run("ftlab", args.batch_size))
    ours = runs["ftlab"][-1]
    headline_batch = ours["batch_size"]  # what auto chose, when it was auto

    def mean(key):
        return sum(r[key] for r in runs["ftlab"]) / len(runs["ftlab"])

    out.update({
        "batch_size_used": headline_batch, "ftlab_wall_s_runs": [r["wall_s"] for r in runs["ftlab"]],
        "ftlab_samples_per_s": n / mean("wall_s"), "ftlab_cpu_s_runs": [r["cpu_s"] for r in runs["ftlab"]],
        "ftlab_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["ftlab"]), "ftlab_accuracy": ours["accuracy"],
        "ftlab_new_tokens_mean": ours["new_tokens_mean"], "ftlab_stop_reasons": ours["stop_reasons"],
        "ftlab_tokens": ours["tokens"],
    })
    if "peer" in parts:
        peer_runs = []
        for batch in (None, headline_batch):
            res = run("lmeval", batch)
            peer_runs.append({
                "batch_size": "auto" if batch is None else batch, "batch_size_used": res["batch_size_used"],
                "wall_s": res["wall_s"], "cpu_s": res["cpu_s"], "samples_per_s": n / res["wall_s"],
                "peak_rss_mb": res["peak_rss_mb"], "max_length": res["max_length"],
                "ftlab_speedup_wall": res["wall_s"] / mean("wall_s"),
                "identical_answers_runs": [_same_answers(kind, res["responses"], r["responses"]) for r in runs["ftlab"]],
                # ftlab stops at a closed box, lm-eval only at EOS or the cap: equal up to ftlab's stop.
                "identical_until_early_stop_runs": [
                    sum(a.startswith(b) for a, b in zip(res["responses"], r["responses"])) / n for r in runs["ftlab"]],
                "load_average_1min": res["load_average_1min"],
            })
        out["lm_eval_generate_until"] = peer_runs
        out["speedup_vs_lm_eval_wall"] = min(r["ftlab_speedup_wall"] for r in peer_runs)
    if "seed" not in parts:
        return out

    runs["floor"].append(run("floor", headline_batch))
    sweep = [int(b) for b in args.sweep.split(",") if b.strip()]
    for b in sweep:
        runs["sweep"].append(run("ftlab", b))
        runs["floor"].append(run("floor", b))
    identical = []
    for r in runs["ftlab"]:
        same_text = sum(a == b for a, b in zip(seed["responses"], r["responses"]))
        # ftlab stops at a closed box, the seed loop keeps going: equal up to ftlab's stop point.
        same_prefix = sum(a.startswith(b) for a, b in zip(seed["responses"], r["responses"]))
        identical.append((same_text / n, _same_answers(kind, seed["responses"], r["responses"]), same_prefix / n))

    def floor_s(run_, floor) -> float:
        """The least matmul time any exact fp32 implementation needs for this run's tokens."""
        tok = run_["tokens"]
        decode = tok["new_tokens"] - n  # each row's first token comes out of its prefill
        return (tok["prefill_tokens"] * floor["body_s_per_token_prefill"]
                + decode * (floor["body_s_per_token_decode"] + floor["head_s_per_token_decode"])
                + n * floor["head_s_per_token_decode"])

    floors = {r["batch_size"]: r for r in runs["floor"]}
    sweep_rows = [{"batch_size": headline_batch, "wall_s": mean("wall_s"), "cpu_s": mean("cpu_s"),
                   "speedup_wall": seed["wall_s"] / mean("wall_s"), "peak_rss_mb": out["ftlab_peak_rss_mb"],
                   "matmul_floor_s": floor_s(ours, floors[headline_batch])}]
    for r in runs["sweep"]:
        sweep_rows.append({"batch_size": r["batch_size"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                           "speedup_wall": seed["wall_s"] / r["wall_s"], "peak_rss_mb": r["peak_rss_mb"],
                           "matmul_floor_s": floor_s(r, floors[r["batch_size"]]),
                           "identical_responses": sum(a == b for a, b in zip(seed["responses"], r["responses"])) / n,
                           "identical_answers": _same_answers(kind, seed["responses"], r["responses"])})
    for row in sweep_rows:
        row["max_speedup_at_floor"] = seed["wall_s"] / row["matmul_floor_s"]
    out.update({
        "seed_wall_s": seed["wall_s"], "seed_samples_per_s": n / seed["wall_s"],
        "speedup_wall": seed["wall_s"] / mean("wall_s"),
        # The CPU is shared with other jobs: process CPU time is the steadier measure of work done.
        "seed_cpu_s": seed["cpu_s"], "speedup_cpu_time": seed["cpu_s"] / mean("cpu_s"),
        "seed_peak_rss_mb": seed["peak_rss_mb"],
        "identical_responses_runs": [a for a, _, _ in identical], "identical_answers_runs": [b for _, b, _ in identical],
        "identical_until_early_stop_runs": [c for _, _, c in identical],
        "batch_sweep": sorted(sweep_rows, key=lambda r: r["batch_size"]),
        "matmul_cost_per_token": runs["floor"],
        "load_average_1min": {"seed": seed["load_average_1min"], "ftlab": [r["load_average_1min"] for r in runs["ftlab"]]},
    })
    return out


def loglikelihood_comparison(args, run) -> dict:
    """ftlab's `arc:ll` against lm-eval's loglikelihood on the same (context, continuation) pairs:
    lm-eval at batch_size=auto (its probe for the batch size included, as a user pays it) and
    again at the batch size auto settled on, given explicitly (no probe)."""
    import numpy as np

    from ftlab.eval.scoring.loglikelihood import predictions

    ours = run("ftlab_ll", None)
    peers = [run("lmeval_ll", None)]
    if peers[0].get("batch_size_used"):
        peers.append(run("lmeval_ll", peers[0]["batch_size_used"]))
    n = len(ours["logprobs"])

    def agreement(peer: dict) -> dict:
        same = same_norm = 0
        diff = 0.0
        for mine, theirs, lengths in zip(ours["logprobs"], peer["logprobs"], ours["lengths"]):
            a, b = predictions(mine, lengths), predictions(theirs, lengths)
            same += a[0] == b[0]
            same_norm += a[1] == b[1]
            diff = max(diff, float(np.max(np.abs(np.asarray(mine) - np.asarray(theirs)))))
        return {"identical_predictions": same / n, "identical_norm_predictions": same_norm / n,
                "max_abs_logprob_diff": diff}

    return {
        "task": "arc", "n": n, "prompt_format": ours["prompt_format"], "kv_cache_reuse": ours["kv_cache_reuse"],
        "ftlab": {"wall_s": ours["wall_s"], "cpu_s": ours["cpu_s"], "samples_per_s": n / ours["wall_s"],
                  "peak_rss_mb": ours["peak_rss_mb"], "questions_per_forward": ours["questions_per_forward"],
                  "acc": ours["acc"], "acc_norm": ours["acc_norm"], "load_average_1min": ours["load_average_1min"]},
        "lm_eval": [{"batch_size": "auto" if i == 0 else peer["batch_size_used"],
                     "batch_size_used": peer["batch_size_used"], "wall_s": peer["wall_s"], "cpu_s": peer["cpu_s"],
                     "samples_per_s": n / peer["wall_s"], "peak_rss_mb": peer["peak_rss_mb"],
                     "max_length": peer["max_length"], "load_average_1min": peer["load_average_1min"],
                     "ftlab_speedup_samples_per_s": peer["wall_s"] / ours["wall_s"], **agreement(peer)}
                    for i, peer in enumerate(peers)],
    }


if __name__ == "__main__":
    sys.exit(main())
