"""ftlab's log-likelihood scoring checked against lm-evaluation-harness itself.

lm-eval's own HF model class (HFLM, given the already-loaded SmolLM2-135M-Instruct) runs its own
task machinery (a task YAML written to tmp_path that reads the local ARC parquet, as its
arc_challenge task reads the hub copy: `Question: ...\\nAnswer:`, the option texts as choices,
acc and acc_norm) on the same items as `ftlab evaluate ... arc:ll`. Asserted: on every item the
same option under acc and under acc_norm, log-probabilities equal to float precision, and equal
acc / acc_norm. Two settings: plain text (the base-model path), zero-shot, on 100 items; the chat
template (ftlab's default for this model) with two few-shot examples on 10 items. Together about
two minutes at one thread, most of it lm-eval's (it runs the context once per option).

Nothing comes from a network: the parquet builder of `datasets` is local, the model is the
built-in one, and conftest sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE.
"""

import json
import textwrap

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

# The test's own reading of the inline options ("... A. text B. text"), independent of
# ftlab.eval.scoring.choice_prompts.split_options; lm-eval loads it through `!function utils.process_docs`.
PROCESS_DOCS = textwrap.dedent('''
    import re

    def process_docs(dataset):
        def split(doc):
            parts = re.split(r"\\s+(?=[A-E1-5]\\.\\s)", doc["question"].strip())
            labels = [p[0] for p in parts[1:]]
            texts = [p[2:].strip() for p in parts[1:]]
            return {"stem": parts[0], "choices": {"label": labels, "text": texts}, "answerKey": str(doc["answer"])}
        return dataset.map(split)
''')


def _task_yaml(name: str, test_file, cache_dir, fewshot_file=None) -> str:
    data_files = {"test": str(test_file)}
    if fewshot_file is not None:
        data_files["train"] = str(fewshot_file)
    lines = [
        f"task: {name}",
        "dataset_path: parquet",
        "dataset_kwargs:",
        f"  data_files: {json.dumps(data_files)}",
        f"  cache_dir: {json.dumps(str(cache_dir))}",
        "output_type: multiple_choice",
        "test_split: test",
        "process_docs: !function utils.process_docs",
        'doc_to_text: "Question: {{stem}}\\nAnswer:"',
        'doc_to_target: "{{choices.label.index(answerKey)}}"',
        'doc_to_choice: "{{choices.text}}"',
        "metric_list:",
        "  - {metric: acc, aggregation: mean, higher_is_better: true}",
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}",
    ]
    if fewshot_file is not None:
        # The shots ftlab drew, in ftlab's order: lm-eval's first_n sampler then shows the same ones.
        lines += ["fewshot_split: train", "fewshot_config:", "  sampler: first_n"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def smollm2():
    from ftlab.models.sources import load_model

    model, tok, source = load_model("smollm2-135m-instruct", dtype="fp32")
    return model, tok, source


def _ftlab(smollm2, tmp_path, shared_datasets, n: int, prompt_format: str, shots: int) -> tuple[list[dict], dict]:
    from ftlab.config import EvalRunConfig, load_config
    from ftlab.eval.evaluator import evaluate, metrics_paths
    from ftlab.eval.backends.hf import HFGenerator
    from ftlab.io import read_jsonl
    from ftlab.paths import Workspace

    model, tok, source = smollm2
    cfg = load_config(EvalRunConfig, overrides=[
        "eval.datasets=[arc:ll]", f"eval.limit={n}", f"eval.source_dir={shared_datasets}", f"eval.num_fewshot={shots}",
        f"eval.prompt_format={prompt_format}", "eval.bootstrap_samples=10"])
    ws = Workspace(tmp_path / "ws")
    gen = HFGenerator(model, tok, progress=False, prompt_format=prompt_format, source=source)
    doc = evaluate("smollm2-135m-instruct", cfg, ws, generator=gen, model_name="m")
    lines = sorted(read_jsonl(metrics_paths(ws, "m")[1]), key=lambda r: r["index"])
    assert len(lines) == n
    return lines, doc["datasets"]["arc:ll"]


def _lm_eval(smollm2, tmp_path, shared_datasets, n: int, chat: bool, shot_rows: list[dict] | None):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok, _ = smollm2
    task_dir = tmp_path / "lm_eval_task"
    task_dir.mkdir()
    (task_dir / "utils.py").write_text(PROCESS_DOCS)
    fewshot_file = None
    if shot_rows:
        fewshot_file = tmp_path / "shots.parquet"
        pd.DataFrame(shot_rows).to_parquet(fewshot_file)
    name = f"arc_ftlab_check_{'chat' if chat else 'plain'}"
    (task_dir / f"{name}.yaml").write_text(
        _task_yaml(name, shared_datasets / "test-ai2_arc.parquet", tmp_path / "hf-datasets", fewshot_file))
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=32, device="cpu")
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[name], task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        limit=n, num_fewshot=len(shot_rows or []), apply_chat_template=chat, fewshot_as_multiturn=chat,
        log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return samples, out["results"][name]


def _compare(ours: list[dict], block: dict, theirs: list[dict], results: dict) -> None:
    import numpy as np

    assert [s["doc_id"] for s in theirs] == [r["index"] for r in ours]
    for mine, peer in zip(ours, theirs):
        peer_lls = [resp[0][0] for resp in peer["resps"]]
        # Same options, read independently from the inline text (their lengths are what acc_norm divides by).
        assert mine["choice_lengths"] == [len(t) for t in peer["doc"]["choices"]["text"]], mine["index"]
        assert mine["choice_logprobs"] == pytest.approx(peer_lls, abs=2e-3, rel=1e-4), mine["index"]
        assert mine["choice_labels"].index(mine["pred"]) == int(np.argmax(peer_lls)), mine["index"]
        assert mine["correct"] == bool(peer["acc"]) and mine["correct_norm"] == bool(peer["acc_norm"]), mine["index"]
    assert block["metrics"]["acc"] == pytest.approx(results["acc,none"], abs=1e-12)
    assert block["metrics"]["acc_norm"] == pytest.approx(results["acc_norm,none"], abs=1e-12)


def _shot_rows(shared_datasets, n: int, k: int) -> list[dict]:
    """The shots ftlab draws for the first n test rows (same draw as the evaluator's), as rows of
    the original file, for lm-eval's first_n sampler."""
    from ftlab.data.loading import load_examples
    from ftlab.data.tasks import get_task
    from ftlab.eval.fewshot import draw_shots

    test = load_examples("arc", "test", limit=n, source_dir=shared_datasets)
    shots = draw_shots("arc", get_task("arc"), test, k, seed=0, source_dir=shared_datasets)
    train = pd.read_parquet(shared_datasets / "train-ai2_arc.parquet")
    return [train.iloc[s.index][["title", "question", "answer"]].to_dict() for s in shots]


def test_arc_log_likelihood_equals_lm_eval_plain_text(smollm2, tmp_path, shared_datasets):
    """The base-model path: plain text, zero-shot, 100 items."""
    n = 100
    ours, block = _ftlab(smollm2, tmp_path, shared_datasets, n, "plain", 0)
    assert block["prompt_format"] == "plain" and block["kv_cache_reuse"] is True
    theirs, results = _lm_eval(smollm2, tmp_path, shared_datasets, n, chat=False, shot_rows=None)
    assert theirs[0]["arguments"][0][0].startswith("Question: ")  # no template around the question
    _compare(ours, block, theirs, results)


def test_arc_log_likelihood_equals_lm_eval_chat_template_few_shot(smollm2, tmp_path, shared_datasets):
    """The chat-model path (ftlab's default for this model): the template's turns, two few-shot
    exchanges, and a context ending in the assistant turn's newline (which moves to the
    continuation). Fewer items: lm-eval recomputes the long contexts once per option."""
    n, k = 10, 2
    ours, block = _ftlab(smollm2, tmp_path, shared_datasets, n, "chat", k)
    assert block["prompt_format"] == "chat" and block["num_fewshot"] == k
    theirs, results = _lm_eval(smollm2, tmp_path, shared_datasets, n, chat=True, shot_rows=_shot_rows(shared_datasets, n, k))
    context = theirs[0]["arguments"][0][0]
    assert context.count("<|im_start|>user") == k + 1 and context.endswith("<|im_start|>assistant\n")
    _compare(ours, block, theirs, results)
