"""PEFT kinds' behaviour: one `PeftKind` per name of `ftlab.kinds.peft.PEFT_NAMES`, in `PEFT_KINDS`.

The name layer (`ftlab/kinds/peft.py`) holds what the foundation reads: the name (the `peft.method`
value and the run name's PEFT field, `LoRa16`), its doc, whether it is an adapter, its model-free
config rules and why it cannot run on CPU or a QLoRA base. Here each kind adds what training does
with it: the builder of its peft config, the fields it adds to the model metadata, hooks run once
the trainer exists and when the adapter is saved, and its out-of-memory fallback. Config validation,
naming, the runner and the OOM back-off read these fields; none of them branches on kind names.
Adding a kind is one `PeftName` and one `PeftKind`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ftlab.errors import FtlabError
from ftlab.kinds.peft import PEFT_NAMES, PeftName
from ftlab.registry import Registry
from ftlab.train.targets import linear_types, module_suffixes, resolve_target_modules

if TYPE_CHECKING:
    from ftlab.config import PeftConfig

log = logging.getLogger(__name__)

INITIAL_ADAPTER_DIRNAME = "initial_adapter"


def _no_summary(cfg: "PeftConfig") -> dict:
    return {}


def _nothing_after_trainer(model, work_dir: Path, is_main: bool) -> None:
    return None


def _plain_save(model, folder: Path, work_dir: Path) -> dict:
    model.save_pretrained(folder)
    return {}


@dataclass(frozen=True)
class PeftKind:
    name: str  # a name of ftlab.kinds.peft.PEFT_NAMES (doc, adapter, config rules and tag live there)
    build: Callable[["PeftConfig", list[str]], Any]  # -> peft.PeftConfig, or None for full fine-tuning
    summary: Callable[["PeftConfig"], dict] = _no_summary  # kind-specific fields of the metadata's `peft`
    supported_modules: Callable[[], tuple[type, ...]] | None = None  # None: whatever peft supports
    after_trainer: Callable[[Any, Path, bool], None] = _nothing_after_trainer  # (peft model, work dir, is main)
    save: Callable[[Any, Path, Path], dict] = _plain_save  # (model, folder, work dir) -> notes for `peft`
    oom_fallback: tuple[str, str] | None = None  # (back-off step name, cheaper kind) tried on out-of-memory

    @property
    def named(self) -> PeftName:
        return PEFT_NAMES.get(self.name)

    @property
    def adapter(self) -> bool:
        return self.named.adapter


PEFT_KINDS: Registry[PeftKind] = Registry("PEFT method")


def get_kind(name: str) -> PeftKind:
    return PEFT_KINDS.get(name)


def lora_alpha(cfg: "PeftConfig") -> float:
    return float(cfg.alpha) if cfg.alpha is not None else float(2 * cfg.r)


# --- LoRA and its variants -------------------------------------------------------------------


def _lora(**extra: Any) -> Callable[["PeftConfig", list[str]], Any]:
    def build(cfg: "PeftConfig", targets: list[str]):
        from peft import LoraConfig  # lazy: peft imports torch and transformers (15 s cold)

        return LoraConfig(r=cfg.r, lora_alpha=lora_alpha(cfg), lora_dropout=cfg.dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM", **extra)

    return build


def _lora_summary(rslora: bool = False, dora: bool = False, init: str | None = None):
    def summary(cfg: "PeftConfig") -> dict:
        alpha = lora_alpha(cfg)
        out = {"alpha": alpha, "use_rslora": rslora, "use_dora": dora,
               "scaling": alpha / (math.sqrt(cfg.r) if rslora else cfg.r)}
        if init:
            out["init_lora_weights"] = init
        return out

    return summary


# PiSSA and OLoRA initialise the adapter from the base weight (SVD / QR) and subtract it from the
# base, so base' + BA equals the original model at step 0. An adapter trained on base' does not apply
# to the original base, so the saved adapter is peft's conversion of the update to a plain LoRA
# adapter of rank 2r (`path_initial_model_for_weight_conversion`), which does.


def _save_initial_adapter(model, work_dir: Path, is_main: bool) -> None:
    if not is_main:
        return
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True  # peft: the initial adapter must not re-run the decomposition on load
    try:
        model.save_pretrained(work_dir / INITIAL_ADAPTER_DIRNAME)
    finally:
        config.init_lora_weights = init


def _save_converted(model, folder: Path, work_dir: Path) -> dict:
    initial = work_dir / INITIAL_ADAPTER_DIRNAME
    if not hasattr(model, "peft_config"):  # merged: base' + BA is the trained model, nothing to convert
        model.save_pretrained(folder)
        return {}
    if not (initial / "adapter_model.safetensors").is_file():
        raise FtlabError(f"the initial adapter {initial} is missing, so the trained adapter cannot be converted "
                         "for the original base; train again (train.resume=never)")
    model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(initial))
    return {"saved_as": "LoRA adapter of rank 2r for the original base (peft's conversion of the update)"}


def _loftq(cfg: "PeftConfig", targets: list[str]):
    from peft import LoftQConfig  # lazy: peft imports torch and transformers (15 s cold)

    # peft's defaults (4-bit NF4, one alternating step), recorded in the metadata summary.
    return _lora(init_lora_weights="loftq", loftq_config=LoftQConfig(loftq_bits=4, loftq_iter=1))(cfg, targets)


def _loftq_summary(cfg: "PeftConfig") -> dict:
    return {**_lora_summary(init="loftq")(cfg), "loftq_bits": 4, "loftq_iter": 1}


# --- VeRA ------------------------------------------------------------------------------------


def _vera(cfg: "PeftConfig", targets: list[str]):
    """VeRA shares one pair of frozen random matrices across all adapted layers; peft sizes them
    for the largest layer and slices them per layer, so q/k/v/o/MLP layers of different shapes
    can share them. What VeRA cannot adapt is a non-linear module (embeddings, norms): rejected in
    build_peft_config through `supported_modules`."""
    from peft import VeraConfig  # lazy: peft imports torch and transformers (15 s cold)

    # save_projection: the frozen random matrices travel with the adapter, so loading never
    # depends on regenerating them with the same PRNG implementation.
    return VeraConfig(r=cfg.r, target_modules=targets, vera_dropout=cfg.dropout, d_initial=cfg.vera_d_initial,
                      projection_prng_key=cfg.vera_prng_key, save_projection=True, bias="none",
                      task_type="CAUSAL_LM")


def _vera_summary(cfg: "PeftConfig") -> dict:
    return {"d_initial": cfg.vera_d_initial, "prng_key": cfg.vera_prng_key, "alpha": None}


def _align_vera_projections(model, work_dir: Path, is_main: bool) -> None:
    """TRL casts QLoRA's trainable adapter weights to bf16 but VeRA's frozen shared projections
    are buffers it does not touch; matmuls between the two then fail on dtype. Bring the
    projections to the dtype of VeRA's scaling vectors."""
    dtype = next((p.dtype for n, p in model.named_parameters() if "vera_lambda" in n), None)
    if dtype is None:
        return
    seen: set[int] = set()
    for module in model.modules():
        for attr in ("vera_A", "vera_B"):
            buffers = getattr(module, attr, None)
            if buffers is None or id(buffers) in seen or not hasattr(buffers, "keys"):
                continue
            seen.add(id(buffers))
            for key in list(buffers.keys()):
                if buffers[key].dtype != dtype:
                    buffers[key] = buffers[key].to(dtype)


# --- the kinds -------------------------------------------------------------------------------


for _kind in (
    PeftKind("NoPeft", lambda cfg, targets: None),
    PeftKind("LoRa", _lora(), summary=_lora_summary()),
    PeftKind("rsLoRa", _lora(use_rslora=True), summary=_lora_summary(rslora=True)),
    PeftKind("DoRa", _lora(use_dora=True), summary=_lora_summary(dora=True), oom_fallback=("dora_off", "LoRa")),
    PeftKind("VeRa", _vera, summary=_vera_summary, supported_modules=linear_types,
             after_trainer=_align_vera_projections),
    PeftKind("PiSSA", _lora(init_lora_weights="pissa"), summary=_lora_summary(init="pissa"),
             after_trainer=_save_initial_adapter, save=_save_converted),
    PeftKind("OLoRa", _lora(init_lora_weights="olora"), summary=_lora_summary(init="olora"),
             after_trainer=_save_initial_adapter, save=_save_converted),
    PeftKind("LoftQ", _loftq, summary=_loftq_summary),
):
    PEFT_KINDS.add(PEFT_NAMES.canonical(_kind.name), _kind)  # a name the names layer does not know fails here


# --- using a kind ----------------------------------------------------------------------------


def build_peft_config(cfg: "PeftConfig", model) -> tuple[Any, list[str]]:
    """(peft config or None, resolved target suffixes) for `cfg`, validated against `model`."""
    kind = get_kind(cfg.method)
    if not kind.adapter:
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


def peft_summary(cfg: "PeftConfig", targets: list[str]) -> dict | None:
    """The metadata's `peft` section (None for full fine-tuning)."""
    kind = get_kind(cfg.method)
    if not kind.adapter:
        return None
    return {"method": kind.name, "r": cfg.r, "target_modules": targets, "dropout": cfg.dropout,
            "requested_target_modules": list(cfg.target_modules), **kind.summary(cfg)}


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
