"""Answers to lm-eval requests, kept as they are computed: `Testing/metrics/<model>.requests.jsonl`.

lm-eval runs every request of a task before it scores any document, so a kill in the middle of a
long task would otherwise lose all of it. Each answer is appended under its request's hash (the
request type and its arguments: context, continuation or generation settings) and the task's
`settings_key` (model, backend, dtype); a rerun under the same settings reads them back instead of
asking the model, and a raised `eval.limit` asks only for the new documents' requests.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from ftlab.io import append_jsonl_lines, read_jsonl


def request_hash(kind: str, args: Any) -> str:
    return hashlib.sha256(json.dumps([kind, args], sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]


class RequestCache:
    def __init__(self, path: Path, settings_key: str):
        self.path = Path(path)
        self.settings_key = settings_key
        self.answers: dict[str, Any] = {}
        self.reused = 0
        if self.path.exists():
            for line in read_jsonl(self.path):
                if line.get("settings_key") == settings_key and "hash" in line:
                    self.answers[line["hash"]] = line.get("answer")

    def lookup(self, kind: str, args: Sequence[Any]) -> list[Any]:
        """The stored answer of each request, None where there is none."""
        out = []
        for a in args:
            answer = self.answers.get(request_hash(kind, a))
            if answer is not None and kind == "loglikelihood":
                answer = (float(answer[0]), bool(answer[1]))
            out.append(answer)
        self.reused += sum(a is not None for a in out)
        return out

    def store(self, kind: str, args: Sequence[Any], answers: Sequence[Any]) -> None:
        lines = []
        for a, answer in zip(args, answers):
            h = request_hash(kind, a)
            value = list(answer) if isinstance(answer, tuple) else answer
            self.answers[h] = value
            lines.append({"kind": kind, "hash": h, "answer": value, "settings_key": self.settings_key})
        append_jsonl_lines(self.path, lines)
