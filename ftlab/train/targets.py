"""Target-module resolution: presets and names -> the explicit module suffixes a PEFT kind adapts.

Target modules are resolved to explicit suffixes (`q_proj`, ...) before training so the metadata
records exactly what was adapted and bad names fail before any weights load twice.
"""

from __future__ import annotations

from typing import Any, Callable

from ftlab.errors import FtlabError
from ftlab.registry import Registry



def linear_types() -> tuple[type, ...]:
    import torch.nn as nn  # lazy: torch takes 3.3 s to import
    from transformers.pytorch_utils import Conv1D  # lazy: transformers takes 1.3 s (and torch)

    types: list[type] = [nn.Linear, Conv1D]
    try:  # bitsandbytes layers subclass nn.Linear today; listed explicitly in case that changes
        import bitsandbytes as bnb  # lazy: bitsandbytes takes 10 s

        types += [bnb.nn.Linear4bit, bnb.nn.Linear8bitLt]
    except Exception:  # noqa: BLE001 - bitsandbytes missing or without a usable backend
        pass
    return tuple(types)


def module_suffixes(model) -> dict[str, list[Any]]:
    """Last name component -> modules with that name (e.g. `q_proj` -> every layer's q_proj)."""
    out: dict[str, list[Any]] = {}
    for name, module in model.named_modules():
        if name:
            out.setdefault(name.rsplit(".", 1)[-1], []).append(module)
    return out


def _output_head_suffix(model) -> str | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head:
            return name.rsplit(".", 1)[-1]
    return None


def linear_suffixes(model) -> list[str]:
    """Suffixes of the linear layers inside the transformer blocks (never the output head)."""
    linear = linear_types()
    head = _output_head_suffix(model)
    names = [s for s, mods in module_suffixes(model).items() if s != head and all(isinstance(m, linear) for m in mods)]
    return sorted(names)


TARGET_PRESETS: Registry[Callable[[Any], list[str]]] = Registry("target-module preset")
TARGET_PRESETS.add("all-linear", linear_suffixes)
TARGET_PRESETS.add("qkvo", lambda model: ["q_proj", "k_proj", "v_proj", "o_proj"])
TARGET_PRESETS.add("qv", lambda model: ["q_proj", "v_proj"])
TARGET_PRESETS.add("mlp", lambda model: ["gate_proj", "up_proj", "down_proj"])


def resolve_target_modules(spec: list[str], model) -> list[str]:
    """Presets and explicit names -> the sorted module suffixes present in `model`."""
    present = module_suffixes(model)
    head = _output_head_suffix(model)
    out: list[str] = []
    for item in spec:
        names = TARGET_PRESETS.get(item)(model) if item in TARGET_PRESETS else [item]
        for n in names:
            if n not in present:
                valid = ", ".join(linear_suffixes(model))
                src = f" (from preset {item!r})" if item in TARGET_PRESETS else ""
                raise FtlabError(
                    f"peft.target_modules: {n!r}{src} is not a module of {type(model).__name__}; "
                    f"use all-linear, a preset ({', '.join(TARGET_PRESETS.names())}) or names from: {valid}"
                )
            if n == head:
                raise FtlabError(
                    f"peft.target_modules: {n!r} is the output head, which TRL scores through its weight directly "
                    "(an adapter there would never train); remove it"
                )
            if n not in out:
                out.append(n)
    if not out:
        raise FtlabError("peft.target_modules resolved to no module; use all-linear or name modules explicitly")
    return sorted(out)
