"""Answer kinds: each is one complete definition, and a new one is picked up everywhere without edits."""

from __future__ import annotations

import json
import logging

import pytest

from ftlab.cli import main
from ftlab.data.loading import load_examples, resolve_task
from ftlab.data.tasks import TASKS, custom_task
from ftlab.errors import FtlabError
from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS, AnswerKind, extract, get_scorer, scoring_version, task_options
from ftlab.eval.scoring.choice_prompts import build_item
from ftlab.eval.scoring.metrics import Scorer, score_responses
from ftlab.eval.scoring.modes import SCORING_MODES

# A small sample per kind on which its scorer reports every metric it declares.
SAMPLES = {
    "numeric": (["\\boxed{4}", "\\boxed{5}", "no box 7"], ["4", "6", "7"]),
    "choice": (["\\boxed{A}", "\\boxed{C}", "none"], ["A", "B", "B"]),
    "boolean": (["\\boxed{yes}", "\\boxed{no}", "maybe"], ["yes", "yes", "no"]),
    "span": (["\\boxed{Paris}", "\\boxed{unanswerable}"], [["Paris"], [""]]),
    "exact": (["\\boxed{Rome}", "Rome"], ["Rome", "Rome"]),
}


def test_every_answer_kind_has_every_part():
    assert ANSWER_KINDS.names() == list(SAMPLES)  # a new kind adds its sample here
    for name, kind in ANSWER_KINDS.items():
        assert isinstance(kind, AnswerKind) and kind.name == name
        assert issubclass(kind.scorer, Scorer) and callable(kind.flexible)
        assert kind.version >= 1 and kind.doc
        assert kind.modes and set(kind.modes) <= set(SCORING_MODES.names()), name
        # Log-likelihood scoring compares options: exactly the kinds with a choice format support it.
        assert ("loglikelihood" in kind.modes) == (kind.choice_format is not None), name
        assert kind.recognises is None or callable(kind.recognises)
        responses, golds = SAMPLES[name]
        _, block = score_responses(get_scorer(name), responses, golds, bootstrap_samples=0)
        assert tuple(block["metrics"]) == kind.metrics, name
        assert scoring_version(name) == kind.version == get_scorer(name).version


def test_unknown_answer_kind_lists_the_valid_ones():
    with pytest.raises(FtlabError, match="valid: numeric, choice, boolean, span, exact"):
        get_scorer("colour")
    with pytest.raises(FtlabError, match="valid: numeric, choice, boolean, span, exact"):
        custom_task("file", "colour")


# ---------------------------------------------------------------------------------------------
# A throwaway kind: one definition, registered for one test, reaches every path


class ParityScorer(Scorer):
    def norm_gold(self, gold):
        text = str(gold).strip().lower()
        return text if text in ("even", "odd") else None

    def norm_pred(self, text):
        return None if text is None else self.norm_gold(text)


def _last_parity_word(text: str) -> str | None:
    words = [w for w in text.lower().replace(".", " ").split() if w in ("even", "odd")]
    return words[-1] if words else None


PARITY = AnswerKind(
    name="parity", scorer=ParityScorer, flexible=_last_parity_word, metrics=("accuracy",), version=3,
    modes=("generate",), doc="even or odd",
    gold_warning=lambda golds: f"{sum(str(g).isupper() for g in golds)} upper-case gold(s)"
    if any(str(g).isupper() for g in golds) else None,
    recognises=lambda answers: bool(answers) and all(a.lower() in ("even", "odd") for a in answers), infer_rank=5)


@pytest.fixture
def parity(monkeypatch):
    # Registered for this test only: monkeypatch removes it again afterwards.
    monkeypatch.setitem(ANSWER_KINDS._items, "parity", ("parity", PARITY))
    yield PARITY


def test_a_new_answer_kind_is_scored_extracted_and_loaded_without_other_edits(parity, tmp_path, caplog, capsys):
    # Scoring and extraction.
    assert extract("\\boxed{odd}", "parity") == ("odd", "odd")
    assert extract("I think it is even.", "parity") == (None, "even")
    score = get_scorer("parity").score("so, odd. Wait: \\boxed{Even}", "even")
    assert score.correct and score.extracted == "Even"
    assert get_scorer("parity").sample_line("\\boxed{odd}", "even")["scoring_version"] == 3
    with pytest.raises(FtlabError, match="not a valid parity answer"):
        get_scorer("parity").score("\\boxed{odd}", "seven")

    # Data: a custom file whose golds the kind recognises is inferred as this kind, its gold
    # warning is reported, and its rows load.
    path = tmp_path / "parity.jsonl"
    path.write_text("".join(json.dumps({"question": f"Is {n} even or odd?", "answer": a}) + "\n"
                            for n, a in ((2, "even"), (3, "ODD"), (5, "odd"))))
    task = resolve_task(str(path))
    assert task.answer_kind == "parity"
    with caplog.at_level(logging.WARNING):
        examples = load_examples(str(path))
    assert [e.answer for e in examples] == ["even", "ODD", "odd"]
    assert "1 upper-case gold(s)" in caplog.text
    assert task_options(task, [e.question for e in examples], [e.answer for e in examples]) is None

    # Scoring modes: only the ones the definition lists.
    SCORING_MODES.get("generate").check("parity.jsonl", "parity")
    with pytest.raises(FtlabError, match="needs choice or boolean answers"):
        SCORING_MODES.get("loglikelihood").check("parity.jsonl:ll", "parity")
    with pytest.raises(FtlabError, match="no options to score by log-likelihood"):
        build_item(task, examples[0])

    # `ftlab score --task parity`: the bare kind works as a task.
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"response": "\\boxed{even}", "answer": "even"}) + "\n"
                     + json.dumps({"response": "odd, I guess", "answer": "even"}) + "\n")
    assert main(["score", "--task", "parity", "--predictions", str(preds), "--bootstrap-samples", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answer_kind"] == "parity" and out["scoring_version"] == 3
    assert out["metrics"] == {"accuracy": 0.5} and out["flexible_accuracy"] == 0.5


def test_the_throwaway_kind_is_gone_after_its_test():
    assert "parity" not in ANSWER_KINDS
    assert all(t.answer_kind in ANSWER_KINDS for _, t in TASKS.items())
