"""The evaluator end to end: canned generator (fast), resume after a kill, config changes, bad
inputs through the CLI, the metrics document schema, `ftlab score`."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ftlab.cli import main
from ftlab.config import EvalRunConfig, load_config
from ftlab.errors import FtlabError
from ftlab.eval import load_metrics_document
from ftlab.eval.evaluator import eval_config_hash, evaluate, metrics_paths, model_file_name
from ftlab.eval.canned import CannedGenerator
from ftlab.io import atomic_write_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]


def cfg_of(*overrides):
    return load_config(EvalRunConfig, overrides=["eval.bootstrap_samples=100", *overrides])


def write_datasets(ws):
    """Small test splits for arc, boolq and squad_v2 in the workspace's Datasets/."""
    d = ws.datasets_dir
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "title": ["q1", "q2", "q3", "q4"],
        "question": ["Sky colour? A. blue B. red C. green D. black", "2+2? A. 3 B. 4 C. 5 D. 6",
                     "Water is? A. dry B. solid C. wet D. hot", "Ice is? A. cold B. hot C. wet D. red"],
        "answer": ["A", "2", "C", "A"],  # "2" is ARC's digit label for B
    }).to_parquet(d / "test-ai2_arc.parquet")
    pd.DataFrame({
        "question": ["is the sky blue", "is fire cold", "is water wet"],
        "answer": [True, False, True],
        "context": ["The sky is blue.", "Fire is hot.", "Water is wet."],
    }).to_parquet(d / "test-boolq.parquet")
    pd.DataFrame({
        "title": ["a", "b", "c"],
        "context": ["Paris is the capital of France.", "Rome is in Italy.", "Cats purr."],
        "question": ["What is the capital of France?", "Where is Rome?", "What is the capital of Mars?"],
        "answer": ["Paris", "Italy", ""],
    }).to_parquet(d / "test-squad_v2.parquet")


def arithmetic_oracle(prompt: str) -> str:
    """Answers synthetic-arith questions correctly (boxed), to check scoring end to end."""
    m = re.search(r"What is (-?\d+) ([-+*]) (-?\d+)\?", prompt)
    if m:
        a, op, b = int(m[1]), m[2], int(m[3])
        return f"We compute. \\boxed{{{a + b if op == '+' else a - b if op == '-' else a * b}}}"
    m = re.search(r"Which number is larger, (\d+) or (\d+)\?", prompt)
    return f"\\boxed{{{max(int(m[1]), int(m[2]))}}}"


def test_canned_end_to_end_document(workspace):
    write_datasets(workspace)

    def respond(prompt):
        if "Sky colour" in prompt:
            return "\\boxed{A}"
        if "2+2" in prompt:
            return "\\boxed{B}"
        if "Passage:" in prompt:
            return "\\boxed{yes}"
        if "capital of France" in prompt:
            return "It is \\boxed{Paris}."
        if "capital of Mars" in prompt:
            return "\\boxed{unanswerable}"
        if "What is" in prompt or "Which number" in prompt:
            return arithmetic_oracle(prompt)
        return "I am not sure"

    cfg = cfg_of("eval.datasets=arc,boolq,squad_v2,synthetic-arith", "eval.limit=6", "eval.batch_size=2")
    doc = evaluate("scratch:tiny", cfg, workspace, generator=CannedGenerator(respond))
    json_path, samples_path = metrics_paths(workspace, "scratch-tiny")
    assert load_metrics_document(json_path) == doc
    assert doc["schema_version"] == 1 and doc["kind"] == "metrics" and doc["status"] == "complete"
    assert doc["eval_config_hash"] == eval_config_hash(cfg)
    assert doc["model"]["name"] == "scratch-tiny" and doc["backend"] == "canned"
    ds = doc["datasets"]
    assert ds["arc"]["n"] == 4 and ds["arc"]["metrics"]["accuracy"] == 0.5
    assert ds["arc"]["format_success_rate"] == 0.5 and ds["arc"]["flexible_accuracy"] == 0.5
    assert ds["boolq"]["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert ds["squad_v2"]["metrics"]["HasAns_exact"] == 0.5 and ds["squad_v2"]["metrics"]["NoAns_accuracy"] == 1.0
    assert ds["synthetic-arith"]["metrics"]["accuracy"] == 1.0 and ds["synthetic-arith"]["n"] == 6
    for block in ds.values():
        for key in ("n", "metrics", "intervals", "format_success_rate", "flexible_accuracy", "latency_s",
                    "new_tokens", "samples_per_s", "runtime_s", "peak_memory"):
            assert key in block
        assert set(block["latency_s"]) == {"mean", "median", "p90", "std"}
        lo, hi = block["intervals"]["accuracy"]
        assert lo <= block["metrics"]["accuracy"] <= hi
    s = doc["summary"]
    assert s["total_samples"] == 4 + 3 + 3 + 6
    assert s["mean_accuracy"] == pytest.approx((0.5 + 2 / 3 + 2 / 3 + 1.0) / 4)
    assert s["peak_memory"]["peak_rss_mb"] > 0
    lines = read_jsonl(samples_path)
    assert len(lines) == 16
    required = {"dataset", "index", "prompt_hash", "response", "extracted", "flexible", "gold", "correct",
                "latency_s", "new_tokens", "eval_config_hash"}
    assert all(required <= set(line) for line in lines)
    assert all("f1" in line for line in lines if line["dataset"] == "squad_v2")


class Kill(Exception):
    pass


def test_resume_after_kill_skips_finished_samples(workspace):
    cfg = cfg_of("eval.datasets=synthetic-arith", "eval.limit=10", "eval.batch_size=2")
    calls = []

    def dies_after_five(prompt):
        if len(calls) == 5:
            raise Kill("injected kill")
        calls.append(prompt)
        return arithmetic_oracle(prompt)

    with pytest.raises(Kill):
        evaluate("scratch:tiny", cfg, workspace, generator=CannedGenerator(dies_after_five))
    json_path, samples_path = metrics_paths(workspace, "scratch-tiny")
    assert len(read_jsonl(samples_path)) == 4  # two full batches made it to disk
    assert not json_path.exists()

    second = []
    doc = evaluate("scratch:tiny", cfg, workspace, generator=CannedGenerator(lambda p: second.append(p) or arithmetic_oracle(p)))
    assert len(second) == 6  # only the missing samples
    assert set(second).isdisjoint(calls[:4])
    lines = read_jsonl(samples_path)
    assert sorted(line["index"] for line in lines) == list(range(10))
    assert doc["datasets"]["synthetic-arith"]["n"] == 10 and doc["datasets"]["synthetic-arith"]["metrics"]["accuracy"] == 1.0
    assert doc["datasets"]["synthetic-arith"]["generated_this_run"] == 6

    # Complete and unchanged: nothing is generated again; the document is rebuilt from the samples.
    third = []
    again = evaluate("scratch:tiny", cfg, workspace, generator=CannedGenerator(lambda p: third.append(p) or "x"))
    assert third == [] and again["datasets"] == {**again["datasets"]}
    assert again["datasets"]["synthetic-arith"]["metrics"] == doc["datasets"]["synthetic-arith"]["metrics"]


def test_changed_config_starts_fresh(workspace):
    cfg = cfg_of("eval.datasets=synthetic-arith", "eval.limit=3")
    evaluate("scratch:tiny", cfg, workspace, generator=CannedGenerator("\\boxed{1}"))
    changed = cfg_of("eval.datasets=synthetic-arith", "eval.limit=3", "eval.max_new_tokens=99")
    assert eval_config_hash(changed) != eval_config_hash(cfg)
    # Speed knobs do not change the hash (finished samples stay valid).
    assert eval_config_hash(cfg_of("eval.datasets=synthetic-arith", "eval.limit=3", "eval.batch_size=7")) == eval_config_hash(cfg)
    calls = []
    doc = evaluate("scratch:tiny", changed, workspace, generator=CannedGenerator(lambda p: calls.append(p) or "\\boxed{2}"))
    assert len(calls) == 3
    _, samples_path = metrics_paths(workspace, "scratch-tiny")
    assert {line["eval_config_hash"] for line in read_jsonl(samples_path)} == {doc["eval_config_hash"]}
    stale = list(samples_path.parent.glob("scratch-tiny.samples.jsonl.stale-*"))
    assert len(stale) == 1 and len(read_jsonl(stale[0])) == 3


def test_bad_inputs_raise_one_line_errors(workspace, tmp_path):
    cfg = cfg_of("eval.datasets=synthetic-arith", "eval.limit=2")
    with pytest.raises(FtlabError, match="does not exist"):
        evaluate(str(tmp_path / "no-such-model"), cfg, workspace, generator=CannedGenerator("x"))
    with pytest.raises(FtlabError, match="unknown task 'arcc'.*did you mean 'arc'"):
        evaluate("scratch:tiny", cfg_of("eval.datasets=arcc"), workspace, generator=CannedGenerator("x"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(FtlabError, match="empty"):
        evaluate("scratch:tiny", cfg_of(f"eval.datasets={empty}"), workspace, generator=CannedGenerator("x"))
    with pytest.raises(FtlabError, match="twice"):
        evaluate("scratch:tiny", cfg_of("eval.datasets=synthetic-arith,synthetic-arith"), workspace,
                 generator=CannedGenerator("x"))
    assert not workspace.metrics_dir.exists()  # nothing half-written


def test_perplexity_needs_a_model(workspace):
    with pytest.raises(FtlabError, match="needs model weights"):
        evaluate("scratch:tiny", cfg_of("eval.datasets=perplexity", "eval.limit=2"), workspace,
                 generator=CannedGenerator("x"))


def test_custom_file_task(workspace, tmp_path):
    data = tmp_path / "capitals.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Capital of France?", "answer": "Paris"},
        {"question": "Capital of Italy?", "answer": "Rome"},
    ]))
    doc = evaluate("scratch:tiny", cfg_of(f"eval.datasets={data}"), workspace,
                   generator=CannedGenerator(["\\boxed{paris}", "\\boxed{Milan}"]))
    block = doc["datasets"][str(data)]
    assert block["answer_kind"] == "exact" and block["metrics"]["accuracy"] == 0.5


@pytest.mark.parametrize("argv,message", [
    (["evaluate", "scratch:tiny", "--datasets", "nope", "--threads", "1"], "unknown task 'nope'"),
    (["evaluate", "/no/such/folder", "--threads", "1"], "does not exist"),
    (["evaluate", "scratch:tiny", "eval.limit=0"], "eval.limit=0 must be positive"),
    (["evaluate", "scratch:tiny", "eval.bogus=1"], "unknown key 'eval.bogus'"),
    (["evaluate", "scratch:tiny", "stray"], "key=value"),
    (["score", "--task", "boolq", "--predictions", "/no/such.jsonl"], "not found"),
    (["score", "--task", "arcc", "--predictions", "/no/such.jsonl"], "unknown task"),
])
def test_cli_errors_exit_2_with_one_line(workspace, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not workspace.metrics_dir.exists()


def test_evaluate_help_after_model(capsys):
    # `ftlab evaluate MODEL --help` lands in the overrides tail; it must print help, not an error.
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "scratch:tiny", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--datasets" in out and "--batch-size" in out and "key=value" in out


def test_script_entry_point_reports_errors(workspace):
    proc = subprocess.run([sys.executable, str(REPO / "Testing" / "02_TestModels.py"), "scratch:tiny", "--datasets", "nope"],
                          capture_output=True, text=True, cwd=workspace.root, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown task 'nope'")


def test_cli_canned_backend_with_options_after_overrides(workspace, capsys):
    args = ["evaluate", "scratch:tiny", "eval.backend=canned", '--limit', '3',
            "eval.backend_options={response: '\\boxed{5}'}", "--datasets", "synthetic-arith", "--threads", "1"]
    assert main(args) == 0
    doc = load_metrics_document(metrics_paths(workspace, "scratch-tiny")[0])
    assert doc["backend"] == "canned" and doc["datasets"]["synthetic-arith"]["n"] == 3
    assert doc["eval_config"]["eval"]["limit"] == 3


def test_score_cli_recomputes_metrics(tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    rows = [{"response": "\\boxed{yes}", "answer": True}, {"response": "\\boxed{no}", "answer": "yes"},
            {"response": "\\boxed{no}", "answer": "false"}, {"response": "Yes!", "answer": "no"}]
    preds.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["score", "--task", "boolq", "--predictions", str(preds)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "boolq" and out["n"] == 4
    assert out["metrics"]["accuracy"] == 0.5 and out["format_success_rate"] == 0.75
    assert out["flexible_accuracy"] == 0.5


def test_model_file_names(tmp_path):
    folder = tmp_path / "SmolLM2-135M-synthetic-arith-SFT-LoRa16-NoQuant"
    folder.mkdir()
    assert model_file_name(str(folder)) == folder.name
    assert model_file_name(str(folder) + "/") == folder.name
    assert model_file_name("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB__SmolLM2-135M"
    assert model_file_name("scratch:tiny") == "scratch-tiny"


def test_metrics_document_upgrade_and_validation(tmp_path):
    v0 = tmp_path / "old.json"
    atomic_write_json(v0, {"schema_version": 0, "model": "m", "results": {"arc": {"accuracy": 0.5, "n": 10}}})
    doc = load_metrics_document(v0)
    assert doc["schema_version"] == 1 and doc["model"]["name"] == "m"
    assert doc["datasets"]["arc"] == {"n": 10, "metrics": {"accuracy": 0.5}, "intervals": {}}
    assert doc["summary"]["mean_accuracy"] == 0.5
    bad = tmp_path / "bad.json"
    atomic_write_json(bad, {"schema_version": 1, "kind": "metrics"})
    with pytest.raises(FtlabError, match="lacks model"):
        load_metrics_document(bad)
    newer = tmp_path / "newer.json"
    atomic_write_json(newer, {"schema_version": 9})
    with pytest.raises(FtlabError, match="newer"):
        load_metrics_document(newer)
    with pytest.raises(FtlabError, match="not found"):
        load_metrics_document(tmp_path / "missing.json")


def test_enable_thinking_reaches_the_chat_template(workspace):
    seen = []

    class Recording(CannedGenerator):
        def render(self, messages, enable_thinking=False):
            seen.append(enable_thinking)
            return super().render(messages, enable_thinking)

    evaluate("scratch:tiny", cfg_of("eval.datasets=synthetic-arith", "eval.limit=2", "eval.enable_thinking=true"),
             workspace, generator=Recording("\\boxed{1}"))
    assert seen == [True, True]
