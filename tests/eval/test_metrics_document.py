"""The metrics document: one builder, one check on every write and every read, and `ftlab compare`
refusing a file written by a newer ftlab."""

from __future__ import annotations

import json

import pytest

from ftlab.cli import main
from ftlab.config import EvalRunConfig, load_config
from ftlab.errors import FtlabError
from ftlab.eval.backends.canned import CannedGenerator
from ftlab.eval.records.documents import (
    load_metrics_document, metrics_document, metrics_document_problems, write_metrics_document,
)
from ftlab.eval.evaluator import evaluate, metrics_paths
from ftlab.io import atomic_write_json, read_json
from ftlab.schema import METRICS_SCHEMA_VERSION, NewerSchemaError


def _block(**changes) -> dict:
    block = {"n": 2, "metrics": {"accuracy": 0.5}, "intervals": {"accuracy": None}, "settings": {"task": "arc"},
             "settings_key": "abc", "scoring_version": 2, "task": "arc", "answer_kind": "choice"}
    return {**block, **changes}


def _document(**datasets) -> dict:
    doc = metrics_document(model={"name": "m", "ref": "m", "path": None, "source_kind": "hub", "metadata": {}},
                           eval_config={"eval": {}}, backend="canned", quantization=None, environment={},
                           started_at="t0", datasets=datasets or {"arc": _block()})
    doc["summary"] = {"mean_accuracy": 0.5, "total_samples": 2}
    return doc


def test_the_builder_makes_a_document_the_check_accepts():
    doc = _document()
    assert doc["schema_version"] == METRICS_SCHEMA_VERSION and doc["kind"] == "metrics" and doc["status"] == "running"
    assert metrics_document_problems(doc) == []


@pytest.mark.parametrize("change,problem", [
    (lambda d: d.pop("environment"), "lacks environment"),
    (lambda d: d.update(status="done"), "status is 'done', expected running or complete"),
    (lambda d: d.update(schema_version=1), "schema_version is 1, expected 2"),
    (lambda d: d.update(kind="model"), "kind is 'model', expected 'metrics'"),
    (lambda d: d["model"].pop("name"), "model.name is missing"),
    (lambda d: d.update(datasets=[]), "datasets is a list, expected dict"),
    (lambda d: d["datasets"].update(arc=3), "datasets.arc is a int, expected an object"),
    (lambda d: d["datasets"]["arc"].pop("settings_key"), "datasets.arc lacks settings_key"),
    (lambda d: d["datasets"]["arc"].update(metrics=[0.5]), "datasets.arc.metrics is a list, expected dict"),
    (lambda d: d["datasets"]["arc"].update(n=-1), "datasets.arc.n is -1"),
    (lambda d: d["datasets"]["arc"].update(scoring_version=True), "datasets.arc.scoring_version is a bool"),
    (lambda d: d["summary"].update(mean_accuracy="high"), "summary.mean_accuracy is a str"),
    (lambda d: d["superseded"].append({"task": "arc", "block": {"n": 1}}), "superseded[0].block lacks metrics"),
])
def test_the_check_names_the_field(change, problem):
    doc = _document()
    change(doc)
    assert any(p.startswith(problem) for p in metrics_document_problems(doc)), metrics_document_problems(doc)


def test_a_malformed_document_is_never_written(tmp_path):
    doc = _document()
    doc["datasets"]["arc"]["metrics"] = None
    with pytest.raises(FtlabError, match=r"an ftlab bug\): datasets.arc.metrics is a NoneType"):
        write_metrics_document(tmp_path / "m.json", doc)
    assert not (tmp_path / "m.json").exists()
    write_metrics_document(tmp_path / "m.json", _document())
    assert load_metrics_document(tmp_path / "m.json") == read_json(tmp_path / "m.json")


def test_a_malformed_file_is_refused_naming_the_file_and_the_field(tmp_path):
    doc = _document()
    doc["datasets"]["arc"]["metrics"] = [0.5]
    atomic_write_json(tmp_path / "m.json", doc)
    with pytest.raises(FtlabError, match=r"metrics file .*m\.json: datasets\.arc\.metrics is a list, expected dict"):
        load_metrics_document(tmp_path / "m.json")


def test_documents_of_older_versions_pass_the_check_once_upgraded(tmp_path):
    atomic_write_json(tmp_path / "v0.json", {"schema_version": 0, "model": "m", "results": {"arc": {"accuracy": 1.0, "n": 3}}})
    doc = load_metrics_document(tmp_path / "v0.json")
    assert metrics_document_problems(doc) == [] and doc["environment"] == {} and doc["backend"] is None


def test_every_document_a_real_evaluation_writes_passes_the_check(workspace):
    cfg = load_config(EvalRunConfig, overrides=["eval.bootstrap_samples=0", "eval.datasets=synthetic-arith",
                                                "eval.limit=3"])
    evaluate("scratch:tiny", cfg, workspace, generator=CannedGenerator("\\boxed{0}"))
    json_path, _ = metrics_paths(workspace, "scratch-tiny")
    assert metrics_document_problems(read_json(json_path)) == []
    # A second run with other settings supersedes the block: the superseded copy is checked too.
    cfg = load_config(EvalRunConfig, overrides=["eval.bootstrap_samples=0", "eval.datasets=synthetic-arith",
                                                "eval.limit=3", "eval.max_new_tokens=8"])
    doc = evaluate("scratch:tiny", cfg, workspace, generator=CannedGenerator("\\boxed{0}"))
    assert len(doc["superseded"]) == 1 and metrics_document_problems(read_json(json_path)) == []


def test_compare_refuses_a_metrics_file_from_a_newer_ftlab_in_one_line(workspace, capsys):
    write_metrics_document(workspace.metrics_dir / "a.json", {**_document(), "status": "complete"})
    future = {**_document(), "schema_version": 99}
    atomic_write_json(workspace.metrics_dir / "b.json", future)
    with pytest.raises(NewerSchemaError):
        load_metrics_document(workspace.metrics_dir / "b.json")
    assert main(["compare", "--workdir", str(workspace.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b.json was written by a newer ftlab" in err and "upgrade ftlab" in err
    assert json.loads((workspace.metrics_dir / "b.json").read_text()) == json.loads(json.dumps(future))  # untouched
