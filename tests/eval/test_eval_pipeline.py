"""The evaluator end to end: canned generator (fast), resume after a kill, results that accumulate
per task, settings changes, bad inputs through the CLI, the metrics document schema and its
upgrade from v1, `ftlab score`."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ftlab.cli import main
from ftlab.config import EvalRunConfig, load_config
from ftlab.data.loading import load_examples
from ftlab.errors import FtlabError
from ftlab.eval.records.documents import load_metrics_document
from ftlab.eval.evaluator import evaluate, expected_settings, metrics_paths, model_file_name
from ftlab.data.tasks import TASKS
from ftlab.eval.scoring.answer_kinds import get_scorer
from ftlab.eval.scoring.metrics import ScoringOptions, score_responses
from ftlab.eval.records.results import settings_key
from ftlab.eval.backends.canned import CannedGenerator
from ftlab.io import append_jsonl, atomic_write_json, read_jsonl

REPO = Path(__file__).resolve().parents[2]


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
    assert doc["schema_version"] == 2 and doc["kind"] == "metrics" and doc["status"] == "complete"
    expected = expected_settings(cfg, workspace)
    assert sorted(expected) == sorted(doc["datasets"])
    for key, block in doc["datasets"].items():
        assert block["settings"] == expected[key] and block["settings_key"] == settings_key(expected[key])
        assert block["scoring_version"] == 2 and block["settings"]["scoring_mode"] == "generate"
    assert doc["datasets"]["arc"]["settings"]["generation"] == {"max_new_tokens": 32, "stop_at_box": True}
    assert doc["datasets"]["synthetic-arith"]["settings"]["tolerance"]["rel"] == 0.0  # integer answers: exact
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
                "cut_off", "latency_s", "new_tokens", "settings_key", "scoring_version"}
    assert all(required <= set(line) for line in lines)
    assert {line["settings_key"] for line in lines if line["dataset"] == "arc"} == {doc["datasets"]["arc"]["settings_key"]}
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

    # Complete and unchanged: nothing is generated (the model is not even asked to render a prompt),
    # the task's block is kept as it was, and it is what the stored samples give when rescored.
    class Untouchable(CannedGenerator):
        def render(self, messages, enable_thinking=False):
            raise AssertionError("an up-to-date task must not touch the model")

    again = evaluate("scratch:tiny", cfg, workspace, generator=Untouchable("x"))
    assert again["datasets"]["synthetic-arith"] == doc["datasets"]["synthetic-arith"]
    stored = sorted(read_jsonl(samples_path), key=lambda line: line["index"])
    scorer = get_scorer("numeric", ScoringOptions.for_task(TASKS.get("synthetic-arith")))
    _, rescored = score_responses(scorer, [line["response"] for line in stored],
                                  [line["gold"] for line in stored], bootstrap_samples=100)
    assert rescored["metrics"] == again["datasets"]["synthetic-arith"]["metrics"]


def test_damaged_metrics_file_is_moved_aside_and_rebuilt_from_the_stored_answers(workspace, caplog):
    """A metrics file that no longer parses used to fail the model's evaluation (and the sweep
    recorded the model as failed); its samples JSONL holds every answer, so it is kept aside and
    rebuilt without generating. A file of a newer ftlab is not damaged: it is refused, untouched."""
    cfg = cfg_of("eval.datasets=synthetic-arith", "eval.limit=6", "eval.batch_size=3")
    first = evaluate("scratch:tiny", cfg, workspace, generator=CannedGenerator(arithmetic_oracle))
    json_path, _ = metrics_paths(workspace, "scratch-tiny")
    json_path.write_text('{"schema_version": 2, "kind": "metr')  # cut short, as by a full disk

    class Untouchable(CannedGenerator):
        def generate(self, prompts, **kw):
            raise AssertionError("every answer is stored: nothing is generated")

    with caplog.at_level("WARNING", logger="ftlab"):
        rebuilt = evaluate("scratch:tiny", cfg, workspace, generator=Untouchable("x"))
    aside = [p for p in json_path.parent.iterdir() if p.name.startswith("scratch-tiny.json.damaged-")]
    assert len(aside) == 1 and aside[0].read_text() == '{"schema_version": 2, "kind": "metr'
    assert f"scratch-tiny.json could not be read; kept it as {aside[0].name} and rebuilding it" in caplog.text
    block, before = rebuilt["datasets"]["synthetic-arith"], first["datasets"]["synthetic-arith"]
    assert block["metrics"] == before["metrics"] and block["n"] == 6 and block["generated_this_run"] == 0
    assert load_metrics_document(json_path)["datasets"]["synthetic-arith"]["metrics"] == before["metrics"]

    atomic_write_json(json_path, {"schema_version": 99, "kind": "metrics"})
    with pytest.raises(FtlabError, match="newer than this ftlab"):
        evaluate("scratch:tiny", cfg, workspace, generator=Untouchable("x"))
    assert json.loads(json_path.read_text()) == {"schema_version": 99, "kind": "metrics"}


def test_changed_settings_replace_only_that_task_and_keep_its_old_samples(workspace):
    cfg = cfg_of("eval.datasets=synthetic-arith,boolq", "eval.limit=3")
    write_datasets(workspace)
    first = evaluate("scratch:tiny", cfg, workspace, generator=CannedGenerator(lambda p: "\\boxed{yes}" if "Passage" in p else "\\boxed{1}"))
    # Speed knobs are not settings: finished results stay current.
    assert expected_settings(cfg_of("eval.datasets=synthetic-arith,boolq", "eval.limit=3", "eval.batch_size=7"),
                             workspace) == expected_settings(cfg, workspace)
    changed = cfg_of("eval.datasets=synthetic-arith,boolq", "eval.limit=3", "eval.max_new_tokens=99")
    calls = []
    doc = evaluate("scratch:tiny", changed, workspace, generator=CannedGenerator(lambda p: calls.append(p) or "\\boxed{2}"))
    # max_new_tokens changes both tasks' answers: both regenerate, each replaced on its own.
    assert len(calls) == 6
    arith = doc["datasets"]["synthetic-arith"]
    assert arith["settings"]["generation"]["max_new_tokens"] == 99 and arith["generated_this_run"] == 3
    # The replaced results are kept under `superseded`, with what changed.
    old = {s["task"]: s for s in doc["superseded"]}
    assert old["synthetic-arith"]["block"]["settings_key"] == first["datasets"]["synthetic-arith"]["settings_key"]
    assert old["synthetic-arith"]["changes"] == ["generation.max_new_tokens 24 -> 99"]
    # The old lines stay in the same samples file, told apart by their settings key; nothing is moved aside.
    _, samples_path = metrics_paths(workspace, "scratch-tiny")
    keys = [line["settings_key"] for line in read_jsonl(samples_path) if line["dataset"] == "synthetic-arith"]
    assert keys == [first["datasets"]["synthetic-arith"]["settings_key"]] * 3 + [arith["settings_key"]] * 3
    assert not list(samples_path.parent.glob("*.stale-*"))
    # Going back to the first settings reuses those old lines: nothing is generated.
    back = evaluate("scratch:tiny", cfg, workspace, generator=CannedGenerator(lambda p: calls.append(p) or "\\boxed{9}"))
    assert len(calls) == 6 and back["datasets"]["synthetic-arith"]["metrics"] == first["datasets"]["synthetic-arith"]["metrics"]


def test_evaluating_another_task_keeps_the_first_tasks_results(workspace):
    write_datasets(workspace)
    first = evaluate("scratch:tiny", cfg_of("eval.datasets=synthetic-arith", "eval.limit=4"), workspace,
                     generator=CannedGenerator(arithmetic_oracle))
    doc = evaluate("scratch:tiny", cfg_of("eval.datasets=arc,boolq", "eval.limit=4"), workspace,
                   generator=CannedGenerator("\\boxed{A}"))
    assert sorted(doc["datasets"]) == ["arc", "boolq", "synthetic-arith"]
    assert doc["datasets"]["synthetic-arith"] == first["datasets"]["synthetic-arith"]
    assert doc["summary"]["total_samples"] == 4 + 4 + 3
    on_disk = load_metrics_document(metrics_paths(workspace, "scratch-tiny")[0])
    assert on_disk["datasets"]["synthetic-arith"]["metrics"]["accuracy"] == 1.0 and on_disk["status"] == "complete"


def test_raising_the_limit_reuses_finished_rows(workspace):
    calls = []
    respond = lambda p: calls.append(p) or arithmetic_oracle(p)  # noqa: E731
    evaluate("scratch:tiny", cfg_of("eval.datasets=synthetic-arith", "eval.limit=3"), workspace, generator=CannedGenerator(respond))
    doc = evaluate("scratch:tiny", cfg_of("eval.datasets=synthetic-arith", "eval.limit=5"), workspace, generator=CannedGenerator(respond))
    block = doc["datasets"]["synthetic-arith"]
    assert len(calls) == 5 and block["n"] == 5 and block["generated_this_run"] == 2
    assert doc["superseded"][-1]["changes"] == ["rows.limit 3 -> 5"]
    # Lowering it again needs no generation either: the first 3 rows are scored from the samples.
    doc = evaluate("scratch:tiny", cfg_of("eval.datasets=synthetic-arith", "eval.limit=3"), workspace, generator=CannedGenerator(respond))
    assert len(calls) == 5 and doc["datasets"]["synthetic-arith"]["n"] == 3


def test_cut_off_last_box_is_recorded_and_not_credited(workspace):
    doc = evaluate("scratch:tiny", cfg_of("eval.datasets=synthetic-arith", "eval.limit=2"), workspace,
                   generator=CannedGenerator(["I think \\boxed{7}. No wait: \\boxed{12", "\\boxed{3}"]))
    block = doc["datasets"]["synthetic-arith"]
    assert block["cut_off_rate"] == 0.5 and block["format_success_rate"] == 0.5
    lines = sorted(read_jsonl(metrics_paths(workspace, "scratch-tiny")[1]), key=lambda line: line["index"])
    assert [line["cut_off"] for line in lines] == [True, False] and lines[0]["extracted"] is None


def test_custom_choice_file_has_its_own_three_classes(workspace, tmp_path):
    from sklearn.metrics import f1_score

    data = tmp_path / "three.jsonl"
    rows = [("Pick the wet one. A. sand B. water C. paper", "B"), ("Pick the dry one. A. sand B. water C. rain", "A"),
            ("Which is hot? A. fire B. ice C. snow", "A"), ("Which is soft? A. rock B. wool C. iron", "B")]
    data.write_text("\n".join(json.dumps({"question": q, "answer": a}) for q, a in rows))
    # Row 3 names option D, which this file does not have: invalid, not a fourth class.
    doc = evaluate("scratch:tiny", cfg_of(f"eval.datasets={data}"), workspace,
                   generator=CannedGenerator(["\\boxed{B}", "\\boxed{C}", "\\boxed{D}", "\\boxed{B. wool}"]))
    m = doc["datasets"][str(data)]["metrics"]
    assert sorted(m["per_class"]) == ["A", "B", "C"] and m["confusion_matrix"]["labels"] == ["A", "B", "C", "invalid"]
    assert m["invalid_rate"] == 0.25 and m["accuracy"] == 0.5
    golds, preds = ["B", "A", "A", "B"], ["B", "C", "invalid", "B"]
    # C has no gold support: it does not enter macro-F1 (sklearn with the supported labels).
    assert m["macro_f1_classes"] == ["A", "B"]
    assert m["macro_f1"] == pytest.approx(f1_score(golds, preds, labels=["A", "B"], average="macro", zero_division=0))


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
    assert doc["schema_version"] == 2 and doc["model"]["name"] == "m"
    assert {k: doc["datasets"]["arc"][k] for k in ("n", "metrics", "intervals")} == {"n": 10, "metrics": {"accuracy": 0.5}, "intervals": {}}
    assert doc["datasets"]["arc"]["scoring_version"] == 1
    assert doc["summary"]["mean_accuracy"] == 0.5
    bad = tmp_path / "bad.json"
    atomic_write_json(bad, {"schema_version": 2, "kind": "metrics"})
    with pytest.raises(FtlabError, match="lacks model"):
        load_metrics_document(bad)
    newer = tmp_path / "newer.json"
    atomic_write_json(newer, {"schema_version": 9})
    with pytest.raises(FtlabError, match="newer"):
        load_metrics_document(newer)
    with pytest.raises(FtlabError, match="not found"):
        load_metrics_document(tmp_path / "missing.json")


def _v1_workspace(workspace, responses: list[str]) -> None:
    """A model evaluated by the schema-v1 evaluator on synthetic-arith (rows 0..n-1) and boolq:
    its document and its synthetic-arith sample lines, as that version wrote them (one config hash
    for everything)."""
    from ftlab.config import config_to_dict
    from ftlab.data.prompts import build_messages
    from ftlab.eval.runners import prompt_hash as _prompt_hash

    cfg = cfg_of("eval.datasets=synthetic-arith,boolq", f"eval.limit={len(responses)}")
    tree = config_to_dict(cfg)
    tree["eval"]["numeric_rel_tol"], tree["eval"]["numeric_abs_tol"] = 1e-4, 1e-6  # v1 defaults
    gen = CannedGenerator("x")
    json_path, samples_path = metrics_paths(workspace, "scratch-tiny")
    examples = load_examples("synthetic-arith", "test", limit=len(responses))
    for ex, response in zip(examples, responses):
        prompt = gen.render(build_messages("synthetic-arith", ex, None))
        append_jsonl(samples_path, {"dataset": "synthetic-arith", "index": ex.index, "prompt_hash": _prompt_hash(prompt),
                                    "response": response, "extracted": None, "flexible": None, "gold": ex.answer,
                                    "correct": True, "latency_s": 0.1, "new_tokens": 3, "gen_time_s": 0.1,
                                    "eval_config_hash": "v1hash"})
    block = {"n": len(responses), "metrics": {"accuracy": 1.0}, "intervals": {"accuracy": [1.0, 1.0]},
             "task": "synthetic-arith", "answer_kind": "numeric", "max_new_tokens": 24}
    atomic_write_json(json_path, {
        "schema_version": 1, "kind": "metrics", "status": "complete", "model": {"name": "scratch-tiny", "metadata": {}},
        "eval_config": tree, "eval_config_hash": "v1hash",
        "datasets": {"synthetic-arith": block, "boolq": {**block, "task": "boolq", "answer_kind": "boolean", "max_new_tokens": 32}},
        "summary": {"mean_accuracy": 1.0, "total_samples": 2 * len(responses)},
    })


def test_v1_document_is_upgraded_and_rescored_from_its_stored_responses(workspace):
    # v1 scored all three as correct: the first salvaged an earlier box from a cut-off answer, the
    # second took the leading number of `<answer> apples` style text with a second value.
    answers = [ex.answer for ex in load_examples("synthetic-arith", "test", limit=3)]
    responses = [f"\\boxed{{{answers[0]}}} hmm, \\boxed{{{answers[0]}1", f"\\boxed{{{answers[1]}, 4}}", f"\\boxed{{{answers[2]}}}"]
    _v1_workspace(workspace, responses)
    json_path, samples_path = metrics_paths(workspace, "scratch-tiny")
    upgraded = load_metrics_document(json_path)
    block = upgraded["datasets"]["synthetic-arith"]
    assert upgraded["schema_version"] == 2 and block["scoring_version"] == 1 and block["legacy_eval_config_hash"] == "v1hash"
    assert block["settings"]["generation"] == {"max_new_tokens": 24, "stop_at_box": True}

    # Only synthetic-arith is asked for: it is rescored from the v1 responses (nothing generated),
    # boolq (not asked for) stays as it was, and the file on disk becomes a v2 document.
    calls = []
    doc = evaluate("scratch:tiny", cfg_of("eval.datasets=synthetic-arith", "eval.limit=3"), workspace,
                   generator=CannedGenerator(lambda p: calls.append(p) or "\\boxed{0}"))
    arith = doc["datasets"]["synthetic-arith"]
    assert calls == [] and arith["generated_this_run"] == 0 and arith["rescored_this_run"] == 3
    assert arith["scoring_version"] == 2 and arith["metrics"]["accuracy"] == pytest.approx(1 / 3)
    assert arith["cut_off_rate"] == pytest.approx(1 / 3)
    assert doc["datasets"]["boolq"]["scoring_version"] == 1 and doc["superseded"][0]["changes"][0] == "scoring_version 1 -> 2"
    assert json.loads(json_path.read_text())["schema_version"] == 2
    # The rescored lines are appended (the v1 lines stay): the last line per row holds the new verdict.
    lines = read_jsonl(samples_path)
    assert len(lines) == 6 and [line["correct"] for line in lines[3:]] == [False, False, True]
    assert {line["settings_key"] for line in lines[3:]} == {arith["settings_key"]}


def test_enable_thinking_reaches_the_chat_template(workspace):
    seen = []

    class Recording(CannedGenerator):
        def render(self, messages, enable_thinking=False):
            seen.append(enable_thinking)
            return super().render(messages, enable_thinking)

    evaluate("scratch:tiny", cfg_of("eval.datasets=synthetic-arith", "eval.limit=2", "eval.enable_thinking=true"),
             workspace, generator=Recording("\\boxed{1}"))
    assert seen == [True, True]


def test_a_bad_gold_label_fails_before_the_model_is_used(workspace):
    workspace.datasets_dir.mkdir(parents=True, exist_ok=True)
    # A yes/no task whose second gold is neither (an empty gold is dropped at loading, issue 13).
    pd.DataFrame({"question": ["Is 2+2 four?", "Is 3+3 six?"], "answer": ["yes", "maybe"],
                  "context": ["Arithmetic.", "Arithmetic."]}).to_parquet(workspace.datasets_dir / "test-boolq.parquet")

    class Untouchable(CannedGenerator):
        def render(self, messages, enable_thinking=False):
            raise AssertionError("the model must not be used")

    with pytest.raises(FtlabError, match=r"dataset boolq \(.*test-boolq.parquet\) has answers outside the label set \['yes', 'no'\]: \['maybe'\]"):
        evaluate("scratch:tiny", cfg_of("eval.datasets=boolq"), workspace, generator=Untouchable("x"))
