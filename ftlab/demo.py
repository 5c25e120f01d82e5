"""`ftlab demo`: the whole pipeline offline on the built-in SmolLM2-135M-Instruct.

evaluate the base model -> LoRA fine-tune -> 4-bit PTQ of the fine-tune -> the orchestrator
evaluates everything untested -> comparison table, CSV and plots. Every step reuses what is
already finished (a rerun retrains and re-evaluates nothing) unless `--fresh`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ftlab.errors import FtlabError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    model: str = "smollm2-135m-instruct"
    task: str = "synthetic-arith"
    data_dir: str | None = None  # folder of train-*/test-*.parquet for the real tasks
    questions: int = 100  # held-out questions per evaluation
    steps: int = 80  # LoRA optimizer steps
    batch_size: int = 16
    learning_rate: float = 4e-4  # 1e-3 collapsed LoRA r16 to one answer pattern (measured: 10% vs 34%)
    rank: int = 16
    max_length: int = 256
    quant_method: str = "HQQ"
    quant_bits: int = 4
    quant_group_size: int = 64
    threads: int | None = None  # None = all cores

    def validate(self) -> None:
        problems = []
        for name in ("questions", "steps", "batch_size", "rank", "quant_bits", "quant_group_size"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name.replace('_', '-')}={getattr(self, name)} must be positive")
        if self.learning_rate <= 0:
            problems.append(f"--learning-rate={self.learning_rate} must be positive")
        if problems:
            raise FtlabError("; ".join(problems))


# --quick: a smoke run of the same pipeline in about two minutes on a 2-core CPU.
QUICK = {"questions": 24, "steps": 12, "batch_size": 8}


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    p.add_argument("--fresh", action="store_true", help="delete the demo's models and metrics first and redo everything")
    p.add_argument("--task", default=d.task, help="task to fine-tune and evaluate on (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder with train-*/test-*.parquet for arc/boolq/squad_v2/openmath (e.g. ../shared/datasets)")
    p.add_argument("--model", default=d.model, help="base model (default: %(default)s)")
    p.add_argument("--questions", type=int, default=None, help=f"held-out questions per evaluation (default {d.questions})")
    p.add_argument("--steps", type=int, default=None, help=f"LoRA steps (default {d.steps})")
    p.add_argument("--learning-rate", type=float, default=None, help=f"LoRA learning rate (default {d.learning_rate})")
    p.add_argument("--rank", type=int, default=None, help=f"LoRA rank (default {d.rank})")
    p.add_argument("--batch-size", type=int, default=None, help=f"training batch size (default {d.batch_size})")
    p.add_argument("--quant-method", default=d.quant_method, help="post-training method for the fine-tune: HQQ (seconds) or GPTQ (minutes)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    s = DemoSettings(model=args.model, task=args.task, data_dir=args.data_dir, quant_method=args.quant_method,
                     threads=args.threads)
    if args.quick:
        s = replace(s, **QUICK)
    if args.questions is not None:
        s = replace(s, questions=args.questions)
    for name in ("steps", "learning_rate", "rank", "batch_size"):
        if getattr(args, name) is not None:
            s = replace(s, **{name: getattr(args, name)})
    if s.quant_method.upper() == "GPTQ":
        s = replace(s, quant_group_size=128)
    s.validate()
    return s


class Step:
    """Prints `[i/n] title ... result (time)`; the heavy work inside shows its own progress bar."""

    def __init__(self, index: int, total: int, title: str):
        self.label = f"[{index}/{total}] {title}"
        self.t0 = 0.0

    def __enter__(self) -> "Step":
        print(f"{self.label} ...", flush=True)
        self.t0 = time.perf_counter()
        return self

    def done(self, result: str) -> None:
        print(f"{self.label}: {result} ({time.perf_counter() - self.t0:.0f} s)", flush=True)

    def reuse_or_build(self, folder: Path, build) -> Path:
        """A finished folder is reused (folders only appear once complete); otherwise `build()`."""
        if folder.exists():
            self.done(f"reused {folder}")
            return folder
        built = build()
        self.done(f"saved {built}")
        return built

    def __exit__(self, *exc) -> None:
        return None


def _train_cfg(s: DemoSettings, dataset: str | None):
    from ftlab.config import TrainRunConfig, load_config

    overrides = [
        f"model.name={s.model}", f"data.dataset={dataset}", f"peft.method=LoRa", f"peft.r={s.rank}",
        f"train.max_steps={s.steps}", f"train.batch_size={s.batch_size}", f"train.learning_rate={s.learning_rate}",
        f"data.max_length={s.max_length}", "data.val_size=0", "train.merge_after_train=true",
        "train.warmup_ratio=0.05", "train.report_to=tensorboard", "train.logging_steps=5",
    ]
    if s.data_dir:
        overrides.append(f"data.source_dir={s.data_dir}")
    if s.threads:
        overrides.append(f"train.threads={s.threads}")
    return load_config(TrainRunConfig, overrides=overrides)


def _eval_options(s: DemoSettings):
    from ftlab.orchestrate.discovery import EvalOptions

    overrides = []
    if s.data_dir:
        overrides.append(f"eval.source_dir={os.path.abspath(s.data_dir)}")
    return EvalOptions(datasets=[s.task], limit=s.questions, overrides=overrides)


def _names(s: DemoSettings) -> dict[str, str]:
    from ftlab.models.sources import resolve_model
    from ftlab.naming import build_run_name, peft_tag, with_quant_tag
    from ftlab.quant.spec import QuantizationSpec, tag_quant

    base = resolve_model(s.model).base_name
    snapshot = build_run_name(base, None).render()
    tuned = build_run_name(base, s.task, "SFT", peft_tag("LoRa", s.rank)).render()
    spec = QuantizationSpec(method=s.quant_method.upper(), bits=s.quant_bits, group_size=s.quant_group_size)
    return {"base": snapshot, "tuned": tuned, "quantized": with_quant_tag(tuned, tag_quant(spec))}


def _remove_demo_outputs(ws, names: dict[str, str]) -> None:
    from ftlab.eval.evaluator import metrics_paths

    for name in names.values():
        shutil.rmtree(ws.models_dir / name, ignore_errors=True)
        for p in metrics_paths(ws, name):
            for f in p.parent.glob(p.name + "*"):
                f.unlink()
        err = ws.metrics_dir / f"{name}.error.json"
        err.unlink(missing_ok=True)


def _accuracy(ws, name: str, task: str) -> float | None:
    from ftlab.eval.evaluator import metrics_paths
    from ftlab.io import read_json

    path = metrics_paths(ws, name)[0]
    if not path.exists():
        return None
    doc = read_json(path, "metrics")
    return ((doc.get("datasets") or {}).get(task) or {}).get("metrics", {}).get("accuracy")


def run_demo(s: DemoSettings, workspace=None, fresh: bool = False) -> dict:
    """Runs (or resumes) the demo in `workspace`; returns what it produced."""
    from ftlab.env import set_threads
    from ftlab.paths import Workspace

    ws = workspace or Workspace.default()
    set_threads(s.threads)
    names = _names(s)
    if fresh:
        _remove_demo_outputs(ws, names)
    t_start = time.perf_counter()
    total = 6
    opts = _eval_options(s)

    from ftlab.train import run_training

    with Step(1, total, f"base snapshot of {s.model}") as st:
        st.reuse_or_build(ws.models_dir / names["base"], lambda: run_training(_train_cfg(s, None), ws))

    with Step(2, total, f"evaluate the base model on {s.questions} held-out {s.task} questions") as st:
        _evaluate_if_needed(ws, names["base"], opts, s)
        st.done(f"accuracy {_fmt(_accuracy(ws, names['base'], s.task))}")

    with Step(3, total, f"LoRA fine-tune (r={s.rank}, {s.steps} steps, batch {s.batch_size})") as st:
        tuned_dir = st.reuse_or_build(ws.models_dir / names["tuned"], lambda: run_training(_train_cfg(s, s.task), ws))

    with Step(4, total, f"{s.quant_method} {s.quant_bits}-bit quantization of the fine-tune") as st:
        st.reuse_or_build(ws.models_dir / names["quantized"], lambda: _quantize(tuned_dir, s, ws))

    with Step(5, total, "orchestrator: evaluate every untested model") as st:
        report = _sweep(ws, opts, s)
        st.done(f"{len(report.evaluated)} evaluated, {len(report.failed)} failed, "
                f"{len(report.outcomes) - len(report.evaluated) - len(report.failed)} up to date")
        if report.failed:
            raise FtlabError(f"the orchestrator could not evaluate {', '.join(o.model for o in report.failed)}; "
                             f"see {ws.metrics_dir}/<model>.error.json")

    with Step(6, total, "compare") as st:
        table, csv_path, plots = _compare(ws, names, s)
        st.done(f"table below; CSV {csv_path}; {len(plots)} plots in {plots[0].parent if plots else '-'}")
    print()
    print(table)
    print()
    accs = {k: _accuracy(ws, v, s.task) for k, v in names.items()}
    print(f"{s.task} accuracy: base {_fmt(accs['base'])} -> fine-tuned {_fmt(accs['tuned'])} "
          f"-> {s.quant_method} {s.quant_bits}-bit {_fmt(accs['quantized'])}")
    print(f"total {time.perf_counter() - t_start:.0f} s; models in {ws.models_dir}, metrics in {ws.metrics_dir}")
    return {"names": names, "accuracy": accs, "csv": csv_path, "plots": plots, "table": table}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _evaluate_if_needed(ws, name: str, opts, s: DemoSettings) -> None:
    """Evaluates in this process (the model is small) unless an up-to-date result exists."""
    from ftlab.eval.evaluator import evaluate, eval_config_hash, metrics_paths
    from ftlab.io import read_json

    cfg = opts.resolve(ws.models_dir / name)
    if s.threads:
        cfg.eval.threads = s.threads
    path = metrics_paths(ws, name)[0]
    if path.exists():
        doc = read_json(path, "metrics")
        if doc.get("status") == "complete" and doc.get("eval_config_hash") == eval_config_hash(cfg):
            return
    evaluate(str(ws.models_dir / name), cfg, ws, model_name=name)


def _sweep(ws, opts, s: DemoSettings):
    from ftlab.orchestrate.sweep import Sweep, SweepSettings

    sweep = Sweep(ws, opts, SweepSettings(threads=s.threads or os.cpu_count()))
    return sweep.run()


DEMO_METRICS = {
    "accuracy": "accuracy", "flexible_accuracy": "flexible acc.", "format_success_rate": "boxed rate",
    "samples_per_s": "samples/s",
}


def demo_table(df, names: dict[str, str], task: str):
    """One row per demo model: accuracy with its 95% interval, format rate, speed, size on disk."""
    import pandas as pd

    rows = []
    for role, name in names.items():
        sub = df[(df["model"] == name) & (df["task"] == task)]
        if sub.empty:
            continue
        by_metric = sub.set_index("metric")
        row = {"model": name, "role": role, "quant": sub["quant"].iloc[0]}
        for metric, label in DEMO_METRICS.items():
            row[label] = by_metric["value"].get(metric)
        acc = by_metric.loc["accuracy"] if "accuracy" in by_metric.index else None
        if acc is not None and acc["ci_low"] == acc["ci_low"]:
            row["95% interval"] = f"[{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]"
        size = sub["size_on_disk_bytes"].iloc[0]
        row["size MB"] = round(size / 2**20, 1) if size == size else None
        rows.append(row)
    return pd.DataFrame(rows)


def _compare(ws, names: dict[str, str], s: DemoSettings):
    from ftlab.compare import load_metrics
    from ftlab.compare.frame import filter_frame
    from ftlab.compare.plots import write_plots
    from ftlab.io import atomic_write_text

    df = filter_frame(load_metrics(ws), model=list(names.values()))
    if df.empty:
        raise FtlabError(f"no metrics found in {ws.metrics_dir} for the demo's models")
    csv_path = ws.summary_csv
    atomic_write_text(csv_path, df.to_csv(index=False))
    plots = write_plots(df, ws.root / "Testing" / "plots")
    table = demo_table(df, names, s.task)
    return table.to_string(index=False, float_format=lambda x: f"{x:.3f}"), csv_path, plots


def _quantize(model_dir: Path, s: DemoSettings, ws) -> Path:
    from ftlab.quant.pipeline import QuantRequest, quantize
    from ftlab.quant.spec import QuantizationSpec

    spec = QuantizationSpec(method=s.quant_method.upper(), bits=s.quant_bits, group_size=s.quant_group_size)
    # Calibrate (GPTQ) and measure perplexity on the task's own training prompts: what the model will see.
    req = QuantRequest(model=str(model_dir), spec=spec, calib_dataset=s.task, calib_samples=64, ppl_samples=32,
                       max_length=s.max_length, source_dir=Path(s.data_dir) if s.data_dir else None)
    return quantize(req, ws)


def run(args: argparse.Namespace) -> int:
    run_demo(settings_from_args(args), fresh=args.fresh)
    return 0
