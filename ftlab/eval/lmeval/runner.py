"""The `lmeval` evaluation runner: an lm-evaluation-harness task or group, run on ftlab's engine.

resolve (ftlab.eval.lmeval.tasks) -> lm-eval builds the requests -> ftlab answers them
(ftlab.eval.lmeval.model) -> lm-eval filters and scores each document -> ftlab writes one sample
line per document and the task block, with intervals.

Scores are lm-eval's: its `evaluate` applies the task's filters and metrics and aggregates groups
(MMLU's subjects) as lm-eval aggregates them. What ftlab adds:
- a sample line per document (`index` = the document's position; in a group, its position in the
  group's tasks in name order) with lm-eval's filtered answers and per-document metrics, and
  `correct`/`score` from the task's primary metric (its first metric under its first filter), so
  `ftlab compare` and studies pair models document by document;
- 95% percentile-bootstrap intervals for every metric: documents resampled (within each task of a
  group, then combined with the group's weights), each resample aggregated by the task's own
  aggregation function;
- resume: requests already answered under the same settings are read back
  (ftlab.eval.lmeval.cache), so a killed or extended run asks the model only for what is new.
"""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np

from ftlab.env import PeakMemory
from ftlab.eval.lmeval.cache import RequestCache
from ftlab.eval.lmeval.tasks import lm_eval_version, quiet_lm_eval
from ftlab.eval.prompt_format import resolve_prompt_format
from ftlab.eval.runners import LMEVAL, RUNNERS, DatasetPlan, RunContext, prompt_hash
from ftlab.eval.scoring.metrics import bootstrap_interval
from ftlab.io import append_jsonl_lines, to_jsonable
from ftlab.resampling import bootstrap_means, percentile_interval, resample_indices
from ftlab.kinds.eval import PLAIN

log = logging.getLogger(__name__)

GENERATE_UNTIL = "generate_until"  # lm-eval's output type that asks for answers, not log-probabilities

CONFIDENCE = 0.95  # of every interval, as bootstrap_interval's default
# Resamples of an aggregation other than the mean (corpus F1, perplexity, BLEU): each one reruns it.
MAX_AGGREGATE_RESAMPLES = 1000


def documents(loaded: dict, limit: int | None) -> list[tuple[str, int]]:
    """(task, document id) of every document this entry evaluates, in sample-line order: tasks by
    name, documents in lm-eval's order, the first `limit` of each task (lm-eval's `limit`)."""
    out = []
    for name in sorted(loaded["tasks"]):
        n = len(loaded["tasks"][name].eval_docs)
        out += [(name, i) for i in range(min(n, limit) if limit is not None else n)]
    return out


def _metric_key(metric: str, filt: str) -> str:
    """lm-eval's `metric,filter` result key, without the filter when there is none."""
    return metric if filt == "none" else f"{metric},{filt}"


def _scalar(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _is_binary(values) -> bool:
    return all(v in (0.0, 1.0) for v in values)


class _TaskResult:
    """One lm-eval task's logged samples, regrouped per document."""

    def __init__(self, task, samples: list[dict]):
        from lm_eval.api.metrics import mean  # lazy: lm_eval imports torch and its task machinery

        self.task = task
        self.filters: list[str] = []
        self.per_doc: dict[int, dict] = {}
        for s in samples:
            filt = s["filter"]
            if filt not in self.filters:
                self.filters.append(filt)
            doc = self.per_doc.setdefault(int(s["doc_id"]), {"arguments": s["arguments"], "resps": s["resps"],
                                                            "target": s["target"], "filtered": {}, "metrics": {}})
            doc["filtered"][filt] = s["filtered_resps"]
            for metric in s["metrics"]:
                doc["metrics"][_metric_key(metric, filt)] = s[metric]
        self.aggregations = task.aggregation()
        self.is_mean = {m: fn is mean for m, fn in self.aggregations.items()}
        metric_list = [m["metric"] for m in (task.config.metric_list or []) if isinstance(m.get("metric"), str)]
        first_metric = metric_list[0] if metric_list else next(iter(self.aggregations), None)
        self.primary = _metric_key(first_metric, self.filters[0]) if first_metric and self.filters else None
        self.doc_ids = sorted(self.per_doc)

    def values(self, key: str) -> list:
        return [self.per_doc[d]["metrics"].get(key) for d in self.doc_ids]

    def keys(self) -> list[str]:
        seen: list[str] = []
        for d in self.doc_ids:
            for k in self.per_doc[d]["metrics"]:
                if k not in seen:
                    seen.append(k)
        return seen


def _task_interval(result: _TaskResult, key: str, resamples: int, seed: int) -> list[float] | None:
    metric = key.split(",")[0]
    values = result.values(key)
    if len(values) < 2 or resamples <= 0:
        return None
    if result.is_mean.get(metric, False):
        scalars = [_scalar(v) for v in values]
        return None if any(v is None for v in scalars) else bootstrap_interval(scalars, resamples, seed)
    agg = result.aggregations.get(metric)
    if agg is None:
        return None
    stats = []
    for _, idx in resample_indices(len(values), min(resamples, MAX_AGGREGATE_RESAMPLES), seed):
        for row in idx:
            try:
                stats.append(float(agg([values[i] for i in row])))
            except (TypeError, ValueError, ZeroDivisionError):
                return None
    return list(percentile_interval(np.asarray(stats), CONFIDENCE))


def _group_block(group, results: dict[str, _TaskResult], lm_results: dict, resamples: int, seed: int) -> dict:
    """The group's aggregate metrics (lm-eval's numbers) with stratified-bootstrap intervals."""
    own = lm_results.get(group.name) or {}
    metrics, intervals = {}, {}
    leaves = [t.task_name for t in group.get_all_tasks() if t.task_name in results]
    for agg in group.aggregate_metric_list or []:
        filters = agg.filter_list or sorted({k.split(",", 1)[1] for k in own if k.startswith(f"{agg.metric},")
                                             and "_stderr" not in k})
        for filt in filters:
            value = own.get(f"{agg.metric},{filt}")
            if value is None:
                continue
            key = _metric_key(agg.metric, filt)
            metrics[key] = float(value)
            members = [(results[n], results[n].values(key)) for n in leaves if results[n].is_mean.get(agg.metric)]
            members = [(r, [_scalar(v) for v in vals]) for r, vals in members if vals]
            if resamples <= 0 or not members or any(v is None for _, vals in members for v in vals):
                intervals[key] = None
                continue
            sizes = np.asarray([len(vals) for _, vals in members], dtype=float)
            weights = sizes / sizes.sum() if agg.weight_by_size else np.full(len(members), 1 / len(members))
            # Each task resampled on its own stream (stratified), then combined with the group's weights.
            draws = np.stack([bootstrap_means(vals, resamples, seed + i) for i, (_, vals) in enumerate(members)])
            combined = (weights[:, None] * draws).sum(axis=0)
            intervals[key] = list(percentile_interval(combined, CONFIDENCE))
    return {"n": sum(len(results[n].doc_ids) for n in leaves), "tasks": leaves, "metrics": metrics, "intervals": intervals}


def sample_lines(plan: DatasetPlan, results: dict[str, _TaskResult], ctx: RunContext) -> list[dict]:
    lines, offset = [], 0
    for name in sorted(results):
        r = results[name]
        output_type = r.task.get_config("output_type")
        for doc_id in r.doc_ids:
            d = r.per_doc[doc_id]
            primary = _scalar(d["metrics"].get(r.primary)) if r.primary else None
            first_resp = d["resps"][0][0] if d["resps"] and d["resps"][0] else None
            lines.append({
                "dataset": plan.name, "index": offset + doc_id, "subtask": name, "doc_id": doc_id,
                "prompt_hash": prompt_hash(json.dumps(to_jsonable(d["arguments"]), sort_keys=True, default=str)),
                "response": first_resp if output_type == "generate_until" else None,
                "target": to_jsonable(d["target"]), "filtered": to_jsonable(d["filtered"]),
                "metrics": to_jsonable(d["metrics"]),
                # The primary metric: `correct` where it is right/wrong per document (paired tests), `score` always.
                "correct": bool(primary) if primary is not None and primary in (0.0, 1.0) else None,
                "score": primary, "settings_key": ctx.settings_key, "scoring_version": ctx.settings["scoring_version"],
            })
        offset += len(r.task.eval_docs)
    return lines


@RUNNERS.register(LMEVAL)
def run_lmeval(plan: DatasetPlan, ctx: RunContext) -> dict:
    from lm_eval.evaluator import evaluate as lm_evaluate  # lazy: lm_eval imports its task index

    from ftlab.eval.lmeval.model import FtlabLM  # lazy: imports lm_eval and torch

    e = ctx.cfg.eval
    loaded = plan.source
    # Generation needs only answers (any backend, llama.cpp's included); the other request types
    # read log-probabilities, which only a backend with the model's weights has.
    types = sorted({str(t.OUTPUT_TYPE) for t in loaded["tasks"].values()} - {GENERATE_UNTIL})
    g = ctx.generator
    if types or g.tokenizer is None:  # (no tokenizer: the canned test double, which cannot count tokens)
        g = ctx.model_generator(f"lm-eval's {', '.join(types)} requests" if types else "")
    # Plain text unless eval.prompt_format=chat, as lm-eval renders by default: a base model and its
    # fine-tune then answer the same text.
    fmt = resolve_prompt_format(e.prompt_format, g.tokenizer, auto=PLAIN)
    chat = fmt == "chat"
    cache = RequestCache(ctx.files.requests, ctx.settings_key)
    previous_format = getattr(g, "prompt_format", None)
    if previous_format is not None:
        g.prompt_format = fmt  # the generator encodes lm-eval's rendered contexts in this format
    lm = FtlabLM(g, chat=chat, batch_size=e.batch_size, cache=cache)
    try:
        with PeakMemory() as mem, quiet_lm_eval():
            t0 = time.perf_counter()
            out = lm_evaluate(lm=lm, task_dict=loaded, limit=e.limit, bootstrap_iters=0, log_samples=True,
                              system_instruction=e.system_prompt, apply_chat_template=chat, fewshot_as_multiturn=chat)
            run_time = time.perf_counter() - t0
    finally:
        if previous_format is not None:
            g.prompt_format = previous_format
    results = {name: _TaskResult(task, out["samples"].get(name, [])) for name, task in loaded["tasks"].items()}
    lines = sample_lines(plan, results, ctx)
    append_jsonl_lines(ctx.samples_path, lines)

    seed, resamples = e.seed, e.bootstrap_samples
    tasks_block = {}
    for name, r in sorted(results.items()):
        lm_res = out["results"].get(name) or {}
        metrics = {}
        for key in r.keys():
            metric, _, filt = key.partition(",")
            value = lm_res.get(f"{metric},{filt or 'none'}")
            metrics[key] = float(value) if _scalar(value) is not None else value
        tasks_block[name] = {
            "n": len(r.doc_ids), "metrics": metrics,
            "intervals": {key: _task_interval(r, key, resamples, seed) for key in metrics},
            "primary_metric": r.primary, "output_type": r.task.get_config("output_type"),
            "num_fewshot": r.task.get_config("num_fewshot"), "version": (r.task.get_config("metadata") or {}).get("version"),
            "higher_is_better": (out.get("higher_is_better") or {}).get(name),
        }
    groups = {name: _group_block(group, results, out["results"], resamples, seed)
              for name, group in sorted((loaded.get("groups") or {}).items())}
    # The entry's own group (the one no other group holds), when it names one.
    held = {child for members in (loaded.get("group_map") or {}).values() for child in members}
    tops = [name for name in groups if name not in held]
    top = tops[0] if len(tops) == 1 else None
    if top is not None:  # the entry names a group: its aggregate is the headline
        head = groups[top]
        primary = next(iter(head["metrics"]), None)
    elif len(tasks_block) == 1:
        head = next(iter(tasks_block.values()))
        primary = head["primary_metric"]
    else:  # a tag: several tasks with no aggregate of lm-eval's; the mean over documents is ftlab's
        head = {"n": len(lines), "metrics": {}, "intervals": {}}
        primary = None
    metrics = dict(head["metrics"])
    intervals = dict(head["intervals"])
    scores = [ln["correct"] for ln in lines]
    if primary is not None and all(c is not None for c in scores):
        metrics["accuracy"] = metrics.get(primary, float(np.mean(scores)))
        intervals["accuracy"] = intervals.get(primary)
    elif primary is None and scores and all(c is not None for c in scores):
        metrics["accuracy"] = float(np.mean(scores))
        intervals["accuracy"] = bootstrap_interval([float(c) for c in scores], resamples, seed)
    model_s = sum(lm.timings.values())
    return {
        "n": len(lines), "metrics": metrics, "intervals": intervals, "primary_metric": primary,
        "task": plan.name, "answer_kind": None, "scoring": LMEVAL, "prompt_format": fmt,
        "lmeval": {"version": lm_eval_version(), "tasks": tasks_block, "groups": groups},
        "samples_per_s": len(lines) / run_time if run_time > 0 else None, "runtime_s": run_time,
        "runtime_this_run_s": run_time, "model_time_s": model_s,
        "requests_this_run": dict(lm.asked), "requests_reused": cache.reused, "peak_memory": mem.as_dict(),
    }

