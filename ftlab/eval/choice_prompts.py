"""What log-likelihood scoring asks a model: per question a context and one continuation per option.

One format per answer kind (registry `CHOICE_FORMATS`):
- choice (arc, custom files with options written `A. ... B. ...`): context `Question: <stem>\\nAnswer:`,
  options the option texts;
- boolean (boolq, custom yes/no files): context `<question>\\nAnswer:`, options `no` and `yes`.

Rendering follows lm-evaluation-harness, so its numbers can be checked against ours item by item:
as plain text the continuation is ` <option>` (a space, then the option) and few-shot examples
come first as `<context> <answer>\\n\\n`; through a chat template the context is the user turn,
the continuation is the option itself at the start of the assistant turn, and few-shot examples
are earlier user/assistant turns. Trailing whitespace of a context belongs to its continuation
(BPE tokenizers attach a space or newline to the word after it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ftlab.errors import FtlabError
from ftlab.registry import Registry


@dataclass
class ChoiceItem:
    query: str  # the question as a prompt, e.g. "Question: ...\nAnswer:"
    options: list[str]  # option texts, without any delimiter
    labels: list[str]  # option labels as the task's golds write them (A, B, ... / no, yes)
    gold: int  # index of the right option

    @property
    def answer(self) -> str:
        return self.options[self.gold]


CHOICE_FORMATS: Registry[Callable] = Registry("log-likelihood format")

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


@CHOICE_FORMATS.register("choice")
def choice_item(question: str, answer: str, where: str) -> ChoiceItem:
    parsed = split_options(question)
    if parsed is None:
        raise FtlabError(f"{where}: no options found in the question; log-likelihood scoring needs them written "
                         "as 'A. text B. text ...' (or score this task generatively)")
    stem, labels, options = parsed
    if answer not in labels:
        raise FtlabError(f"{where}: the answer {answer!r} is not one of its options {labels}; fix the row")
    return ChoiceItem(f"Question: {stem}\nAnswer:", options, labels, labels.index(answer))


@CHOICE_FORMATS.register("boolean")
def boolean_item(question: str, answer: str, where: str) -> ChoiceItem:
    from ftlab.eval.normalize import normalize_boolean

    gold = normalize_boolean(answer)
    if gold is None:
        raise FtlabError(f"{where}: the answer {answer!r} is not yes/no (or true/false); fix the row")
    return ChoiceItem(f"{question}\nAnswer:", ["no", "yes"], ["no", "yes"], ["no", "yes"].index(gold))


def build_item(task, example) -> ChoiceItem:
    """The choice item of one dataset row (the task's answer kind picks the format)."""
    where = f"{task.name} row {example.index}"
    return CHOICE_FORMATS.get(task.answer_kind)(example.question, str(example.answer), where)


def render(item: ChoiceItem, shots: Sequence[ChoiceItem], *, chat: bool, tokenizer=None, system: str | None = None,
           enable_thinking: bool = False) -> tuple[str, list[str]]:
    """(context, continuations) as the model sees them."""
    if chat:
        from ftlab.data.prompts import render_prompt

        msgs = [{"role": "system", "content": system}] if system else []
        for shot in shots:
            msgs += [{"role": "user", "content": shot.query}, {"role": "assistant", "content": shot.answer}]
        msgs.append({"role": "user", "content": item.query})
        return render_prompt(tokenizer, msgs, enable_thinking=enable_thinking), list(item.options)
    head = f"{system}\n\n" if system else ""
    context = head + "".join(f"{shot.query} {shot.answer}\n\n" for shot in shots) + item.query
    return context, [" " + option for option in item.options]


def encode(context: str, continuations: Sequence[str], encode_fn) -> tuple[list[int], list[list[int]]]:
    """Context tokens and each continuation's tokens, split as lm-evaluation-harness splits them:
    trailing whitespace of the context moves to the continuation, context + continuation is
    encoded whole, and the continuation is what follows the context's own tokens."""
    stripped = context.rstrip()
    moved = context[len(stripped):]
    ids = encode_fn([stripped] + [stripped + moved + c for c in continuations])
    ctx = ids[0]
    options = [whole[len(ctx):] for whole in ids[1:]]
    if not ctx or any(not o for o in options):
        raise FtlabError(f"an option of the prompt ending {stripped[-60:]!r} encodes to no tokens of its own; "
                         "every option needs text")
    return ctx, options
