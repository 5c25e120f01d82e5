import json

import pandas as pd
import pytest

from ftlab.data.loading import load_examples
from ftlab.data.loading import dataset_fingerprint, resolve_task
from ftlab.data.prompts import build_messages, build_target, render_prompt
from ftlab.data.synthetic import generate
from ftlab.errors import FtlabError


@pytest.mark.parametrize("task,n", [("openmath", 200), ("arc", 200), ("boolq", 3270), ("squad_v2", 200)])
def test_shared_subsets_load(shared_datasets, task, n):
    ex = load_examples(task, "test", source_dir=shared_datasets)
    assert len(ex) == n
    assert all(e.question.strip() for e in ex)


def test_quirks(shared_datasets):
    arc = load_examples("arc", "train", source_dir=shared_datasets)
    assert {e.answer for e in arc} == {"A", "B", "C", "D"}  # digits 1-4 mapped
    math = load_examples("openmath", "test", source_dir=shared_datasets, limit=20)
    assert all(not e.answer.endswith(".0") for e in math)  # 667.0 -> 667
    squad = load_examples("squad_v2", "test", source_dir=shared_datasets)
    empty = [e for e in squad if e.answer == ""]
    assert 60 < len(empty) < 140  # about half unanswerable
    assert build_target("squad_v2", empty[0]) == "The answer is \\boxed{unanswerable}."
    boolq = load_examples("boolq", "test", source_dir=shared_datasets, limit=50)
    assert {e.answer for e in boolq} == {"yes", "no"}


def test_limit_is_deterministic(shared_datasets):
    a = load_examples("arc", "test", source_dir=shared_datasets, limit=7)
    b = load_examples("arc", "test", source_dir=shared_datasets, limit=7)
    assert [e.question for e in a] == [e.question for e in b] and [e.index for e in a] == list(range(7))
    assert dataset_fingerprint(a) == dataset_fingerprint(b) != dataset_fingerprint(a[:6])


def test_synthetic_is_seeded_and_disjoint():
    tr, te = generate("train"), generate("test")
    assert tr == generate("train") and len(tr) == 5000 and len(te) == 500
    assert not {r["question"] for r in tr} & {r["question"] for r in te}
    for r in te[:50]:
        q = r["question"]
        if q.startswith("What is"):
            assert eval(q[len("What is "):-1]) == int(r["answer"])  # noqa: S307 - our own generated text


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt,rows,question,answer", [
    ("alpaca", [{"instruction": "Add", "input": "2 and 3", "output": "5"}], "Add\n\n2 and 3", "5"),
    ("sharegpt", [{"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello"}]}], "Hi?", "Hello"),
    ("messages", [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}], "Q", "A"),
    ("qa", [{"question": "2+2?", "answer": 4}], "2+2?", "4"),
])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_custom_formats(tmp_path, fmt, rows, question, answer, suffix):
    if suffix == ".parquet" and fmt in ("sharegpt", "messages"):
        rows = rows  # nested lists round-trip through parquet too
    path = _write(tmp_path / f"d{suffix}", rows)
    ex = load_examples(str(path), "train")
    assert len(ex) == 1 and ex[0].question == question and str(ex[0].answer) == answer
    msgs = build_messages(resolve_task(str(path)), ex[0])
    assert msgs[-1]["role"] == "user"
    if fmt in ("sharegpt", "messages"):
        assert build_target(resolve_task(str(path)), ex[0]) == answer  # chat answers verbatim


def test_answer_kind_inference(tmp_path):
    p = _write(tmp_path / "n.jsonl", [{"question": "a", "answer": "1,000"}, {"question": "b", "answer": "2.5"}])
    assert resolve_task(str(p)).answer_kind == "numeric"
    p = _write(tmp_path / "c.jsonl", [{"question": "a", "answer": "B"}])
    assert resolve_task(str(p)).answer_kind == "choice"


@pytest.mark.parametrize("content,match", [
    ("", "empty"),
    ('{"question": "x"', "not valid JSON"),
    ('{"foo": 1}\n', "expected alpaca"),
    ('{"messages": [{"role": "user", "content": "q"}]}\n', "no usable rows.*final assistant turn"),
])
def test_bad_custom_files(tmp_path, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(FtlabError, match=match):
        load_examples(str(p), "train")


def test_missing_file_and_columns(tmp_path):
    with pytest.raises(FtlabError, match="not found"):
        load_examples(str(tmp_path / "missing.jsonl"), "train")
    pd.DataFrame({"question": ["q"], "wrong": ["a"]}).to_parquet(tmp_path / "test-ai2_arc.parquet")
    with pytest.raises(FtlabError, match=r"lacks column\(s\) \['answer'\]"):
        load_examples("arc", "test", source_dir=tmp_path)
    pd.DataFrame({"question": ["q"], "answer": ["Z"]}).to_parquet(tmp_path / "test-ai2_arc.parquet")
    with pytest.raises(FtlabError, match="outside the label set"):
        load_examples("arc", "test", source_dir=tmp_path)
    (tmp_path / "test-boolq.parquet").write_bytes(b"not parquet")
    with pytest.raises(FtlabError, match="cannot read"):
        load_examples("boolq", "test", source_dir=tmp_path)


def test_unknown_task_and_hub_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("FTLAB_DATASETS", raising=False)
    with pytest.raises(FtlabError, match="unknown task 'arcc'.*did you mean 'arc'"):
        load_examples("arcc", "test")
    from ftlab.paths import Workspace

    with pytest.raises(FtlabError, match="Datasets/"):
        load_examples("boolq", "test", workspace=Workspace(tmp_path))


def test_render_prompt_without_template():
    class NoTemplate:
        chat_template = None

    text = render_prompt(NoTemplate(), [{"role": "user", "content": "Q"}])
    assert text.endswith("Assistant:") and "User: Q" in text
