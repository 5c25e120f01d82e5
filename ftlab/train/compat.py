"""Work-arounds for known incompatibilities between installed third-party packages.

peft probes for `gptqmodel` whenever it wraps or loads any LoRA layer: the probe imports gptqmodel
(4 s, a banner and GIL/environment warnings on the console, for a plain Llama) and *raises*
ImportError when gptqmodel is installed without `optimum`. A layer can only be a gptqmodel class
once gptqmodel has been imported (by the GPTQ/AWQ engine loading such a model), so peft's probe
answers "unavailable" until then and asks the real probe after: exact for every model, and
training, evaluation and chat on plain models never import gptqmodel.
"""

from __future__ import annotations

import importlib
import logging
import sys

log = logging.getLogger(__name__)

_PEFT_MODULES_WITH_PROBE = (
    "peft.import_utils",
    "peft.tuners.lora.gptq",
    "peft.tuners.lora.awq",
    "peft.utils.quantization_utils",
    "peft.utils.other",
)
_patched = False


def _lazy_probe(real):
    def is_gptqmodel_available() -> bool:
        if "gptqmodel" not in sys.modules:
            return False
        try:
            return real()
        except ImportError as exc:  # installed without optimum: peft cannot use it, say so once
            log.debug("peft cannot use gptqmodel here (%s); treating it as unavailable", exc)
            return False

    return is_gptqmodel_available


def ensure_peft_usable() -> None:
    """Points peft's gptqmodel probe at `_lazy_probe` in every peft module that bound it (idempotent)."""
    global _patched
    if _patched:
        return
    import peft.import_utils as iu  # lazy: peft imports torch and transformers (15 s cold)

    probe = _lazy_probe(iu.is_gptqmodel_available)
    for name in _PEFT_MODULES_WITH_PROBE:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "is_gptqmodel_available"):
            mod.is_gptqmodel_available = probe
    _patched = True
