"""TEST DOUBLE: the `canned` generation backend returns fixed responses without a model, to test
scoring, resume and output writing quickly. Never use it to report results."""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

from ftlab.errors import FtlabError
from ftlab.eval.backends.api import Generation
from ftlab.io import read_jsonl


class CannedGenerator:
    """`responses` is a callable `prompt -> response`, a list consumed in order, or one string for
    every prompt."""

    name = "canned"
    model = None
    tokenizer = None

    def __init__(self, responses: Callable[[str], str] | Sequence[str] | str):
        self._responses = responses
        self._cursor = 0

    def render(self, messages: list[dict], enable_thinking: bool = False) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def _next(self, prompt: str) -> str:
        if callable(self._responses):
            return self._responses(prompt)
        if isinstance(self._responses, str):
            return self._responses
        if self._cursor >= len(self._responses):
            raise FtlabError(f"canned generator ran out of responses after {len(self._responses)}")
        self._cursor += 1
        return self._responses[self._cursor - 1]

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int | None,
                 stop_at_box: bool = True, stop: Sequence[str] = ()) -> Iterator[list[tuple[int, Generation]]]:
        batch_size = batch_size or max(1, len(prompts))
        for start in range(0, len(prompts), batch_size):
            batch = []
            for i in range(start, min(len(prompts), start + batch_size)):
                t0 = time.perf_counter()
                text = self._next(prompts[i])
                batch.append((i, Generation(text, len(text.split()), time.perf_counter() - t0, "canned")))
            yield batch


def from_options(options: dict) -> CannedGenerator:
    """`eval.backend_options={response: "..."}` or `{responses_file: lines.jsonl}` (lines with a
    "response" key, used in order)."""

    if "responses_file" in options:
        lines = read_jsonl(options["responses_file"])
        if not lines:
            raise FtlabError(f"eval.backend_options.responses_file {options['responses_file']} has no JSON lines")
        return CannedGenerator([str(line.get("response", "")) for line in lines])
    if "response" in options:
        return CannedGenerator(str(options["response"]))
    raise FtlabError("eval.backend=canned needs eval.backend_options with 'response' or 'responses_file'")
