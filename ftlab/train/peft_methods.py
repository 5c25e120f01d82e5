"""PEFT kinds (name -> builder of the peft config) and target-module resolution.

`PEFT_KINDS` maps `peft.method` to a `PeftKind`; adding a method is one `register` call.
Target modules are resolved to explicit suffixes (`q_proj`, ...) before training so the
metadata records exactly what was adapted and bad names fail before any weights load twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from ftlab.config import PeftConfig
from ftlab.errors import FtlabError
from ftlab.registry import Registry

log = logging.getLogger(__name__)


# --- target modules --------------------------------------------------------------------------


def _linear_types() -> tuple[type, ...]:
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    types: list[type] = [nn.Linear, Conv1D]
    try:  # bitsandbytes layers subclass nn.Linear today; listed explicitly in case that changes
        import bitsandbytes as bnb

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
    linear = _linear_types()
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


# --- kinds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeftKind:
    name: str
    build: Callable[[PeftConfig, list[str]], Any]  # -> peft.PeftConfig, or None for full fine-tuning
    supported_modules: Callable[[], tuple[type, ...]] | None = None  # None: whatever peft supports
    doc: str = ""


PEFT_KINDS: Registry[PeftKind] = Registry("PEFT method")


def lora_alpha(cfg: PeftConfig) -> float:
    return float(cfg.alpha) if cfg.alpha is not None else float(2 * cfg.r)


def _lora(**extra: Any) -> Callable[[PeftConfig, list[str]], Any]:
    def build(cfg: PeftConfig, targets: list[str]):
        from peft import LoraConfig

        return LoraConfig(r=cfg.r, lora_alpha=lora_alpha(cfg), lora_dropout=cfg.dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM", **extra)

    return build


def _vera(cfg: PeftConfig, targets: list[str]):
    """VeRA shares one pair of frozen random matrices across all adapted layers; peft sizes them
    for the largest layer and slices them per layer, so q/k/v/o/MLP layers of different shapes
    can share them. What VeRA cannot adapt is a non-linear module (embeddings, norms): rejected in
    build_peft_config through `supported_modules`."""
    from peft import VeraConfig

    # save_projection: the frozen random matrices travel with the adapter, so loading never
    # depends on regenerating them with the same PRNG implementation.
    return VeraConfig(r=cfg.r, target_modules=targets, vera_dropout=cfg.dropout, d_initial=cfg.vera_d_initial,
                      projection_prng_key=cfg.vera_prng_key, save_projection=True, bias="none",
                      task_type="CAUSAL_LM")


PEFT_KINDS.add("NoPeft", PeftKind("NoPeft", lambda cfg, targets: None, doc="full fine-tuning of every weight"))
PEFT_KINDS.add("LoRa", PeftKind("LoRa", _lora(), doc="low-rank adapters, scale alpha/r"))
PEFT_KINDS.add("rsLoRa", PeftKind("rsLoRa", _lora(use_rslora=True), doc="rank-stabilised LoRA, scale alpha/sqrt(r)"))
PEFT_KINDS.add("DoRa", PeftKind("DoRa", _lora(use_dora=True), doc="weight-decomposed LoRA (magnitude + direction)"))
PEFT_KINDS.add("VeRa", PeftKind("VeRa", _vera, supported_modules=_linear_types,
                                doc="shared frozen random projections, trainable scaling vectors"))


def build_peft_config(cfg: PeftConfig, model) -> tuple[Any, list[str]]:
    """(peft config or None, resolved target suffixes) for `cfg`, validated against `model`."""
    kind = PEFT_KINDS.get(cfg.method)
    if kind.name == "NoPeft":
        return None, []
    if cfg.r <= 0:
        raise FtlabError(f"peft.r={cfg.r} must be a positive integer (e.g. peft.r=16)")
    targets = resolve_target_modules(cfg.target_modules, model)
    if kind.supported_modules is not None:
        allowed = kind.supported_modules()
        present = module_suffixes(model)
        bad = [t for t in targets if not all(isinstance(m, allowed) for m in present[t])]
        if bad:
            raise FtlabError(
                f"peft.method={kind.name} supports only linear layers; peft.target_modules has {bad} "
                f"({type(present[bad[0]][0]).__name__}); use all-linear, qkvo or linear module names"
            )
    return kind.build(cfg, targets), targets


def trainable_parameters(model) -> dict[str, float]:
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        # bitsandbytes packs two 4-bit weights per byte; count logical parameters
        if getattr(p, "quant_state", None) is not None or p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}
