"""Evaluate one model on the configured tasks: generate, score, write `Testing/metrics/<model>.json`.

Results accumulate per task (ftlab.eval.records.results): the document holds every task evaluated so far,
each with the settings that made it. A run evaluates only the tasks whose stored result is missing
or was made under other settings, and reuses every finished sample line whose prompt and settings
still hold: a killed run resumes, a raised `limit` generates only the new rows, and a new scoring
rule or tolerance rescores the stored responses without generating. A task whose settings changed
is replaced in the document (its old block kept under `superseded`); its old sample lines stay in
`<model>.samples.jsonl`, marked by their `settings_key`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ftlab.config import EvalRunConfig, config_to_dict
from ftlab.env import PeakMemory, current_rss_mb, environment_info, now_iso, set_threads
from ftlab.errors import FtlabError
from ftlab.eval.backends.registry import build_generator
from ftlab.eval.fewshot import draw_shots
from ftlab.eval.perplexity import perplexity
from ftlab.eval.records.documents import load_metrics_document, metrics_document, write_metrics_document
from ftlab.eval.records.results import SampleStore, TaskSpec, settings_changes, task_settings
from ftlab.eval.lmeval import runner as _lmeval_runner  # noqa: F401  (registers the "lmeval" runner)
from ftlab.eval.lmeval import tasks as lmeval_tasks
from ftlab.eval.runners import (  # noqa: F401  (PERPLEXITY, LOGLIKELIHOOD: part of this module's interface)
    LMEVAL,
    LOGLIKELIHOOD,
    PERPLEXITY,
    RUNNER_SCORING_VERSIONS,
    RUNNERS,
    DatasetPlan,
    RunContext,
    prompt_hash,
)
from ftlab.eval.scoring import loglikelihood as _loglikelihood  # noqa: F401  (registers the "loglikelihood" runner)
from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS, get_scorer, gold_of, scoring_version, task_options
from ftlab.eval.scoring.metrics import ScoringOptions, describe, score_responses
from ftlab.io import append_jsonl, dir_size_bytes, to_jsonable
from ftlab.models.sources import resolve_model
from ftlab.naming import checked_name
from ftlab.paths import Workspace
from ftlab.schema import NewerSchemaError

if TYPE_CHECKING:  # generation imports transformers; the orchestrator only needs the settings
    from ftlab.eval.backends.api import Generator

log = logging.getLogger(__name__)


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
    """The model's metrics document and sample lines (ftlab.paths.MetricsFiles names every file)."""
    files = workspace.metrics_files(model_name)
    return files.metrics, files.samples


# ---------------------------------------------------------------------------------------------
# Dataset plans: what a dataset entry of the config means


def resolve_entry(entry: str, metadata: dict | None, scoring: str = "generate") -> DatasetPlan:
    """The task and runner a dataset entry names, without loading rows (the planner needs this).
    `scoring` (eval.scoring) is the mode of entries without a mode suffix (ftlab.eval.scoring.modes)."""
    from ftlab.data.loading import resolve_task  # lazy: ftlab.data.loading imports numpy
    from ftlab.data.tasks import trained_task  # lazy: ftlab.data.tasks imports numpy (through the answer kinds)
    from ftlab.eval.scoring.modes import resolve_entry as entry_mode  # lazy: ftlab.eval.scoring.modes imports numpy

    if lmeval_tasks.is_lmeval(entry):  # a task of lm-evaluation-harness's registry or a task file
        return DatasetPlan(entry, LMEVAL, lmeval_tasks.resolve(entry), entry)
    if entry == PERPLEXITY or entry.startswith(PERPLEXITY + ":"):
        # Held-out texts of the model's own training task unless one is named (perplexity:arc);
        # a base model or one trained on a data file: synthetic-arith.
        target = (entry.split(":", 1)[1] if ":" in entry else None) or trained_task(metadata) or "synthetic-arith"
        task = resolve_task(target)
        return DatasetPlan(f"{PERPLEXITY}:{task.name}", PERPLEXITY, task, target)
    ref, mode = entry_mode(entry, scoring)
    task = resolve_task(ref)
    mode.check(entry, task.answer_kind)
    return DatasetPlan(mode.key(ref), mode.runner, task, ref)


def _plan(entry: str, cfg: EvalRunConfig, workspace: Workspace, source) -> DatasetPlan:
    from ftlab.data.loading import load_examples  # lazy: ftlab.data.loading imports numpy

    e = cfg.eval
    plan = resolve_entry(entry, source.metadata, e.scoring)
    if plan.runner == LMEVAL:  # lm-eval reads and renders the documents
        plan.source = lmeval_tasks.load(plan.task, e.lmeval_data, e.lmeval_num_fewshot)
        plan.examples = _lmeval_runner.documents(plan.source, e.limit)
        return plan
    plan.examples = load_examples(plan.rows, "test", workspace=workspace, limit=e.limit, source_dir=e.source_dir)
    if not plan.examples:
        raise FtlabError(f"eval.datasets: {entry!r} has no test rows; check the file or drop it from eval.datasets")
    if plan.runner != PERPLEXITY:
        plan.shots = draw_shots(plan.rows, plan.task, plan.examples, e.num_fewshot, e.seed, workspace=workspace,
                                source_dir=e.source_dir)
    return plan


def _check_unique(plans: list[DatasetPlan]) -> None:
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise FtlabError(f"eval.datasets lists a dataset twice ({', '.join(names)}); remove the duplicate")


def scoring_options(task, cfg: EvalRunConfig, labels: tuple[str, ...] | None = None) -> ScoringOptions:
    """The task's documented tolerance unless eval.numeric_rel_tol/abs_tol override it."""
    return ScoringOptions.for_task(task, rel_tol=cfg.eval.numeric_rel_tol, abs_tol=cfg.eval.numeric_abs_tol, labels=labels)


def current_scoring_version(runner: str, answer_kind: str | None) -> int:
    """The scoring rule version a task result made now would carry."""
    if runner == "generate":
        return scoring_version(answer_kind)
    return RUNNER_SCORING_VERSIONS.get(runner, 1)


def outdated_scoring(doc: dict) -> dict[str, tuple[int, int]]:
    """Task key -> (stored, current) scoring version, for results scored by an older rule."""
    out = {}
    for key, block in (doc.get("datasets") or {}).items():
        settings = block.get("settings") if isinstance(block, dict) else None
        if not settings:
            continue
        stored = int(block.get("scoring_version") or 1)
        try:
            current = current_scoring_version(settings.get("scoring_mode"), settings.get("answer_kind"))
        except FtlabError:  # an answer kind this ftlab does not know
            continue
        if stored < current:
            out[key] = (stored, current)
    return out


def task_spec(plan: DatasetPlan, cfg: EvalRunConfig) -> TaskSpec:
    e, task = cfg.eval, plan.task
    tolerance = runner_settings = None
    if plan.runner == "generate" and ANSWER_KINDS.get(task.answer_kind).uses_tolerance:
        tolerance = scoring_options(task, cfg).tolerance()
    if plan.runner == LMEVAL:
        runner_settings = lmeval_tasks.settings(task, e.lmeval_data, e.lmeval_num_fewshot)
    version = current_scoring_version(plan.runner, task.answer_kind)
    return TaskSpec(key=plan.name, runner=plan.runner, task=task.name, answer_kind=task.answer_kind,
                    instruction=task.instruction, max_new_tokens=e.max_new_tokens or task.max_new_tokens,
                    tolerance=tolerance, scoring_version=version, runner_settings=runner_settings)


def plan_settings(plan: DatasetPlan, cfg: EvalRunConfig) -> dict:
    tree = config_to_dict(cfg)
    return task_settings(task_spec(plan, cfg), tree["eval"], tree["model"])


def expected_settings(cfg: EvalRunConfig, workspace: Workspace | None = None) -> dict[str, dict]:
    """Task key -> the settings `evaluate(cfg.model.name, cfg)` would store for it. Loads no model
    and no rows, so the orchestrator can tell which task of which model is stale, and why."""

    metadata = None
    if PERPLEXITY in cfg.eval.datasets:  # perplexity of the model's own training task: read its metadata
        metadata = resolve_model(cfg.model.name, workspace, cfg.model.revision).metadata
    plans = [resolve_entry(entry, metadata, cfg.eval.scoring) for entry in cfg.eval.datasets]
    _check_unique(plans)
    return {p.name: plan_settings(p, cfg) for p in plans}


# ---------------------------------------------------------------------------------------------
# Runners: how one dataset is evaluated


@RUNNERS.register("generate")
def run_generation(plan: DatasetPlan, ctx: RunContext) -> dict:
    from ftlab.data.prompts import build_messages  # lazy: ftlab.data.prompts imports numpy

    e = ctx.cfg.eval
    golds = [gold_of(plan.task, ex) for ex in plan.examples]
    labels = task_options(plan.task, [ex.question for ex in plan.examples], golds)
    scorer = get_scorer(plan.task.answer_kind, scoring_options(plan.task, ctx.cfg, labels))
    for ex, gold in zip(plan.examples, golds):  # before the model loads: a bad label fails in a second
        if scorer.norm_gold(gold) is None:
            raise FtlabError(f"dataset {plan.name} row {ex.index}: gold answer {gold!r} is not a valid "
                             f"{plan.task.answer_kind} answer ({scorer.gold_help()}); fix or drop that row")
    prompts = [ctx.generator.render(build_messages(plan.task, ex, e.system_prompt, plan.shots), e.enable_thinking)
               for ex in plan.examples]
    hashes = [prompt_hash(p) for p in prompts]
    records: dict[int, dict] = {}
    pending = []
    rescored = 0
    for pos, ex in enumerate(plan.examples):
        old = ctx.reusable(ex.index, hashes[pos])
        if old is None:
            pending.append(pos)
            continue
        # Stored responses are scored by the current rules; a line whose verdict changed (or that
        # is not the row's latest line) is written again, so the file's last line per row is
        # always the one behind the document.
        fresh = {**old, **scorer.sample_line(old.get("response"), golds[pos]), "gold": golds[pos],
                 "settings_key": ctx.settings_key}
        fresh.pop("eval_config_hash", None)
        if fresh != old or ctx.done.get((plan.name, ex.index)) is not old:
            append_jsonl(ctx.samples_path, fresh)
            rescored += 1
        records[pos] = fresh
    if records:
        log.info("%s: %d of %d samples already done (%d rescored), generating %d", plan.name, len(records),
                 len(prompts), rescored, len(pending))
    max_new = ctx.settings["generation"]["max_new_tokens"]
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        batches = ctx.generator.generate([prompts[p] for p in pending], max_new_tokens=max_new,
                                         batch_size=e.batch_size, stop_at_box=e.stop_at_box) if pending else []
        last = t0
        for batch in batches:
            now = time.perf_counter()
            share = (now - last) / max(1, len(batch))
            last = now
            for j, gen in batch:
                pos = pending[j]
                ex = plan.examples[pos]
                rec = {
                    "dataset": plan.name, "index": ex.index, "prompt_hash": hashes[pos], "response": gen.text,
                    **scorer.sample_line(gen.text, golds[pos]), "gold": golds[pos],
                    "latency_s": gen.latency_s, "new_tokens": gen.new_tokens, "stop_reason": gen.stop_reason,
                    # This sample's share of its batch's wall time: sums to the run time across resumes.
                    "gen_time_s": share, "settings_key": ctx.settings_key,
                }
                append_jsonl(ctx.samples_path, rec)
                records[pos] = rec
        run_time = time.perf_counter() - t0
    ordered = [records[p] for p in range(len(plan.examples))]
    # Metrics come from the raw responses, so a resumed run is scored by the current code.
    _, block = score_responses(scorer, [r["response"] for r in ordered], golds,
                               bootstrap_samples=e.bootstrap_samples, seed=e.seed)
    total_time = sum(float(r.get("gen_time_s") or 0.0) for r in ordered)
    block.update(
        task=plan.task.name, answer_kind=plan.task.answer_kind, max_new_tokens=max_new,
        latency_s=describe([r["latency_s"] for r in ordered]),
        new_tokens=describe([r["new_tokens"] for r in ordered]),
        samples_per_s=(len(ordered) / total_time) if total_time > 0 else None,
        runtime_s=total_time, generated_this_run=len(pending), rescored_this_run=rescored,
        runtime_this_run_s=run_time, peak_memory=mem.as_dict(),
        # Rows generated together this run: eval.batch_size, or what auto and out-of-memory
        # back-off settled on.
        batch_size=(getattr(ctx.generator, "batch_size_used", None) or e.batch_size) if pending else None,
    )
    return block


PERPLEXITY_AUTO_BATCH = 8  # eval.batch_size=None: full-sequence forwards keep every logit, so stay small


@RUNNERS.register(PERPLEXITY)
def run_perplexity(plan: DatasetPlan, ctx: RunContext) -> dict:
    from ftlab.data.prompts import build_messages, build_target  # lazy: ftlab.data.prompts imports numpy

    g = ctx.model_generator()
    texts = [g.render(build_messages(plan.task, ex, ctx.cfg.eval.system_prompt)) + build_target(plan.task, ex)
             for ex in plan.examples]
    text_hash = prompt_hash("\x00".join(texts))
    old = ctx.previous.get(plan.name)
    # Kept in the metrics document rather than the samples file: it is one number, not a sample,
    # and sample lines are what the comparison stage pairs up.
    if old is not None and old.get("texts_hash") == text_hash and old.get("settings_key") == ctx.settings_key:
        log.info("%s: reusing the perplexity computed on the same texts under the same settings", plan.name)
        return {k: v for k, v in old.items() if k not in ("settings", "settings_key", "scoring_version")}

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


def _new_document(name: str, model_ref: str, source, cfg: EvalRunConfig, old: dict | None) -> dict:
    """The document this run writes: every task block of the old document carried over."""

    return metrics_document(
        model={"name": name, "ref": str(model_ref), "path": str(source.path) if source.path else None,
               "source_kind": source.kind, "metadata": model_summary(source)},
        eval_config=config_to_dict(cfg), backend=cfg.eval.backend,
        datasets=(old or {}).get("datasets"), superseded=(old or {}).get("superseded"),
        quantization=_quantization_of(source), environment=environment_info(), started_at=now_iso())


def evaluate(model_ref: str, cfg: EvalRunConfig, workspace: Workspace, *, generator: Generator | None = None,
             model_name: str | None = None) -> dict:
    """Runs, resumes or updates one model's evaluation on `cfg.eval.datasets` and returns the
    metrics document it wrote (which also keeps every other task evaluated before)."""

    if cfg.eval.threads is not None:
        set_threads(cfg.eval.threads)
    source = resolve_model(model_ref, workspace, cfg.model.revision)
    # Every dataset is loaded and checked before the model: a typo fails in a second, not after loading.
    plans = [_plan(entry, cfg, workspace, source) for entry in cfg.eval.datasets]
    _check_unique(plans)

    # A given name is one file name inside Testing/metrics/, never a path (`../Models/X/config`).
    name = checked_name(model_name, "--name") if model_name else model_file_name(model_ref)
    files = workspace.metrics_files(name)
    json_path, samples_path = files.metrics, files.samples
    old = _existing_document(json_path)
    store = SampleStore.read(samples_path, old)
    doc = _new_document(name, model_ref, source, cfg, old)
    previous = dict(doc["datasets"])

    def make_generator() -> Generator:
        nonlocal generator
        if generator is None:
            generator = build_generator(model_ref, cfg, workspace)
        doc["backend"] = generator.name
        return generator

    t0 = time.perf_counter()
    with PeakMemory() as mem:
        for plan in plans:
            settings = plan_settings(plan, cfg)
            current = previous.get(plan.name)
            if isinstance(current, dict) and current.get("settings") == settings:
                log.info("%s: result up to date (same settings), kept", plan.name)
                continue
            log.info("evaluating %s on %s (%d rows)", name, plan.name, len(plan.examples))
            ctx = RunContext(cfg, plan, settings, store, files, previous, make_generator)
            block = RUNNERS.get(plan.runner)(plan, ctx)
            block.update(settings=settings, settings_key=ctx.settings_key,
                         scoring_version=settings["scoring_version"], evaluated_at=now_iso())
            if isinstance(current, dict):
                doc["superseded"].append({"task": plan.name, "replaced_at": block["evaluated_at"],
                                          "changes": settings_changes(current.get("settings"), settings),
                                          "block": current})
            doc["datasets"][plan.name] = block
            doc["summary"] = _summary(doc["datasets"], time.perf_counter() - t0, mem)
            # After each task: a kill leaves every finished task readable, the document marked running.
            write_metrics_document(json_path, doc)
    doc["status"] = "complete"
    doc["finished_at"] = now_iso()
    doc["summary"] = _summary(doc["datasets"], time.perf_counter() - t0, mem)
    write_metrics_document(json_path, doc)
    return to_jsonable(doc)


def _existing_document(json_path: Path) -> dict | None:
    """The model's metrics document, None when it has none. A damaged one (not JSON, not an object,
    fields missing) is moved aside, kept, and rebuilt: every answer behind it is in the samples JSONL
    beside it, so the tasks asked again are rescored from there without generating. A document of a
    newer ftlab is refused: it is not damaged, and this ftlab cannot write its schema."""
    try:
        return load_metrics_document(json_path, missing_ok=True)
    except NewerSchemaError:
        raise
    except FtlabError as exc:
        aside = json_path.with_name(f"{json_path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(json_path, aside)
        log.warning("%s could not be read; kept it as %s and rebuilding it from the stored answers (%s)",
                    json_path.name, aside.name, exc)
        return None


def _summary(datasets: dict, runtime: float, mem) -> dict:
    """Across every task the document holds (not only this run's); runtime and memory of this run."""
    accs = [d["metrics"].get("accuracy") for d in datasets.values() if d["metrics"].get("accuracy") is not None]
    mem_now = mem.as_dict()

    mem_now["peak_rss_mb"] = round(max(mem.peak_rss_mb, current_rss_mb()), 1)
    return {
        "mean_accuracy": sum(accs) / len(accs) if accs else None,
        "total_samples": sum(int(d.get("n") or 0) for d in datasets.values()),
        "runtime_s": runtime,
        "peak_memory": mem_now,
    }

