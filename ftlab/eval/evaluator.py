"""Evaluate one model on the configured tasks: generate, score, write `Testing/metrics/<model>.json`.

Resume: every finished sample is appended (fsync'd) to `<model>.samples.jsonl` with the config
hash; a rerun with the same hash only generates the missing samples, and the metrics document is
always recomputed from all stored responses. A changed config moves the old samples aside.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ftlab.config import EvalRunConfig, config_to_dict
from ftlab.errors import FtlabError
from ftlab.eval.metrics import ScoringOptions, describe, get_scorer, score_responses
from ftlab.io import append_jsonl, atomic_write_json, dir_size_bytes, read_jsonl, to_jsonable
from ftlab.paths import Workspace
from ftlab.registry import Registry

if TYPE_CHECKING:  # generation imports transformers; the orchestrator only needs the hash
    from ftlab.eval.generation import Generator

log = logging.getLogger(__name__)

METRICS_SCHEMA_VERSION = 1
# Knobs that change speed, not answers; changing them keeps finished samples.
HASH_EXCLUDED = {("model", "name"), ("eval", "batch_size"), ("eval", "threads")}
PERPLEXITY = "perplexity"


def eval_config_hash(cfg: EvalRunConfig) -> str:
    """Hash of everything that can change a response or a metric (not the model name: the
    metrics file is per model; not batch size or threads)."""
    tree = config_to_dict(cfg)
    for section, key in HASH_EXCLUDED:
        tree.get(section, {}).pop(key, None)
    blob = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_file_name(model_ref: str) -> str:
    """`Models/run-name` -> `run-name`; `org/name` -> `org__name`; `scratch:tiny` -> `scratch-tiny`."""
    ref = str(model_ref).rstrip("/\\")
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        name = path.name if path.suffix.lower() != ".gguf" else path.stem
    else:
        name = ref.replace("/", "__")
    name = name.replace(":", "-").replace(os.sep, "__")
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name) or "model"


def metrics_paths(workspace: Workspace, model_name: str) -> tuple[Path, Path]:
    d = workspace.metrics_dir
    return d / f"{model_name}.json", d / f"{model_name}.samples.jsonl"


def _prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Dataset plans: what a dataset entry of the config means


@dataclass
class DatasetPlan:
    name: str  # key in the metrics document
    runner: str  # key in RUNNERS
    task: Any  # ftlab.data.tasks.Task
    examples: list
    shots: list = field(default_factory=list)  # few-shot examples (eval.num_fewshot), ftlab.eval.fewshot


def _plan(entry: str, cfg: EvalRunConfig, workspace: Workspace, source) -> DatasetPlan:
    from ftlab.data.loading import load_examples, resolve_task
    from ftlab.eval.fewshot import draw_shots
    from ftlab.eval.modes import resolve_entry

    e = cfg.eval
    shots: list = []
    if entry == PERPLEXITY or entry.startswith(PERPLEXITY + ":"):
        # Held-out texts of the model's own training task unless one is named (perplexity:arc).
        target = entry.split(":", 1)[1] if ":" in entry else None
        if not target:
            trained = ((source.metadata or {}).get("dataset") or {}).get("name")
            target = trained if trained and not str(trained).lower().endswith((".json", ".jsonl", ".parquet", ".csv")) else "synthetic-arith"
        task = resolve_task(target)
        examples = load_examples(target, "test", workspace=workspace, limit=e.limit, source_dir=e.source_dir)
        runner = PERPLEXITY
    else:
        ref, mode = resolve_entry(entry, getattr(e, "scoring", "generate"))
        task = resolve_task(ref)
        mode.check(entry, task.answer_kind)
        examples = load_examples(ref, "test", workspace=workspace, limit=e.limit, source_dir=e.source_dir)
        shots = draw_shots(ref, task, examples, getattr(e, "num_fewshot", 0), e.seed, workspace=workspace,
                           source_dir=e.source_dir)
        runner = mode.runner
    if not examples:
        raise FtlabError(f"eval.datasets: {entry!r} has no test rows; check the file or drop it from eval.datasets")
    name = f"{PERPLEXITY}:{task.name}" if runner == PERPLEXITY else mode.key(ref)
    return DatasetPlan(name, runner, task, examples, shots)


def gold_of(task, example) -> Any:
    """SQuAD keeps every reference answer (EM/F1 take the best match); other kinds one string."""
    if task.answer_kind == "span" and example.meta.get("answers") is not None:
        return list(example.meta["answers"])
    return example.answer


# ---------------------------------------------------------------------------------------------
# Runners: how one dataset is evaluated


@dataclass
class RunContext:
    cfg: EvalRunConfig
    config_hash: str
    generator: Generator
    samples_path: Path
    done: dict  # (dataset, index) -> stored sample line
    previous: dict  # dataset blocks of an earlier document with the same config hash


RUNNERS: Registry[Callable[[DatasetPlan, RunContext], dict]] = Registry("evaluation runner")


@RUNNERS.register("generate")
def run_generation(plan: DatasetPlan, ctx: RunContext) -> dict:
    from ftlab.data.prompts import build_messages
    from ftlab.env import PeakMemory

    e = ctx.cfg.eval
    scorer = get_scorer(plan.task.answer_kind, ScoringOptions(e.numeric_rel_tol, e.numeric_abs_tol))
    prompts = [ctx.generator.render(build_messages(plan.task, ex, e.system_prompt, plan.shots), e.enable_thinking)
               for ex in plan.examples]
    hashes = [_prompt_hash(p) for p in prompts]
    records: dict[int, dict] = {}
    pending = []
    for pos, ex in enumerate(plan.examples):
        old = ctx.done.get((plan.name, ex.index))
        if old is not None and old.get("prompt_hash") == hashes[pos]:
            records[pos] = old
        else:
            pending.append(pos)
    if records:
        log.info("%s: %d of %d samples already done, generating %d", plan.name, len(records), len(prompts), len(pending))
    max_new = e.max_new_tokens or plan.task.max_new_tokens
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        batches = ctx.generator.generate([prompts[p] for p in pending], max_new_tokens=max_new,
                                         batch_size=e.batch_size, stop_at_box=e.stop_at_box)
        last = t0
        for batch in batches:
            now = time.perf_counter()
            share = (now - last) / max(1, len(batch))
            last = now
            for j, gen in batch:
                pos = pending[j]
                ex = plan.examples[pos]
                gold = gold_of(plan.task, ex)
                s = scorer.score(gen.text, gold)
                rec = {
                    "dataset": plan.name, "index": ex.index, "prompt_hash": hashes[pos],
                    "response": gen.text, "extracted": s.extracted, "flexible": s.flexible, "gold": gold,
                    "correct": s.correct, "flexible_correct": s.flexible_correct,
                    "latency_s": gen.latency_s, "new_tokens": gen.new_tokens, "stop_reason": gen.stop_reason,
                    # This sample's share of its batch's wall time: sums to the run time across resumes.
                    "gen_time_s": share, "eval_config_hash": ctx.config_hash,
                }
                if "f1" in s.extra:
                    rec["f1"] = s.extra["f1"]  # graded score the comparison stage bootstraps
                append_jsonl(ctx.samples_path, rec)
                records[pos] = rec
        run_time = time.perf_counter() - t0
    ordered = [records[p] for p in range(len(plan.examples))]
    # Metrics come from the raw responses, so a resumed run is scored by the current code.
    _, block = score_responses(scorer, [r["response"] for r in ordered], [gold_of(plan.task, ex) for ex in plan.examples],
                               bootstrap_samples=e.bootstrap_samples, seed=e.seed)
    total_time = sum(float(r.get("gen_time_s") or 0.0) for r in ordered)
    block.update(
        task=plan.task.name, answer_kind=plan.task.answer_kind, max_new_tokens=max_new,
        latency_s=describe([r["latency_s"] for r in ordered]),
        new_tokens=describe([r["new_tokens"] for r in ordered]),
        samples_per_s=(len(ordered) / total_time) if total_time > 0 else None,
        runtime_s=total_time, generated_this_run=len(pending), runtime_this_run_s=run_time,
        peak_memory=mem.as_dict(),
        # Rows generated together this run: eval.batch_size, or what auto and out-of-memory
        # back-off settled on.
        batch_size=(getattr(ctx.generator, "batch_size_used", None) or e.batch_size) if pending else None,
    )
    return block


PERPLEXITY_AUTO_BATCH = 8  # eval.batch_size=None: full-sequence forwards keep every logit, so stay small


@RUNNERS.register(PERPLEXITY)
def run_perplexity(plan: DatasetPlan, ctx: RunContext) -> dict:
    from ftlab.data.prompts import build_messages, build_target
    from ftlab.env import PeakMemory

    g = ctx.generator
    if getattr(g, "model", None) is None:
        raise FtlabError(f"eval.datasets: {plan.name} needs model weights; the {g.name!r} backend has none (use eval.backend=hf)")
    texts = [g.render(build_messages(plan.task, ex, ctx.cfg.eval.system_prompt)) + build_target(plan.task, ex)
             for ex in plan.examples]
    text_hash = _prompt_hash("\x00".join(texts))
    old = ctx.previous.get(plan.name)
    # Kept in the metrics document rather than the samples file: it is one number, not a sample,
    # and sample lines are what the comparison stage pairs up.
    if old is not None and old.get("texts_hash") == text_hash:
        log.info("%s: reusing perplexity from the previous run with the same config", plan.name)
        return old
    from ftlab.eval.perplexity import perplexity

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        ppl = perplexity(g.model, g.tokenizer, texts, max_length=ctx.cfg.eval.perplexity_max_length,
                         batch_size=ctx.cfg.eval.batch_size or PERPLEXITY_AUTO_BATCH)
        runtime = time.perf_counter() - t0
    return {"n": len(texts), "task": plan.task.name, "metrics": {"perplexity": float(ppl)}, "texts_hash": text_hash,
            "runtime_s": runtime, "samples_per_s": len(texts) / runtime if runtime > 0 else None,
            "peak_memory": mem.as_dict()}


# ---------------------------------------------------------------------------------------------


def model_summary(source) -> dict:
    meta = source.metadata or {}
    summary = {k: meta.get(k) for k in ("run_name", "name_fields", "base_model", "dataset", "method", "peft", "quantization")}
    if not meta:
        summary["base_model"] = source.describe()
    summary["size_on_disk_bytes"] = dir_size_bytes(source.path) if source.path and Path(source.path).is_dir() else None
    return summary


def _quantization_of(source) -> dict | None:
    q = (source.metadata or {}).get("quantization")
    return q if q and str(q.get("method", "NoQuant")) != "NoQuant" else None


def _previous_datasets(json_path: Path, config_hash: str) -> dict:
    from ftlab.io import read_json

    if not json_path.exists():
        return {}
    try:
        doc = read_json(json_path, "metrics file")
    except FtlabError:
        return {}
    if not isinstance(doc, dict) or doc.get("eval_config_hash") != config_hash:
        return {}
    return doc.get("datasets") or {}


def _load_samples(samples_path: Path, config_hash: str) -> dict:
    """Finished samples of this config; samples of another config are moved aside first."""
    lines = read_jsonl(samples_path)
    if not lines:
        return {}
    stale = {ln.get("eval_config_hash") for ln in lines} - {config_hash}
    if stale:
        aside = samples_path.with_name(samples_path.name + f".stale-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(samples_path, aside)
        log.warning("eval config changed since %s was written; moved it to %s and starting fresh", samples_path.name, aside.name)
        return {}
    return {(ln["dataset"], ln["index"]): ln for ln in lines if "dataset" in ln and "index" in ln}


def evaluate(model_ref: str, cfg: EvalRunConfig, workspace: Workspace, *, generator: Generator | None = None,
             model_name: str | None = None) -> dict:
    """Runs or resumes one model's evaluation and returns the metrics document it wrote."""
    from ftlab.env import PeakMemory, environment_info, now_iso, set_threads
    from ftlab.models.sources import resolve_model

    if cfg.eval.threads is not None:
        set_threads(cfg.eval.threads)
    source = resolve_model(model_ref, workspace, cfg.model.revision)
    # Every dataset is loaded and checked before the model: a typo fails in a second, not after loading.
    plans = [_plan(entry, cfg, workspace, source) for entry in cfg.eval.datasets]
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise FtlabError(f"eval.datasets lists a dataset twice ({', '.join(names)}); remove the duplicate")

    name = model_name or model_file_name(model_ref)
    json_path, samples_path = metrics_paths(workspace, name)
    config_hash = eval_config_hash(cfg)
    done = _load_samples(samples_path, config_hash)
    previous = _previous_datasets(json_path, config_hash)
    started = now_iso()
    if generator is None:
        from ftlab.eval.generation import build_generator

        generator = build_generator(model_ref, cfg, workspace)

    doc: dict[str, Any] = {
        "schema_version": METRICS_SCHEMA_VERSION, "kind": "metrics", "status": "running",
        "model": {"name": name, "ref": str(model_ref), "path": str(source.path) if source.path else None,
                  "source_kind": source.kind, "metadata": model_summary(source)},
        "eval_config": config_to_dict(cfg), "eval_config_hash": config_hash,
        "backend": generator.name, "datasets": {}, "summary": {},
        "quantization": _quantization_of(source), "environment": environment_info(),
        "started_at": started, "finished_at": None,
    }
    ctx = RunContext(cfg, config_hash, generator, samples_path, done, previous)
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        for plan in plans:
            log.info("evaluating %s on %s (%d rows)", name, plan.name, len(plan.examples))
            doc["datasets"][plan.name] = RUNNERS.get(plan.runner)(plan, ctx)
            doc["summary"] = _summary(doc["datasets"], time.perf_counter() - t0, mem)
            # A partial document after each dataset: a kill leaves something readable, marked as such.
            atomic_write_json(json_path, doc)
    doc["status"] = "complete"
    doc["finished_at"] = now_iso()
    doc["summary"] = _summary(doc["datasets"], time.perf_counter() - t0, mem)
    atomic_write_json(json_path, doc)
    return to_jsonable(doc)


def _summary(datasets: dict, runtime: float, mem) -> dict:
    accs = [d["metrics"].get("accuracy") for d in datasets.values() if d["metrics"].get("accuracy") is not None]
    mem_now = mem.as_dict()
    from ftlab.env import current_rss_mb

    mem_now["peak_rss_mb"] = round(max(mem.peak_rss_mb, current_rss_mb()), 1)
    return {
        "mean_accuracy": sum(accs) / len(accs) if accs else None,
        "total_samples": sum(int(d.get("n") or 0) for d in datasets.values()),
        "runtime_s": runtime,
        "peak_memory": mem_now,
    }


from ftlab.eval import loglikelihood as _loglikelihood  # noqa: E402,F401  (registers the "loglikelihood" runner)
