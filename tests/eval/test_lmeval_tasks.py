"""`lmeval:` tasks run by ftlab, checked against lm-evaluation-harness's own run of the same tasks.

The tasks are lm-eval's registry definitions (`arc_challenge`, `boolq`, `gsm8k`: their prompts,
few-shot rules, stop sequences, filters and metrics), with only their dataset pointed at local
files: ftlab through `eval.lmeval_data`; lm-eval through a task file this test writes, which
`include:`s the registry's YAML and replaces `dataset_path`/`dataset_kwargs` (lm-eval's documented
override). GSM8K is the original release in ../shared/datasets; ARC and BoolQ are the shared
subsets converted here to the columns lm-eval's tasks read (the test's own reading of the inline
ARC options, independent of ftlab's).

lm-eval's side is `simple_evaluate` with its HF model class (HFLM) around the same loaded
SmolLM2-135M-Instruct, fp32. Asserted on every item: the same per-request answers (log-likelihoods
to float precision and the same greedy flags; the same generated text), the same filtered answers
and per-item scores, and equal task metrics.

Nothing comes from a network: conftest sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE.
"""

import json
import re

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow


def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def _arc_rows(parquet):
    """ARC rows as the hub's allenai/ai2_arc has them (lm-eval's arc tasks read these columns)."""
    out = []
    for i, r in pd.read_parquet(parquet).iterrows():
        parts = re.split(r"\s+(?=[A-E1-5]\.\s)", str(r["question"]).strip())
        labels = [p[0] for p in parts[1:]]
        out.append({"id": str(r.get("title") or i), "question": parts[0],
                    "choices": {"text": [p[2:].strip() for p in parts[1:]], "label": labels},
                    "answerKey": str(r["answer"])})
    return out


def _boolq_rows(parquet):
    """BoolQ rows as super_glue/boolq has them (lm-eval's boolq reads passage, question, label)."""
    return [{"passage": r["context"], "question": r["question"], "label": int(bool(r["answer"]))}
            for _, r in pd.read_parquet(parquet).iterrows()]


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_datasets):
    d = tmp_path_factory.mktemp("lmeval-data")
    return {
        "gsm8k": {"test": str(shared_datasets / "gsm8k-test.jsonl"), "train": str(shared_datasets / "gsm8k-train.jsonl")},
        "arc_challenge": {"test": str(_write_jsonl(d / "arc-test.jsonl", _arc_rows(shared_datasets / "test-ai2_arc.parquet")))},
        "boolq": {"validation": str(_write_jsonl(d / "boolq-val.jsonl", _boolq_rows(shared_datasets / "test-boolq.parquet")))},
    }


@pytest.fixture(scope="module")
def smollm2():
    from ftlab.models.sources import load_model

    model, tok, source = load_model("smollm2-135m-instruct", dtype="fp32")
    return model, tok, source


def _ftlab(smollm2, tmp_path, task: str, data: dict, n: int) -> tuple[list[dict], dict]:
    from ftlab.config import EvalRunConfig, load_config
    from ftlab.eval.backends.hf import HFGenerator
    from ftlab.eval.evaluator import evaluate, metrics_paths
    from ftlab.io import read_jsonl
    from ftlab.paths import Workspace

    model, tok, source = smollm2
    cfg = load_config(EvalRunConfig, overrides=[
        f"eval.datasets=[lmeval:{task}]", f"eval.limit={n}", f"eval.lmeval_data={json.dumps({task: data[task]})}",
        "eval.bootstrap_samples=200", "eval.batch_size=16"])
    ws = Workspace(tmp_path / "ws")
    gen = HFGenerator(model, tok, progress=False, source=source)
    doc = evaluate("smollm2-135m-instruct", cfg, ws, generator=gen, model_name="m")
    lines = sorted(read_jsonl(metrics_paths(ws, "m")[1]), key=lambda r: r["index"])
    assert [ln["index"] for ln in lines] == list(range(n))
    return lines, doc["datasets"][f"lmeval:{task}"]


def _lm_eval(smollm2, tmp_path, task: str, data: dict, n: int):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok, _ = smollm2
    manager = TaskManager()
    files = data[task]
    fmt = "json"
    override = {"include": str(manager.task_index[task].yaml_path), "task": task, "dataset_path": fmt,
                "dataset_name": None, "dataset_kwargs": {"data_files": files}}
    # The splits the local files lack are dropped (the registry's ARC names train/validation/test).
    override.update({key: None for key, split in SPLITS[task].items() if split not in files})
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(override))
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=16, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=[str(path)], task_manager=manager, limit=n, log_samples=True,
                                  bootstrap_iters=0)
    return out["samples"][task], out["results"][task]


# The split names the registry tasks give (lm-eval's YAMLs, read once): dropped when absent.
SPLITS = {
    "arc_challenge": {"training_split": "train", "validation_split": "validation"},
    "boolq": {"training_split": "train"},
    "gsm8k": {},
}


def _by_doc(samples):
    """lm-eval logs one sample per (document, filter): regrouped per document."""
    out = {}
    for s in samples:
        out.setdefault(s["doc_id"], {})[s["filter"]] = s
    return out


def _compare(ours: list[dict], block: dict, theirs: list[dict], results: dict, *, generated: bool) -> None:
    peer = _by_doc(theirs)
    assert sorted(peer) == [ln["index"] for ln in ours]
    for line in ours:
        mine = peer[line["doc_id"]]
        assert set(mine) == set(line["filtered"]), line["index"]
        for filt, sample in mine.items():
            if generated:
                assert line["response"] == sample["resps"][0][0], line["index"]
                assert line["filtered"][filt] == sample["filtered_resps"], (line["index"], filt)
            else:
                got, want = line["filtered"][filt], sample["filtered_resps"]
                assert [g[1] for g in got] == [w[1] for w in want], line["index"]  # greedy flags
                assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=2e-3, rel=1e-4), line["index"]
            for metric in sample["metrics"]:
                key = metric if filt == "none" else f"{metric},{filt}"
                assert line["metrics"][key] == sample[metric], (line["index"], key)
    for key, value in block["lmeval"]["tasks"][ours[0]["subtask"]]["metrics"].items():
        metric, _, filt = key.partition(",")
        assert value == pytest.approx(results[f"{metric},{filt or 'none'}"], abs=1e-12), key


@pytest.mark.parametrize("task, n", [("arc_challenge", 50), ("boolq", 50)])
def test_multiple_choice_equals_lm_eval(smollm2, tmp_path, data, task, n):
    ours, block = _ftlab(smollm2, tmp_path, task, data, n)
    theirs, results = _lm_eval(smollm2, tmp_path, task, data, n)
    _compare(ours, block, theirs, results, generated=False)
    assert block["metrics"]["accuracy"] == pytest.approx(results["acc,none"], abs=1e-12)
    lo, hi = block["intervals"]["acc"]
    assert lo <= block["metrics"]["acc"] <= hi


@pytest.mark.timeout(2400)  # 50 five-shot generations on each side: 4-10 min on 2 busy cores
def test_gsm8k_generation_equals_lm_eval(smollm2, tmp_path, data):
    """generate_until with the registry's 5 few-shot examples, stop sequences and both regex filters."""
    n = 50
    ours, block = _ftlab(smollm2, tmp_path, "gsm8k", data, n)
    assert block["lmeval"]["tasks"]["gsm8k"]["num_fewshot"] == 5
    theirs, results = _lm_eval(smollm2, tmp_path, "gsm8k", data, n)
    assert theirs[0]["arguments"][0][0].count("Question:") == 6  # five shots, then the question
    _compare(ours, block, theirs, results, generated=True)
