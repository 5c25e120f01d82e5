"""`lmeval:` tasks: ftlab's engine against lm-evaluation-harness's HF backend, same requests, one run.

Both sides run lm-eval's own registry task (prompts, few-shot examples, stop sequences, filters,
metrics) on the same loaded model (SmolLM2-135M-Instruct, fp32, the same torch threads), with the
task's dataset pointed at local files (../shared/datasets; ARC converted to the hub's columns):
- `ftlab`: `ftlab evaluate --datasets lmeval:TASK` in-process (its runner: lm-eval builds the
  requests, ftlab.eval.lmeval.model answers them, lm-eval scores), timed around the whole task;
- `lm-eval`: `lm_eval.simple_evaluate` with its HF model class (HFLM) around the same model, at
  lm-eval's default batch size (1), at a fixed batch, and (log-likelihood only) at `auto`: for
  generation its batch-size probe runs at the model's full context (8192 for SmolLM2) and had not
  finished after 7 minutes on 2 cores.
Both are asked the same requests (lm-eval builds them on both sides); the script checks that
every per-document answer, filtered answer and metric is the same, and reports wall seconds and
the ratio. Nothing is reused between runs (a fresh workspace and request cache per ftlab run).

    OMP_NUM_THREADS=2 uv run python benchmarks/lmeval_tasks.py --out benchmarks/lmeval_tasks.results.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _arc_rows():
    import pandas as pd

    out = []
    for i, r in pd.read_parquet(SHARED / "test-ai2_arc.parquet").iterrows():
        parts = re.split(r"\s+(?=[A-E1-5]\.\s)", str(r["question"]).strip())
        out.append({"id": str(i), "question": parts[0],
                    "choices": {"text": [p[2:].strip() for p in parts[1:]], "label": [p[0] for p in parts[1:]]},
                    "answerKey": str(r["answer"])})
    return out


def data_files(tmp: Path) -> dict:
    arc = tmp / "arc-test.jsonl"
    arc.write_text("".join(json.dumps(r) + "\n" for r in _arc_rows()))
    return {"arc_challenge": {"test": str(arc)},
            "gsm8k": {"test": str(SHARED / "gsm8k-test.jsonl"), "train": str(SHARED / "gsm8k-train.jsonl")}}


SPLITS_ABSENT = {"arc_challenge": ("training_split", "validation_split"), "gsm8k": ()}


def run_ftlab(model, tok, source, task: str, files: dict, n: int, batch: int | None, tmp: Path):
    from ftlab.config import EvalRunConfig, load_config
    from ftlab.eval.backends.hf import HFGenerator
    from ftlab.eval.evaluator import evaluate, metrics_paths
    from ftlab.io import read_jsonl
    from ftlab.paths import Workspace

    ws = Workspace(Path(tempfile.mkdtemp(dir=tmp)))
    cfg = load_config(EvalRunConfig, overrides=[
        f"eval.datasets=[lmeval:{task}]", f"eval.limit={n}", f"eval.lmeval_data={json.dumps({task: files[task]})}",
        f"eval.batch_size={batch if batch is not None else 'None'}", "eval.bootstrap_samples=0"])
    gen = HFGenerator(model, tok, progress=False, source=source)
    t0 = time.perf_counter()
    doc = evaluate("smollm2-135m-instruct", cfg, ws, generator=gen, model_name="m")
    wall = time.perf_counter() - t0
    block = doc["datasets"][f"lmeval:{task}"]
    lines = sorted(read_jsonl(metrics_paths(ws, "m")[1]), key=lambda r: r["index"])
    return {"wall_s": wall, "task_s": block["runtime_s"], "metrics": block["lmeval"]["tasks"][task]["metrics"],
            "requests": block["requests_this_run"], "batch_size": batch, "rows": gen.batch_size_used}, lines


def run_lm_eval(model, tok, task: str, files: dict, n: int, batch, tmp: Path):
    import lm_eval
    import yaml
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    override = {"include": str(manager.task_index[task].yaml_path), "task": task, "dataset_path": "json",
                "dataset_name": None, "dataset_kwargs": {"data_files": files[task]},
                **{k: None for k in SPLITS_ABSENT[task]}}
    path = Path(tempfile.mkdtemp(dir=tmp)) / f"{task}.yaml"
    path.write_text(yaml.safe_dump(override))
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch, device="cpu")
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[str(path)], task_manager=manager, limit=n, log_samples=True,
                                  bootstrap_iters=0)
    wall = time.perf_counter() - t0
    res = out["results"][task]
    metrics = {(k.split(",")[0] if k.endswith(",none") else k): v for k, v in res.items()
               if "," in k and "_stderr" not in k}
    return {"wall_s": wall, "metrics": metrics, "batch_size": batch}, out["samples"][task]


def same_answers(lines: list[dict], samples: list[dict], generated: bool) -> dict:
    """Per-document agreement: generated text (or each option's log-likelihood within 2e-3 and the
    same greedy flag), filtered answers and per-document metrics."""
    peer: dict = {}
    for s in samples:
        peer.setdefault(s["doc_id"], {})[s["filter"]] = s
    differ = []
    max_ll_diff = 0.0
    for ln in lines:
        docs = peer.get(ln["doc_id"], {})
        ok = set(docs) == set(ln["filtered"])
        for filt, s in docs.items():
            if generated:
                ok &= ln["response"] == s["resps"][0][0] and ln["filtered"][filt] == s["filtered_resps"]
            else:
                mine, theirs = ln["filtered"][filt], s["filtered_resps"]
                ok &= [m[1] for m in mine] == [t[1] for t in theirs]
                d = max(abs(m[0] - t[0]) for m, t in zip(mine, theirs))
                max_ll_diff = max(max_ll_diff, d)
                ok &= d <= 2e-3 + 1e-4 * max(abs(t[0]) for t in theirs)
            for metric in s["metrics"]:
                ok &= ln["metrics"][metric if filt == "none" else f"{metric},{filt}"] == s[metric]
        if not ok:
            differ.append(ln["doc_id"])
    return {"documents": len(lines), "differ": differ, "max_loglikelihood_diff": max_ll_diff if not generated else None}


def answers(lines: list[dict]) -> list:
    """ftlab's per-document answers: the generated text, or the options' scored log-likelihoods."""
    return [ln.get("response") or ln["filtered"] for ln in lines]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arc-n", type=int, default=200)
    ap.add_argument("--gsm8k-n", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16, help="the fixed batch both sides also run at")
    ap.add_argument("--tasks", default="arc_challenge,gsm8k", help="comma-separated: arc_challenge, gsm8k")
    ap.add_argument("--sweep", default="",
                    help="comma-separated row counts: ftlab alone at each, after the comparison (how auto's rows were chosen)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        sweep = [int(b) for b in args.sweep.split(",") if b]
    except ValueError:
        ap.error(f"--sweep: comma-separated integers, not {args.sweep!r}")
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - {"arc_challenge", "gsm8k"})
    if unknown:
        ap.error(f"--tasks: unknown {unknown}; choose from arc_challenge, gsm8k")

    import torch

    from ftlab.console import setup
    from ftlab.models.sources import load_model

    setup(quiet=True)
    torch.manual_seed(0)
    model, tok, source = load_model("smollm2-135m-instruct", dtype="fp32")
    results = {"model": "smollm2-135m-instruct", "dtype": "fp32", "threads": torch.get_num_threads(),
               "lm_eval": __import__("importlib.metadata").metadata.version("lm_eval"), "tasks": {}}
    from ftlab.eval.lmeval.tasks import resolve

    resolve("lmeval:gsm8k")  # lm-eval's task index, built once per process (lm-eval's side builds it before timing too)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = data_files(tmp)
        for task, n, generated in (("arc_challenge", args.arc_n, False), ("gsm8k", args.gsm8k_n, True)):
            if task not in tasks:
                continue
            row = {"n": n, "ftlab": [], "lm_eval": []}
            for batch in (None, args.batch):
                res, lines = run_ftlab(model, tok, source, task, files, n, batch, tmp)
                row["ftlab"].append(res)
                print(f"{task}: ftlab batch={batch or 'auto'} {res['wall_s']:.1f} s", file=sys.stderr)
            for batch in ((1, args.batch) if generated else (1, "auto", args.batch)):
                res, samples = run_lm_eval(model, tok, task, files, n, batch, tmp)
                res["agreement"] = same_answers(lines, samples, generated)
                res["metrics_equal"] = all(abs(res["metrics"][k] - v) < 1e-12 for k, v in row["ftlab"][0]["metrics"].items())
                row["lm_eval"].append(res)
                print(f"{task}: lm-eval batch={batch} {res['wall_s']:.1f} s, differ {res['agreement']['differ']}",
                      file=sys.stderr)
            best_ftlab = min(r["wall_s"] for r in row["ftlab"])
            for r in row["lm_eval"]:
                r["ratio_to_best_ftlab"] = r["wall_s"] / best_ftlab
            row["sweep"] = []
            for batch in sweep:
                res, swept = run_ftlab(model, tok, source, task, files, n, batch, tmp)
                res["same_answers"] = answers(swept) == answers(lines)
                row["sweep"].append(res)
                print(f"{task}: ftlab batch={batch} {res['wall_s']:.1f} s (sweep), same answers {res['same_answers']}",
                      file=sys.stderr)
            results["tasks"][task] = row
            if args.out:  # after each task: a long run leaves what it measured
                Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
