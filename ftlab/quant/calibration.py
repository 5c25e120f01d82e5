"""Calibration and held-out texts: task rows rendered exactly as training and evaluation see them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from ftlab.errors import FtlabError
from ftlab.paths import Workspace


@dataclass
class TextSet:
    name: str  # task name or custom file path
    split: str
    prompts: list[str]  # the generation prompt as evaluation renders it
    answers: list[str]  # what training teaches after the prompt (answer + end of turn)

    @property
    def texts(self) -> list[str]:
        return [p + a for p, a in zip(self.prompts, self.answers)]

    @property
    def hash(self) -> str:
        return texts_hash(self.texts)

    def describe(self) -> dict:
        return {"dataset": self.name, "split": self.split, "samples": len(self.prompts), "hash": self.hash}


def texts_hash(texts: list[str]) -> str:
    """Content hash of an ordered list of texts (same texts, same order -> same hash)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(json.dumps(t, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def render_answer(tokenizer, messages: list[dict], prompt: str, target: str) -> str:
    """The text after `prompt` in the full conversation, as TRL renders a prompt-completion row:
    the answer plus the template's end of turn (`<|im_end|>\\n`), so its tokens are scored too.
    Templates that rewrite earlier turns once an answer exists (the prompt is then not a prefix)
    fall back to the bare target."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": target}], tokenize=False)
        if full.startswith(prompt) and len(full) > len(prompt):
            return full[len(prompt):]
    return target


def task_texts(dataset: str, split: str, n: int, tokenizer, *, workspace: Workspace | None = None,
               source_dir: str | os.PathLike | None = None) -> TextSet:
    """The first `n` rows of a split as the chat-formatted prompt and its boxed answer."""
    from ftlab.data.loading import load_examples, resolve_task  # lazy: ftlab.data.loading imports numpy
    from ftlab.data.prompts import build_messages, build_target, render_prompt  # lazy: ftlab.data.prompts imports numpy

    if n is None or n <= 0:
        raise FtlabError(f"sample count for {dataset} must be positive, got {n}")
    task = resolve_task(dataset)
    examples = load_examples(dataset, split, workspace=workspace, limit=n, source_dir=source_dir)
    prompts, answers = [], []
    for ex in examples:
        messages = build_messages(task, ex)
        prompt = render_prompt(tokenizer, messages)
        prompts.append(prompt)
        answers.append(render_answer(tokenizer, messages, prompt, build_target(task, ex)))
    return TextSet(task.name if task.name else str(dataset), split, prompts, answers)
