"""The task registry: where each dataset comes from, how a row becomes a question and a gold answer.

Every task uses the same columns after normalisation (`question`, `answer`, plus `context` for
reading tasks), whether it was read from `Datasets/*.parquet`, `../shared/datasets` or the hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ftlab.data.synthetic import generate
from ftlab.errors import FtlabError
from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS

# The numeric rules live with the scorer that applies them; imported here for the task table.
from ftlab.eval.scoring.normalize import DEFAULT_TOLERANCE, NumericTolerance, format_number  # noqa: F401
from ftlab.registry import Registry


@dataclass(frozen=True)
class Task:
    name: str
    answer_kind: str  # how answers are matched: a name in ftlab.eval.scoring.answer_kinds.ANSWER_KINDS
    instruction: str  # appended to every question; asks for the answer in \boxed{}
    file_stem: str | None  # Datasets/<split>-<file_stem>.parquet
    columns: tuple[str, ...]  # required columns after normalisation
    render: Callable[[dict], str]  # row -> question text shown to the model
    gold: Callable[[dict], str]  # row -> canonical gold answer string
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=dict)
    from_hub: Callable[[dict], dict] | None = None  # hub row -> normalised row
    labels: tuple[str, ...] = ()  # allowed gold labels for choice/boolean tasks
    max_new_tokens: int = 64
    generated: Callable[[str, int | None], list[dict]] | None = None  # synthetic tasks
    doc: str = ""
    tolerance: NumericTolerance = DEFAULT_TOLERANCE  # numeric tasks: documented per task


TASKS: Registry[Task] = Registry("task")
# Suffixes of a user's data file (a custom task) where a task name is expected.
CUSTOM_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


def get_task(name: str) -> Task:
    return TASKS.get(name)


def trained_task(metadata: dict | None) -> str | None:
    """The task a model was fine-tuned on, as its `training_metadata.json` names it (`dataset.name`);
    None for a base model (no dataset) or one trained on a user's data file, whose path may not
    exist where the model is used. The one reading of "the model's own training task": evaluation's
    `perplexity` entry and the quantize stage's default calibration and fidelity task use it."""
    trained = ((metadata or {}).get("dataset") or {}).get("name")
    if not trained or str(trained).lower().endswith(CUSTOM_SUFFIXES):
        return None
    return str(trained)


# --- openmath ---------------------------------------------------------------------------------


def _openmath_from_hub(row: dict) -> dict:
    return {"question": row["problem"], "answer": row["expected_answer"]}


TASKS.add("openmath", Task(
    name="openmath", answer_kind="numeric",
    instruction="Solve the problem. Put only the final numeric answer inside \\boxed{}.",
    file_stem="OpenMathInstruct-2", columns=("question", "answer"),
    render=lambda r: str(r["question"]).strip(), gold=lambda r: format_number(r["answer"]),
    hub_id="nvidia/OpenMathInstruct-2", hub_splits={"train": "train_1M", "test": "train_1M"},
    from_hub=_openmath_from_hub, max_new_tokens=384,
    doc="competition-style math word problems with numeric answers",
    tolerance=NumericTolerance(
        rel=1e-4, rounded_golds=True,
        why="golds are floats the dataset rounded to 2-3 decimals (16.67 for 50/3, 0.857 for 6/7): such a gold "
            "also matches a prediction that rounds to it; otherwise 1e-4 relative")))


# --- arc --------------------------------------------------------------------------------------

_ARC_DIGITS = {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}


def arc_label(value: Any) -> str:
    """Gold labels: a few ARC rows use digits 1-4 instead of letters A-D."""
    s = str(value).strip().upper()
    return _ARC_DIGITS.get(s, s)


def _arc_from_hub(row: dict) -> dict:
    labels = [arc_label(label) for label in row["choices"]["label"]]
    opts = " ".join(f"{lab}. {txt}" for lab, txt in zip(labels, row["choices"]["text"]))
    return {"title": row.get("id", ""), "question": f"{row['question']} {opts}", "answer": row["answerKey"]}


def _arc_render(row: dict) -> str:
    q = str(row["question"]).strip()
    # Put each inline option "A. ..." on its own line; models read lists better than run-on text.
    return re.sub(r"\s+(?=[A-E]\.\s)", "\n", q)


TASKS.add("arc", Task(
    name="arc", answer_kind="choice",
    instruction="Answer with the letter of the correct option inside \\boxed{}, e.g. \\boxed{B}.",
    file_stem="ai2_arc", columns=("question", "answer"),
    render=_arc_render, gold=lambda r: arc_label(r["answer"]),
    hub_id="allenai/ai2_arc", hub_config="ARC-Challenge", hub_splits={"train": "train", "test": "test"},
    from_hub=_arc_from_hub, labels=("A", "B", "C", "D", "E"), max_new_tokens=32,
    doc="ARC-Challenge grade-school science, 4-way multiple choice"))


# --- boolq ------------------------------------------------------------------------------------


def bool_label(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    s = str(value).strip().lower()
    if s in ("true", "yes", "1"):
        return "yes"
    if s in ("false", "no", "0"):
        return "no"
    return s


TASKS.add("boolq", Task(
    name="boolq", answer_kind="boolean",
    instruction="Answer yes or no inside \\boxed{}, e.g. \\boxed{yes}.",
    file_stem="boolq", columns=("question", "answer", "context"),
    render=lambda r: f"Passage: {str(r['context']).strip()}\n\nQuestion: {str(r['question']).strip()}?",
    gold=lambda r: bool_label(r["answer"]),
    hub_id="google/boolq", hub_splits={"train": "train", "test": "validation"},
    from_hub=lambda r: {"question": r["question"], "answer": r["answer"], "context": r["passage"]},
    labels=("yes", "no"), max_new_tokens=32,
    doc="yes/no questions about a Wikipedia passage"))


# --- squad_v2 ---------------------------------------------------------------------------------

UNANSWERABLE = "unanswerable"


def _squad_from_hub(row: dict) -> dict:
    texts = list(row["answers"]["text"])
    return {"title": row["title"], "context": row["context"], "question": row["question"],
            "answer": texts[0] if texts else "", "answers": texts}


TASKS.add("squad_v2", Task(
    name="squad_v2", answer_kind="span",
    instruction=("Answer with a short span copied from the context inside \\boxed{}. "
                 "If the context does not contain the answer, write \\boxed{unanswerable}."),
    file_stem="squad_v2", columns=("question", "answer", "context"),
    render=lambda r: f"Context: {str(r['context']).strip()}\n\nQuestion: {str(r['question']).strip()}",
    gold=lambda r: "" if r["answer"] is None else str(r["answer"]).strip(),
    hub_id="rajpurkar/squad_v2", hub_splits={"train": "train", "test": "validation"},
    from_hub=_squad_from_hub, max_new_tokens=48,
    doc="reading comprehension; empty gold = unanswerable"))


# --- synthetic-arith --------------------------------------------------------------------------


def _synthetic(split: str, n: int | None) -> list[dict]:
    return generate(split, n)


TASKS.add("synthetic-arith", Task(
    name="synthetic-arith", answer_kind="numeric",
    instruction="Put only the final answer inside \\boxed{}.",
    file_stem=None, columns=("question", "answer"),
    render=lambda r: str(r["question"]), gold=lambda r: str(r["answer"]),
    generated=_synthetic, max_new_tokens=24,
    doc="seeded 3-digit arithmetic and comparisons, generated offline (5000 train / 500 test)",
    tolerance=NumericTolerance(rel=0.0, why="every answer is an integer: exact")))


def custom_task(name: str, answer_kind: str) -> Task:
    """A task for a user's file: its questions are used as written, answers matched by `answer_kind`."""
    if answer_kind not in ANSWER_KINDS.names():
        raise FtlabError(f"answer kind {answer_kind!r} is unknown; valid: {', '.join(ANSWER_KINDS.names())}")
    return Task(
        name=name, answer_kind=answer_kind,
        instruction="Put the final answer inside \\boxed{}.",
        file_stem=None, columns=("question", "answer"),
        render=lambda r: str(r["question"]).strip(), gold=lambda r: str(r["answer"]).strip(),
        max_new_tokens=256, doc="custom file")
