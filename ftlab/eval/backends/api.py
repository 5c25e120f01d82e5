"""What a generation backend is: the `Generator` protocol every backend implements and the
`Generation` it yields. The backends (ftlab.eval.backends.hf, ftlab.eval.backends.canned) and the batcher
(ftlab.eval.backends.continuous) import this module; the registry that picks one by name
(ftlab.eval.backends.registry) imports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence


@dataclass
class Generation:
    text: str
    new_tokens: int
    latency_s: float  # from the row's admission (its prefill) until it finished
    stop_reason: str  # box | eos | stop | length | canned


class Generator(Protocol):
    name: str
    model: Any  # None for backends without a model (canned)
    tokenizer: Any

    def render(self, messages: list[dict], enable_thinking: bool = False) -> str: ...

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int | None,
                 stop_at_box: bool = True, stop: Sequence[str] = ()) -> Iterator[list[tuple[int, Generation]]]:
        """Yields finished (prompt position, generation) pairs as they finish, in groups;
        batch_size None = auto. A row also ends once its text holds a string of `stop` (the text
        is returned whole: the caller cuts it)."""
        ...
