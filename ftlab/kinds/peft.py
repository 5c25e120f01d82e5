"""PEFT kinds by name: what the foundation reads about each kind (the run name's PEFT field, the
help text, the model-free config rules). Their behaviour (the peft config builder, metadata,
hooks, saving, out-of-memory fallback) is a `PeftKind` in `ftlab/train/peft_methods.py`, registered
against a name here; `tests/train/test_peft_kinds.py` checks that every name has exactly one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ftlab.errors import FtlabError
from ftlab.kinds.quant import QUANTIZED_BASE_METHODS
from ftlab.registry import Registry

if TYPE_CHECKING:
    from ftlab.config import TrainRunConfig


def _no_problems(run: "TrainRunConfig") -> list[str]:
    return []


def _loftq_problems(run: "TrainRunConfig") -> list[str]:
    out = []
    if not run.train.merge_after_train:
        out.append("peft.method=LoftQ replaces the base weights with their 4-bit approximation, so the adapter "
                   "alone does not apply to the original base; set train.merge_after_train=true")
    return out


@dataclass(frozen=True)
class PeftName:
    name: str  # peft.method value and run-name prefix (LoRa -> LoRa16)
    doc: str
    adapter: bool = True  # False: every weight trains, no rank, no adapter folder
    problems: Callable[["TrainRunConfig"], list[str]] = _no_problems  # model-free rules, in config validation
    needs_cuda: str = ""  # why the kind cannot run on CPU (empty: it can)
    no_qlora: str = ""  # why the kind cannot train on a quantized base (QUANTIZED_BASE_METHODS; empty: it can)

    def tag(self, r: int | None) -> str:
        """The run name's PEFT field: the name, followed by the rank for adapter kinds."""
        if not self.adapter:
            return self.name
        if r is None or r <= 0:
            raise FtlabError(f"peft.r must be a positive integer for {self.name}, got {r}")
        return f"{self.name}{r}"


PEFT_NAMES: Registry[PeftName] = Registry("PEFT method")

for _kind in (
    PeftName("NoPeft", "full fine-tuning of every weight", adapter=False,
             no_qlora="a quantized base cannot be fully fine-tuned"),
    PeftName("LoRa", "low-rank adapters, scale alpha/r"),
    PeftName("rsLoRa", "rank-stabilised LoRA, scale alpha/sqrt(r)"),
    PeftName("DoRa", "weight-decomposed LoRA (magnitude + direction)"),
    PeftName("VeRa", "shared frozen random projections, trainable scaling vectors"),
    PeftName("PiSSA", "LoRA initialised from the principal singular vectors of each weight (the base keeps the rest)",
             no_qlora="peft decomposes full-precision weights only"),
    PeftName("OLoRa", "LoRA initialised from a QR decomposition of each weight (the base keeps the rest)"),
    PeftName("LoftQ", "LoRA initialised so 4-bit base + adapter approximates the full-precision weight",
             problems=_loftq_problems, no_qlora="LoftQ quantizes the full-precision base itself",
             needs_cuda="peft's LoftQ initialisation (peft.utils.loftq_utils) quantizes on cuda/xpu only; "
                        "on CPU use PiSSA or OLoRa"),
):
    PEFT_NAMES.add(_kind.name, _kind)


def is_adapter(method: str) -> bool:
    """True for a registered adapter kind; NoPeft and unknown names (reported elsewhere) are not."""
    return method in PEFT_NAMES.names() and PEFT_NAMES.get(method).adapter


def run_problems(run: "TrainRunConfig") -> list[str]:
    """Model-free rules of the chosen kind (TrainRunConfig.validate calls this)."""
    if run.peft.method not in PEFT_NAMES.names():
        return []  # PeftConfig.validate reports the unknown name
    kind = PEFT_NAMES.get(run.peft.method)
    out = list(kind.problems(run))
    if run.quant.method in QUANTIZED_BASE_METHODS and kind.no_qlora:
        usable = ", ".join(n for n, k in PEFT_NAMES.items() if not k.no_qlora)
        needs = "needs an adapter" if not kind.adapter else f"cannot train peft.method={kind.name}"
        out.append(f"quant.method={run.quant.method} {needs} ({kind.no_qlora}): set peft.method to one of {usable}, "
                   "or quant.method=NoQuant")
    return out


def check_device(method: str, cuda: bool) -> None:
    """Refuses a kind that cannot run here, before any model loads."""
    kind = PEFT_NAMES.get(method)
    if kind.needs_cuda and not cuda:
        raise FtlabError(f"peft.method={kind.name} needs a CUDA GPU: {kind.needs_cuda}")
