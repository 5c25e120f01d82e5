"""Work-arounds for known incompatibilities between installed third-party packages.

peft probes for `gptqmodel` when it builds any LoRA layer and *raises* ImportError when
gptqmodel is installed without `optimum` (our environment ships gptqmodel for the quantize
stage, optimum is not a dependency). Training never adapts GPTQ layers, so treating
gptqmodel as absent for peft is exact for every base ftlab trains.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

_PEFT_MODULES_WITH_PROBE = (
    "peft.import_utils",
    "peft.tuners.lora.gptq",
    "peft.tuners.lora.awq",
    "peft.utils.quantization_utils",
    "peft.utils.other",
)
_patched = False


def _gptqmodel_unavailable() -> bool:
    return False


def ensure_peft_usable() -> None:
    """Makes peft usable when its gptqmodel probe would raise; a no-op otherwise (idempotent)."""
    global _patched
    if _patched:
        return
    import peft.import_utils as iu

    try:
        iu.is_gptqmodel_available()
        _patched = True
        return
    except ImportError as exc:
        log.info("peft cannot use gptqmodel here (%s); treating it as unavailable for training", exc)
    for name in _PEFT_MODULES_WITH_PROBE:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "is_gptqmodel_available"):
            mod.is_gptqmodel_available = _gptqmodel_unavailable
    _patched = True
