"""Generation backends, keyed by name: `hf` (continuous batching, the default), `hf-generate`
(fixed batches through `model.generate`) and `canned` (fixed responses; tests only).

What a backend is (this module) is kept apart from how each one works: ftlab.eval.hf_generator
(rendering, encoding, fixed batches), ftlab.eval.continuous (the rolling batch),
ftlab.eval.kv_cache (shared prefix and row editing), ftlab.eval.stopping (when a row is done),
ftlab.eval.sizing (auto batch size, out-of-memory) and ftlab.eval.canned (the test double).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from ftlab.registry import Registry


@dataclass
class Generation:
    text: str
    new_tokens: int
    latency_s: float  # from the row's admission (its prefill) until it finished
    stop_reason: str  # box | eos | length | canned


class Generator(Protocol):
    name: str
    model: Any  # None for backends without a model (canned)
    tokenizer: Any

    def render(self, messages: list[dict], enable_thinking: bool = False) -> str: ...

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int | None,
                 stop_at_box: bool = True) -> Iterator[list[tuple[int, Generation]]]:
        """Yields finished (prompt position, generation) pairs as they finish, in groups;
        batch_size None = auto."""
        ...


GENERATORS: Registry[Callable[..., Generator]] = Registry("generation backend")


@GENERATORS.register("hf")
def _hf_backend(model_ref: str, cfg, workspace, options: Mapping[str, Any] | None = None) -> Generator:
    """Continuous batching: finished rows leave the batch at once and waiting prompts take their place."""
    from ftlab.eval.hf_generator import load_hf_generator

    return load_hf_generator(model_ref, cfg, workspace, continuous=True)


@GENERATORS.register("hf-generate")
def _hf_generate_backend(model_ref: str, cfg, workspace, options: Mapping[str, Any] | None = None) -> Generator:
    """Fixed length-sorted batches through model.generate (reference path; slower when answer lengths vary)."""
    from ftlab.eval.hf_generator import load_hf_generator

    return load_hf_generator(model_ref, cfg, workspace, continuous=False)


@GENERATORS.register("canned")
def _canned_backend(model_ref: str, cfg, workspace, options: Mapping[str, Any] | None = None) -> Generator:
    """Test double: `eval.backend_options={response: "..."}` or `{responses_file: lines.jsonl}`."""
    from ftlab.eval.canned import from_options

    return from_options(dict(options or {}))


def build_generator(model_ref: str, cfg, workspace) -> Generator:
    factory = GENERATORS.get(cfg.eval.backend)
    return factory(model_ref, cfg, workspace, getattr(cfg.eval, "backend_options", None))
