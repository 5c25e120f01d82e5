"""One prompt builder for training and evaluation, so a model is tested on the prompts it learned."""

from __future__ import annotations

from typing import Sequence

from ftlab.data.loading import Example
from ftlab.data.tasks import TASKS, Task


def _task(task: Task | str) -> Task:
    return task if isinstance(task, Task) else TASKS.get(task)


def user_content(task: Task | str, example: Example) -> str:
    return f"{example.question}\n\n{_task(task).instruction}"


def build_messages(task: Task | str, example: Example, system: str | None = None,
                   shots: Sequence[Example] = ()) -> list[dict]:
    """Chat messages up to (not including) the assistant's answer; each few-shot example in
    `shots` comes first as a solved user/assistant exchange."""
    msgs = [{"role": "system", "content": system}] if system else []
    for shot in shots:
        msgs += [m for m in _turns(task, shot) if m["role"] != "system"]
        msgs.append({"role": "assistant", "content": build_target(task, shot)})
    turns = _turns(task, example)
    if turns[0]["role"] == "system":  # chat data brings its own system message
        msgs = [turns.pop(0)] + [m for m in msgs if m["role"] != "system"]
    return msgs + turns


def _turns(task: Task | str, example: Example) -> list[dict]:
    if example.meta.get("messages"):
        return [dict(m) for m in example.meta["messages"]]
    return [{"role": "user", "content": user_content(task, example)}]


def build_target(task: Task | str, example: Example) -> str:
    """The assistant's answer used as the SFT target: chat data verbatim, otherwise a boxed answer."""
    if example.meta.get("messages"):
        return str(example.answer)
    answer = example.answer if example.answer != "" else "unanswerable"
    return f"The answer is \\boxed{{{answer}}}."


def render_prompt(tokenizer, messages: list[dict], enable_thinking: bool = False) -> str:
    """The generation prompt as text. `enable_thinking` is passed to templates that read it (Qwen3)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
        )
    return render_plain(messages)


def render_plain(messages: list[dict]) -> str:
    """The prompt for a model without a (learned) chat template: a plain transcript it can continue."""
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"
