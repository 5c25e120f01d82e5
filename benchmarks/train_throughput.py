"""Training throughput: ftlab's defaults vs plain TRL `SFTTrainer` defaults, side by side.

Both fine-tune SmolLM2-135M-Instruct with LoRA r=16 (alpha 32, dropout 0.05, all linear layers) on the same
synthetic-arith rows (prompt-completion, built by ftlab's prompt builder), the same batch size and
the same number of optimizer steps. Each runs in its own subprocess with one torch thread, one
after the other; each measures the training loop the same way (TRL's non-padding token count over
Trainer's `train_runtime`, peak RSS sampled by ftlab.env.PeakMemory around `trainer.train()`).

    OMP_NUM_THREADS=1 uv run python benchmarks/train_throughput.py            # 24 steps, batch 8
    OMP_NUM_THREADS=1 uv run python benchmarks/train_throughput.py --steps 8  # quick look

Writes the JSON results to --out (default benchmarks/train_throughput.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
DATASET = "synthetic-arith"
LORA_DROPOUT = 0.05  # the same adapter in both runs (ftlab's default dropout; peft's default is 0)


def _rows(n: int) -> list[dict]:
    from ftlab.data.loading import load_examples
    from ftlab.data.prompts import build_messages, build_target

    examples = load_examples(DATASET, "train", limit=n)
    return [{"prompt": build_messages(DATASET, e),
             "completion": [{"role": "assistant", "content": build_target(DATASET, e)}]} for e in examples]


def run_trl(steps: int, batch: int, out: Path) -> dict:
    """Plain TRL: model path, LoRA config, dataset; every other setting is TRL's default."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from ftlab.env import PeakMemory
    from ftlab.models.sources import builtin_folder
    from ftlab.train.compat import ensure_peft_usable

    torch.set_num_threads(1)
    ensure_peft_usable()  # environment fix only (gptqmodel without optimum), no behaviour change
    ds = Dataset.from_list(_rows(steps * batch))
    with tempfile.TemporaryDirectory() as tmp:
        # use_cpu: TRL's default bf16=True refuses to start on a CPU-only machine without it.
        args = SFTConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch, report_to=[],
                         save_strategy="no", disable_tqdm=True, use_cpu=True)
        trainer = SFTTrainer(model=str(builtin_folder(MODEL)), args=args, train_dataset=ds,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=LORA_DROPOUT,
                                                    target_modules="all-linear", task_type="CAUSAL_LM"))
        with PeakMemory() as mem:
            cpu_start = time.process_time()
            metrics = trainer.train().metrics
            cpu_time = time.process_time() - cpu_start
    tokens = int(trainer._total_train_tokens)
    return {"name": "TRL SFTTrainer defaults", "tokens": tokens, "train_runtime_s": metrics["train_runtime"],
            "tokens_per_s": tokens / metrics["train_runtime"], "peak_rss_mb": mem.peak_rss_mb,
            "cpu_time_s": cpu_time, "tokens_per_cpu_s": tokens / cpu_time,
            "settings": {"gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16,
                         "sampler": args.train_sampling_strategy, "padding_free": args.padding_free,
                         "model_dtype": str(trainer.model.get_base_model().dtype)}}


def run_ftlab(steps: int, batch: int, out: Path, overrides: list[str], trl_head: bool = False) -> dict:
    from ftlab.config import TrainRunConfig, load_config
    from ftlab.paths import Workspace
    from ftlab.schema import load_training_metadata
    from ftlab.train.runner import run_training

    if trl_head:  # ablation: keep TRL's CPU head, which scores every position
        import ftlab.train.fast_head as fast_head

        fast_head.compact_fused_head = lambda model: False
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(TrainRunConfig, None, [
            f"model.name={MODEL}", f"data.dataset={DATASET}", f"data.trunc_train={steps * batch}",
            "data.val_size=0", f"train.max_steps={steps}", f"train.batch_size={batch}", "peft.method=LoRa",
            "peft.r=16", "peft.alpha=32", f"peft.dropout={LORA_DROPOUT}", "train.report_to=none", "train.threads=1",
            *overrides,
        ])
        meta = load_training_metadata(run_training(cfg, Workspace(Path(tmp))))
    res, args = meta["results"], meta["training_args"]
    label = [*overrides, *(["TRL head"] if trl_head else [])]
    return {"name": "ftlab defaults" + (f" ({', '.join(label)})" if label else ""),
            "tokens": res["tokens"], "train_runtime_s": res["train_runtime_s"], "tokens_per_s": res["tokens_per_s"],
            "peak_rss_mb": res["peak_memory"]["peak_rss_mb"],
            "cpu_time_s": res["cpu_time_s"], "tokens_per_cpu_s": res["tokens"] / res["cpu_time_s"],
            "settings": {k: args[k] for k in ("gradient_checkpointing", "mixed_precision", "group_by_length",
                                              "padding_free", "packing", "attn_implementation", "lm_head_scoring")}}


def _child(kind: str, steps: int, batch: int, out: Path, overrides: list[str], trl_head: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    result = run_trl(steps, batch, out) if kind == "trl" else run_ftlab(steps, batch, out, overrides, trl_head)
    result["process_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from ftlab.io import atomic_write_json

    atomic_write_json(out, result)


def _spawn(kind: str, steps: int, batch: int, overrides: list[str], trl_head: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                   HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        cmd = [sys.executable, __file__, "--child", kind, "--steps", str(steps), "--batch", str(batch),
               "--child-out", str(out), *[f"--set={o}" for o in overrides], *(["--trl-head"] if trl_head else [])]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
        result = json.loads(out.read_text())
        result["process_wall_s"] = time.perf_counter() - start
        return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "train_throughput.json")
    p.add_argument("--set", action="append", default=[],
                   help="extra ftlab override (ablations), e.g. --set train.mixed_precision=no")
    p.add_argument("--only", choices=["trl", "ftlab"], default=None)
    p.add_argument("--trl-head", action="store_true", help="ablation: ftlab without its compact CPU LM head")
    p.add_argument("--child", choices=["trl", "ftlab"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a.child, a.steps, a.batch, a.child_out, a.set, a.trl_head)
        return 0
    from ftlab.env import environment_info

    from ftlab.models.sources import builtin_folder

    builtin_folder(MODEL)  # convert once outside the timed children
    results = {}
    for kind in ("trl", "ftlab"):
        if a.only and kind != a.only:
            continue
        print(f"running {kind} ...", flush=True)
        results[kind] = (_spawn(kind, a.steps, a.batch, a.set, a.trl_head) if kind == "ftlab"
                         else _spawn(kind, a.steps, a.batch, []))
    env = environment_info()
    load = os.getloadavg()
    doc = {"steps": a.steps, "batch": a.batch, "model": MODEL, "dataset": DATASET, "results": results,
           "load_avg_after": load, "cpu_count": env["cpu_count"], "packages": env["packages"]}
    if "trl" in results and "ftlab" in results:
        doc["speedup_tokens_per_s"] = results["ftlab"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
        doc["speedup_tokens_per_cpu_s"] = results["ftlab"]["tokens_per_cpu_s"] / results["trl"]["tokens_per_cpu_s"]
    from ftlab.io import atomic_write_json

    atomic_write_json(a.out, doc)
    print("\n| run | tokens | train wall (s) | tokens/s | CPU time (s) | tokens/CPU-s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in results.values():
        print(f"| {r['name']} | {r['tokens']} | {r['train_runtime_s']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{r['cpu_time_s']:.1f} | {r['tokens_per_cpu_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    if "speedup_tokens_per_s" in doc:
        print(f"\nftlab / TRL: {doc['speedup_tokens_per_s']:.2f}x tokens/s (wall), "
              f"{doc['speedup_tokens_per_cpu_s']:.2f}x tokens per CPU-second (load average after: {load[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
