"""One prompt builder for training and evaluation, so a model is tested on the prompts it learned."""

from __future__ import annotations

from ftlab.data.loading import Example
from ftlab.data.tasks import TASKS, Task


def _task(task: Task | str) -> Task:
    return task if isinstance(task, Task) else TASKS.get(task)


def user_content(task: Task | str, example: Example) -> str:
    return f"{example.question}\n\n{_task(task).instruction}"


def build_messages(task: Task | str, example: Example, system: str | None = None) -> list[dict]:
    """Chat messages up to (not including) the assistant's answer."""
    if example.meta.get("messages"):
        msgs = [dict(m) for m in example.meta["messages"]]
        if system and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": system})
        return msgs
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": user_content(task, example)})
    return msgs


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
    # No template (raw base models): a plain transcript the model can continue.
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"
