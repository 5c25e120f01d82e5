"""`lmeval:` entries on the tiny in-process model: every lm-eval output type, groups, resume from
the request cache, and the one-line errors. Agreement with lm-evaluation-harness's own run on a
real model is tests/eval/test_lmeval_tasks.py."""

import json
import math

import pytest
import yaml

from ftlab.cli import main
from ftlab.eval.evaluator import metrics_paths
from ftlab.eval.records.documents import load_metrics_document
from ftlab.io import read_jsonl

ARC_ROWS = [
    {"id": f"q{i}", "question": q, "choices": {"text": opts, "label": ["A", "B", "C", "D"][: len(opts)]}, "answerKey": key}
    for i, (q, opts, key) in enumerate([
        ("Which is a gas?", ["ice", "steam", "water", "rock"], "B"),
        ("What do plants need?", ["light", "salt", "sand"], "A"),
        ("Which is a planet?", ["Moon", "Sun", "Mars", "Sirius"], "C"),
        ("What melts ice?", ["heat", "cold", "dark", "wind"], "A"),
        ("Which animal flies?", ["cat", "dog", "bird", "fish"], "C"),
        ("Which is a metal?", ["wood", "iron", "glass", "paper"], "B"),
    ])
]


def _evaluate(*args) -> int:
    return main(["evaluate", "scratch:tiny", "--threads", "1", "eval.bootstrap_samples=50", *args])


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def arc_file(tmp_path):
    return _jsonl(tmp_path / "arc.jsonl", ARC_ROWS)


def _doc(workspace, name="scratch-tiny"):
    return load_metrics_document(metrics_paths(workspace, name)[0])


def test_registry_task_on_local_data_then_resume_from_the_request_cache(workspace, arc_file, capsys):
    data = f"eval.lmeval_data={{arc_challenge: {{test: {arc_file}}}}}"
    assert _evaluate("--datasets", "lmeval:arc_challenge", "--limit", "4", data) == 0
    assert "lmeval:arc_challenge: n=4" in capsys.readouterr().out
    json_path, samples_path = metrics_paths(workspace, "scratch-tiny")
    block = _doc(workspace)["datasets"]["lmeval:arc_challenge"]
    lines = read_jsonl(samples_path)
    assert [ln["index"] for ln in lines] == [0, 1, 2, 3] and {ln["subtask"] for ln in lines} == {"arc_challenge"}
    # Scores are lm-eval's per-document metrics; `correct` is the primary one (acc), paired tests read it.
    assert block["primary_metric"] == "acc" and block["lmeval"]["tasks"]["arc_challenge"]["output_type"] == "multiple_choice"
    assert all(ln["correct"] == bool(ln["metrics"]["acc"]) for ln in lines)
    assert block["metrics"]["acc"] == pytest.approx(sum(ln["metrics"]["acc"] for ln in lines) / 4)
    assert block["metrics"]["accuracy"] == block["metrics"]["acc"]
    lo, hi = block["intervals"]["acc_norm"]
    assert lo <= block["metrics"]["acc_norm"] <= hi
    # Each option's (log-likelihood, greedy) is the filtered answer; acc picks the likeliest option.
    for ln in lines:
        lls = [ll for ll, _ in ln["filtered"]["none"]]
        gold = "ABCD".index(ARC_ROWS[ln["doc_id"]]["answerKey"])
        assert ln["metrics"]["acc"] == float(max(range(len(lls)), key=lls.__getitem__) == gold)
    asked = block["requests_this_run"]["loglikelihood"]
    assert asked == sum(len(ARC_ROWS[i]["choices"]["text"]) for i in range(4))

    # Every answer is in the model's request cache, named with its other files (ftlab.paths.MetricsFiles).
    files = workspace.metrics_files("scratch-tiny")
    assert (files.metrics, files.samples) == (json_path, samples_path)
    assert len(read_jsonl(files.requests)) == asked

    # The same settings again: the result is kept, nothing asked.
    assert _evaluate("--datasets", "lmeval:arc_challenge", "--limit", "4", data) == 0
    assert _doc(workspace)["datasets"]["lmeval:arc_challenge"] == block
    # A killed run loses nothing it had answered: with the document and samples gone (as if killed
    # before lm-eval scored), the rerun reads every answer back from the request cache.
    json_path.unlink()
    samples_path.unlink()
    assert _evaluate("--datasets", "lmeval:arc_challenge", "--limit", "4", data) == 0
    again = _doc(workspace)["datasets"]["lmeval:arc_challenge"]
    assert again["requests_this_run"] == {} and again["requests_reused"] == asked
    assert again["metrics"] == block["metrics"]
    # A higher limit asks only for the new documents' options.
    assert _evaluate("--datasets", "lmeval:arc_challenge", "--limit", "6", data) == 0
    more = _doc(workspace)["datasets"]["lmeval:arc_challenge"]
    assert more["n"] == 6 and more["requests_reused"] == asked
    assert more["requests_this_run"]["loglikelihood"] == 8


def _task_file(folder, name: str, body: dict):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"task": name, **body}))
    return path


def test_generate_until_task_file_stops_at_the_task_stop_sequence(workspace, tmp_path):
    rows = [{"q": f"{a} plus {b} is", "a": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    data = _jsonl(tmp_path / "sums.jsonl", rows)
    path = _task_file(tmp_path, "sums_gen", {
        "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
        "output_type": "generate_until", "doc_to_text": "{{q}}", "doc_to_target": "{{a}}",
        "generation_kwargs": {"until": ["e"], "max_gen_toks": 6, "do_sample": False},
        "filter_list": [{"name": "first-number", "filter": [{"function": "regex", "regex_pattern": "(\\d+)"},
                                                            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    })
    assert _evaluate("--datasets", f"lmeval:{path}") == 0
    block = _doc(workspace)["datasets"][f"lmeval:{path}"]
    lines = read_jsonl(metrics_paths(workspace, "scratch-tiny")[1])
    assert len(lines) == 4 and block["primary_metric"] == "exact_match,first-number"
    for ln in lines:
        assert "e" not in ln["response"]  # cut at the stop string, as lm-eval cuts it
        assert ln["correct"] == (ln["filtered"]["first-number"] == rows[ln["doc_id"]]["a"])
    assert block["requests_this_run"] == {"generate_until": 4}


def test_rolling_log_likelihood_is_the_plain_transformers_sum(workspace, tmp_path, tiny):
    """loglikelihood_rolling (perplexity tasks): each text's summed log-probability from its BOS,
    recomputed here with one plain forward pass of the same model."""
    import torch

    texts = ["the cat sat on the mat", "two plus two is four and more"]
    data = _jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in texts])
    path = _task_file(tmp_path, "texts_ppl", {
        "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
    })
    assert _evaluate("--datasets", f"lmeval:{path}", "model.dtype=fp32") == 0
    lines = sorted(read_jsonl(metrics_paths(workspace, "scratch-tiny")[1]), key=lambda ln: ln["index"])
    model, tok = tiny
    for ln, text in zip(lines, texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            logits = model(torch.tensor([[prefix] + ids[:-1]])).logits[0].float()
        want = float(torch.log_softmax(logits, -1)[torch.arange(len(ids)), torch.tensor(ids)].sum())
        assert ln["metrics"]["word_perplexity"][0] == pytest.approx(want, abs=1e-4)
    block = _doc(workspace)["datasets"][f"lmeval:{path}"]
    total = sum(ln["metrics"]["word_perplexity"][0] for ln in lines)
    words = sum(ln["metrics"]["word_perplexity"][1] for ln in lines)
    assert block["metrics"]["word_perplexity"] == pytest.approx(math.exp(-total / words))
    lo, hi = block["intervals"]["word_perplexity"]  # a bootstrap of lm-eval's own aggregation
    assert lo <= hi and "accuracy" not in block["metrics"]


def test_group_aggregates_as_lm_eval_with_every_task_kept(workspace, tmp_path, arc_file):
    other = _jsonl(tmp_path / "arc2.jsonl", ARC_ROWS[:2])
    mc = {"dataset_path": "json", "test_split": "test", "output_type": "multiple_choice",
          "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{choices.label.index(answerKey)}}",
          "doc_to_choice": "{{choices.text}}", "metric_list": [{"metric": "acc"}]}
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({
        "group": "both", "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "task": [{"task": "big", **mc, "dataset_kwargs": {"data_files": {"test": str(arc_file)}}},
                 {"task": "small", **mc, "dataset_kwargs": {"data_files": {"test": str(other)}}}],
    }))
    assert _evaluate("--datasets", f"lmeval:{path}") == 0
    block = _doc(workspace)["datasets"][f"lmeval:{path}"]
    tasks = block["lmeval"]["tasks"]
    # lm-eval names a group's inline tasks group::task.
    assert set(tasks) == {"both::big", "both::small"} and block["n"] == 8
    weighted = (tasks["both::big"]["metrics"]["acc"] * 6 + tasks["both::small"]["metrics"]["acc"] * 2) / 8
    assert block["metrics"]["acc"] == pytest.approx(weighted)
    lines = read_jsonl(metrics_paths(workspace, "scratch-tiny")[1])
    # Indices run over the group's tasks in name order (big 0-5, small 6-7): unique per document.
    assert sorted(ln["index"] for ln in lines) == list(range(8))
    assert {ln["subtask"] for ln in lines if ln["index"] >= 6} == {"both::small"}
    assert block["lmeval"]["groups"]["both"]["metrics"]["acc"] == block["metrics"]["acc"]


@pytest.mark.parametrize("args, message", [
    (["--datasets", "lmeval:gsm8kk"], "'lmeval:gsm8kk' is not a task, group or tag of lm-eval"),
    (["--datasets", "lmeval:gsm8k"], "lmeval:gsm8k: its data cannot be loaded (dataset openai/gsm8k/main)"),
    (["--datasets", "lmeval:gsm8k", "eval.lmeval_data={gsm8k: {test: /nonexistent/g.jsonl}}"],
     "eval.lmeval_data.gsm8k.test: /nonexistent/g.jsonl not found"),
    (["--datasets", "lmeval:missing.yaml"], "task file missing.yaml not found"),
    (["--datasets", "lmeval:arc_challenge", "eval.lmeval_num_fewshot=-1"], "eval.lmeval_num_fewshot=-1 must be >= 0"),
])
def test_bad_lmeval_entries_are_one_line_errors_and_write_nothing(workspace, capsys, args, message):
    assert _evaluate(*args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not workspace.metrics_dir.exists() or not any(workspace.metrics_dir.iterdir())


def test_sampled_generation_is_refused(workspace, tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [{"q": "hi", "a": "x"}])
    path = _task_file(tmp_path, "sampled", {
        "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
        "output_type": "generate_until", "doc_to_text": "{{q}}", "doc_to_target": "{{a}}",
        "generation_kwargs": {"until": ["\n"], "do_sample": True, "temperature": 0.7},
        "metric_list": [{"metric": "exact_match"}],
    })
    assert _evaluate("--datasets", f"lmeval:{path}") == 2
    assert "ftlab's engine decodes greedily" in capsys.readouterr().err


@pytest.mark.slow
def test_a_study_grids_over_an_lmeval_task(tmp_path, arc_file):
    """The study engine runs `lmeval:` entries like any task: each model's evaluation job asks lm-eval's
    task on ftlab's engine and the verdict pairs the models document by document."""
    import os
    import subprocess
    import sys

    spec = {
        "name": "lm", "bases": ["scratch:tiny"], "datasets": ["synthetic-arith"],
        "train": {"fixed": {"train.max_steps": 2, "train.batch_size": 4, "data.trunc_train": 16, "data.val_size": 0,
                            "data.max_length": 64, "train.report_to": ["none"]},
                  "grid": {"peft.method": ["LoRa"]}, "seeds": [0]},
        "evaluate": {"datasets": ["lmeval:arc_challenge"], "limit": 6,
                     "settings": {"eval.lmeval_data": {"arc_challenge": {"test": str(arc_file)}}}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "ftlab", "--workdir", str(tmp_path), "study", "run", str(path)],
                       capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    metrics = sorted((tmp_path / "Testing" / "metrics").glob("*.json"))
    assert len(metrics) == 2  # the base snapshot and the LoRA fine-tune
    for m in metrics:
        block = load_metrics_document(m)["datasets"]["lmeval:arc_challenge"]
        assert block["n"] == 6 and block["lmeval"]["tasks"]["arc_challenge"]["output_type"] == "multiple_choice"
    report = (tmp_path / "Testing" / "studies" / "lm" / "report.md").read_text()
    assert "lmeval:arc_challenge" in report
    # Starting the study over removes each evaluation's request cache with its metrics: a fresh run
    # asks the model again instead of reading the old answers back.
    from ftlab.paths import Workspace
    from ftlab.study.run import open_study, remove_outputs

    mdir = tmp_path / "Testing" / "metrics"
    assert len(list(mdir.glob("*.requests.jsonl"))) == 2
    remove_outputs(open_study(path, Workspace(tmp_path), []))
    assert sorted(p.name for p in mdir.iterdir() if not p.name.startswith(".")) == []
