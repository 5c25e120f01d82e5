"""The `loglikelihood` evaluation runner (`arc:ll`, `boolq:ll`, eval.scoring=loglikelihood).

Each option's log-probability as the continuation of the question's prompt (ftlab.eval.scoring.choice_prompts
says what is asked, ftlab.eval.scoring.choice_logprobs computes it). Two predictions per question, defined
as lm-evaluation-harness defines them (checked item by item in tests/eval/test_lm_eval_agreement.py):
- `acc`: the option with the highest summed log-probability;
- `acc_norm`: the highest log-probability divided by the option's length in characters (the
  option text without its leading space), which removes the bias towards short options.
Ties go to the first option (numpy argmax, as in lm-eval). Sample lines keep every option's
log-probability and length, so both metrics are recomputed from the samples file by this code.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ftlab.env import PeakMemory
from ftlab.eval.prompt_format import encode_prompts, resolve_prompt_format
from ftlab.eval.runners import LOGLIKELIHOOD, RUNNERS, DatasetPlan, RunContext, prompt_hash
from ftlab.eval.scoring.answer_kinds import get_scorer
from ftlab.eval.scoring.choice_logprobs import ChoiceRequest, ChoiceScorer
from ftlab.eval.scoring.metrics import SampleScore, ScoringOptions, bootstrap_interval
from ftlab.io import append_jsonl

log = logging.getLogger(__name__)

def predictions(logprobs: list[float], lengths: list[int]) -> tuple[int, int]:
    """(acc prediction, acc_norm prediction): option indices."""
    lp = np.asarray(logprobs, dtype=float)
    return int(np.argmax(lp)), int(np.argmax(lp / np.asarray(lengths, dtype=float)))


def sample_line(plan: DatasetPlan, ctx: RunContext, example, item, prompt_hash: str, logprobs: list[float],
                share_s: float) -> dict:
    lengths = [len(option) for option in item.options]
    pred, pred_norm = predictions(logprobs, lengths)
    return {
        "dataset": plan.name, "index": example.index, "prompt_hash": prompt_hash, "response": None,
        "choice_labels": item.labels, "choice_logprobs": logprobs, "choice_lengths": lengths,
        "pred": item.labels[pred], "pred_norm": item.labels[pred_norm], "gold": item.labels[item.gold],
        "correct": pred == item.gold, "correct_norm": pred_norm == item.gold,
        # This sample's share of its batch's wall time: sums to the run time across resumes.
        "gen_time_s": share_s, "settings_key": ctx.settings_key,
        "scoring_version": ctx.settings["scoring_version"],
    }


def metrics_block(task, lines: list[dict], *, bootstrap_samples: int, seed: int) -> dict:
    """The dataset block's quality part, recomputed from stored log-probabilities: the answer
    kind's metrics (accuracy, macro-F1, per-class, confusion matrix) for the acc predictions,
    plus acc_norm, each with a bootstrap interval."""
    # The label set is the options the questions offered (a custom 3-option file has three
    # classes), as for generative scoring (ftlab.eval.scoring.answer_kinds.task_options).
    labels = tuple(task.labels) if task.labels else tuple(sorted({x for ln in lines for x in ln["choice_labels"]}))
    scorer = get_scorer(task.answer_kind, ScoringOptions.for_task(task, labels=labels or None))
    scores, norm = [], []
    for line in lines:
        labels, gold = line["choice_labels"], line["gold"]
        pred, pred_norm = predictions(line["choice_logprobs"], line["choice_lengths"])
        g = scorer.norm_gold(gold)
        p = scorer.norm_gold(labels[pred])
        scores.append(SampleScore(extracted=labels[pred], flexible=labels[pred], correct=pred == labels.index(gold),
                                  flexible_correct=pred == labels.index(gold), pred=p, gold=g))
        norm.append(float(pred_norm == labels.index(gold)))
    metrics = scorer.aggregate(scores)
    acc = [float(s.correct) for s in scores]
    metrics["acc"] = metrics["accuracy"]
    metrics["acc_norm"] = float(np.mean(norm)) if norm else None
    return {"n": len(lines), "metrics": metrics,
            "intervals": {"accuracy": bootstrap_interval(acc, bootstrap_samples, seed),
                          "acc_norm": bootstrap_interval(norm, bootstrap_samples, seed)}}


@RUNNERS.register(LOGLIKELIHOOD)
def run_loglikelihood(plan: DatasetPlan, ctx: RunContext) -> dict:
    from ftlab.eval.scoring.choice_prompts import build_item, encode, render  # lazy: ftlab.eval.scoring.choice_prompts imports numpy
    from ftlab.eval.scoring.modes import SCORING_MODES  # lazy: ftlab.eval.scoring.modes imports numpy

    g = ctx.model_generator()
    e = ctx.cfg.eval
    fmt = resolve_prompt_format(getattr(e, "prompt_format", "auto"), g.tokenizer,
                                auto=SCORING_MODES.get("loglikelihood").auto_prompt_format)
    chat = fmt == "chat"
    items = [build_item(plan.task, ex) for ex in plan.examples]
    shots = [build_item(plan.task, ex) for ex in plan.shots]
    rendered = [render(item, shots, chat=chat, tokenizer=g.tokenizer, system=e.system_prompt,
                       enable_thinking=e.enable_thinking) for item in items]
    hashes = [prompt_hash("\x00".join([context, *conts])) for context, conts in rendered]
    lines: dict[int, dict] = {}
    pending = []
    for pos, ex in enumerate(plan.examples):
        old = ctx.reusable(ex.index, hashes[pos])
        if old is not None and old.get("choice_logprobs") is not None:
            lines[pos] = old
        else:
            pending.append(pos)
    if lines:
        log.info("%s: %d of %d samples already scored, scoring %d", plan.name, len(lines), len(items), len(pending))
    scorer = ChoiceScorer(g.model, g.tokenizer.pad_token_id, progress=getattr(g, "progress", False))
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        requests = [ChoiceRequest(*encode(*rendered[p], lambda texts: encode_prompts(g.tokenizer, texts, chat)))
                    for p in pending]
        last = t0
        for group in scorer.score(requests, max_questions=e.batch_size):
            now = time.perf_counter()
            share = (now - last) / max(1, len(group))
            last = now
            for j, logprobs in group:
                pos = pending[j]
                line = sample_line(plan, ctx, plan.examples[pos], items[pos], hashes[pos], logprobs, share)
                append_jsonl(ctx.samples_path, line)
                lines[pos] = line
        run_time = time.perf_counter() - t0
    ordered = [lines[p] for p in range(len(items))]
    block = metrics_block(plan.task, ordered, bootstrap_samples=e.bootstrap_samples, seed=e.seed)
    total_time = sum(float(r.get("gen_time_s") or 0.0) for r in ordered)
    block.update(
        task=plan.task.name, answer_kind=plan.task.answer_kind, scoring="loglikelihood", num_fewshot=len(shots), prompt_format=fmt,
        samples_per_s=(len(ordered) / total_time) if total_time > 0 else None,
        runtime_s=total_time, scored_this_run=len(pending), runtime_this_run_s=run_time, peak_memory=mem.as_dict(),
        # Questions whose options were scored in one forward (eval.batch_size caps it; None = token budget).
        batch_size=scorer.questions_per_forward if pending else None,
        kv_cache_reuse=scorer.cached,
    )
    return block
