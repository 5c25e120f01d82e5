"""The log-likelihood formats of the answer kinds that have options: per question a context and one
continuation per option. Each answer kind's definition (ftlab.eval.scoring.answer_kinds) names its format:

- choice (arc, custom files with options written `A. ... B. ...`): context `Question: <stem>\\nAnswer:`,
  options the option texts;
- boolean (boolq, custom yes/no files): context `<question>\\nAnswer:`, options `no` and `yes`.

How an item is rendered and tokenized is ftlab.eval.scoring.choice_prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftlab.errors import FtlabError
from ftlab.eval.scoring.normalize import normalize_boolean


@dataclass
class ChoiceItem:
    query: str  # the question as a prompt, e.g. "Question: ...\nAnswer:"
    options: list[str]  # option texts, without any delimiter
    labels: list[str]  # option labels as the task's golds write them (A, B, ... / no, yes)
    gold: int  # index of the right option

    @property
    def answer(self) -> str:
        return self.options[self.gold]


_LETTERS = "ABCDE"
_DIGITS = "12345"


def split_options(text: str) -> tuple[str, list[str], list[str]] | None:
    """`Which is a gas? A. ice B. steam C. water` -> ("Which is a gas?", ["A", "B", "C"],
    ["ice", "steam", "water"]); options may be inline or one per line and labelled A-E or 1-5
    (a few ARC rows). None when the text does not list at least two options in label order."""
    for labels in (_LETTERS, _DIGITS):
        # Greedy stem: the last "A. " that starts a complete A, B, ... run is where options begin.
        for count in range(len(labels), 1, -1):
            pattern = r"^(?P<stem>.*\S)" + "".join(
                rf"\s+{labels[k]}\.\s+(?P<o{k}>.*?)" for k in range(count)) + r"\s*$"
            m = re.match(pattern, text, flags=re.S)
            if m and all(m[f"o{k}"].strip() for k in range(count)):
                return m["stem"].strip(), [_LETTERS[k] for k in range(count)], [m[f"o{k}"].strip() for k in range(count)]
    return None


def choice_item(question: str, answer: str, where: str) -> ChoiceItem:
    parsed = split_options(question)
    if parsed is None:
        raise FtlabError(f"{where}: no options found in the question; log-likelihood scoring needs them written "
                         "as 'A. text B. text ...' (or score this task generatively)")
    stem, labels, options = parsed
    if answer not in labels:
        raise FtlabError(f"{where}: the answer {answer!r} is not one of its options {labels}; fix the row")
    return ChoiceItem(f"Question: {stem}\nAnswer:", options, labels, labels.index(answer))


def boolean_item(question: str, answer: str, where: str) -> ChoiceItem:
    gold = normalize_boolean(answer)
    if gold is None:
        raise FtlabError(f"{where}: the answer {answer!r} is not yes/no (or true/false); fix the row")
    return ChoiceItem(f"{question}\nAnswer:", ["no", "yes"], ["no", "yes"], ["no", "yes"].index(gold))
