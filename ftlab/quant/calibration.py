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
    texts: list[str]

    @property
    def hash(self) -> str:
        return texts_hash(self.texts)

    def describe(self) -> dict:
        return {"dataset": self.name, "split": self.split, "samples": len(self.texts), "hash": self.hash}


def texts_hash(texts: list[str]) -> str:
    """Content hash of an ordered list of texts (same texts, same order -> same hash)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(json.dumps(t, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def task_texts(dataset: str, split: str, n: int, tokenizer, *, workspace: Workspace | None = None,
               source_dir: str | os.PathLike | None = None) -> TextSet:
    """The first `n` rows of a split as chat-formatted prompt + boxed answer."""
    from ftlab.data.loading import load_examples, resolve_task
    from ftlab.data.prompts import build_messages, build_target, render_prompt

    if n is None or n <= 0:
        raise FtlabError(f"sample count for {dataset} must be positive, got {n}")
    task = resolve_task(dataset)
    examples = load_examples(dataset, split, workspace=workspace, limit=n, source_dir=source_dir)
    texts = [render_prompt(tokenizer, build_messages(task, ex)) + build_target(task, ex) for ex in examples]
    return TextSet(task.name if task.name else str(dataset), split, texts)
