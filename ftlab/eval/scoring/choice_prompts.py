"""What log-likelihood scoring asks a model: per question a context and one continuation per option.

The answer kind's definition names its format (`AnswerKind.choice_format`, ftlab.eval.scoring.answer_kinds;
the formats themselves are in ftlab.eval.scoring.choice_formats).

Rendering follows lm-evaluation-harness, so its numbers can be checked against ours item by item:
as plain text the continuation is ` <option>` (a space, then the option) and few-shot examples
come first as `<context> <answer>\\n\\n`; through a chat template the context is the user turn,
the continuation is the option itself at the start of the assistant turn, and few-shot examples
are earlier user/assistant turns. Trailing whitespace of a context belongs to its continuation
(BPE tokenizers attach a space or newline to the word after it).
"""

from __future__ import annotations

from typing import Sequence

from ftlab.errors import FtlabError
from ftlab.eval.scoring.answer_kinds import ANSWER_KINDS
from ftlab.eval.scoring.choice_formats import ChoiceItem


def build_item(task, example) -> ChoiceItem:
    """The choice item of one dataset row (the task's answer kind picks the format)."""
    where = f"{task.name} row {example.index}"
    choice_format = ANSWER_KINDS.get(task.answer_kind).choice_format
    if choice_format is None:
        raise FtlabError(f"{where}: {task.answer_kind} answers have no options to score by log-likelihood; "
                         "score this task generatively")
    return choice_format(example.question, str(example.answer), where)


def render(item: ChoiceItem, shots: Sequence[ChoiceItem], *, chat: bool, tokenizer=None, system: str | None = None,
           enable_thinking: bool = False) -> tuple[str, list[str]]:
    """(context, continuations) as the model sees them."""
    if chat:
        from ftlab.data.prompts import render_prompt  # lazy: ftlab.data.prompts imports numpy

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
