"""Generation backends, keyed by name: `hf` (continuous batching, the default), `hf-generate`
(fixed batches through `model.generate`), `llama.cpp` (a GGUF answered by llama.cpp's own server)
and `canned` (fixed responses; tests only).

What a backend is (ftlab.eval.backends.api) is kept apart from how each one works: ftlab.eval.backends.hf
(rendering, encoding, fixed batches), ftlab.eval.backends.continuous (the rolling batch),
ftlab.eval.backends.kv_cache (shared prefix and row editing), ftlab.eval.backends.stopping (when a row is done),
ftlab.eval.backends.sizing (auto batch size, out-of-memory), ftlab.eval.backends.llama_cpp (llama-server)
and ftlab.eval.backends.canned (the test double).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ftlab.eval.backends.api import Generation, Generator  # noqa: F401  (the backend interface, re-exported)
from ftlab.eval.backends.canned import from_options
from ftlab.eval.backends.llama_cpp import load_llama_cpp_generator
from ftlab.registry import Registry

GENERATORS: Registry[Callable[..., Generator]] = Registry("generation backend")


@GENERATORS.register("hf")
def _hf_backend(model_ref: str, cfg, workspace, options: Mapping[str, Any] | None = None) -> Generator:
    """Continuous batching: finished rows leave the batch at once and waiting prompts take their place."""
    from ftlab.eval.backends.hf import load_hf_generator  # lazy: ftlab.eval.backends.hf imports transformers

    return load_hf_generator(model_ref, cfg, workspace, continuous=True)


@GENERATORS.register("hf-generate")
def _hf_generate_backend(model_ref: str, cfg, workspace, options: Mapping[str, Any] | None = None) -> Generator:
    """Fixed length-sorted batches through model.generate (reference path; slower when answer lengths vary)."""
    from ftlab.eval.backends.hf import load_hf_generator  # lazy: ftlab.eval.backends.hf imports transformers

    return load_hf_generator(model_ref, cfg, workspace, continuous=False)


@GENERATORS.register("llama.cpp")
def _llama_cpp_backend(model_ref: str, cfg, workspace, options: Mapping[str, Any] | None = None) -> Generator:
    """A GGUF answered by llama.cpp (llama-server, one slot, greedy): what the GGUF scores as deployed."""
    return load_llama_cpp_generator(model_ref, cfg, workspace, options)


@GENERATORS.register("canned")
def _canned_backend(model_ref: str, cfg, workspace, options: Mapping[str, Any] | None = None) -> Generator:
    """Test double: `eval.backend_options={response: "..."}` or `{responses_file: lines.jsonl}`."""

    return from_options(dict(options or {}))


def build_generator(model_ref: str, cfg, workspace) -> Generator:
    factory = GENERATORS.get(cfg.eval.backend)
    return factory(model_ref, cfg, workspace, getattr(cfg.eval, "backend_options", None))
