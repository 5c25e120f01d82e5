"""Training-time base quantization (`quant.method`): one `BaseQuant` per training-time name of
`ftlab.kinds.quant.QUANT_METHODS` (where its name, tag, bits and config rules live), registered in
`BASE_QUANTS`.

A definition carries what training does with it: the `QuantizationSpec` a run records, the
quantization config the base loads with, the dtype of the modules left unquantized, how a trained
adapter is merged into the base, which layers it quantized, and what the model card says about a
merge. Settings, the trainer, the output folder and the card read these; none branches on a
method's name. Adding a training-time method is one name in `ftlab/kinds/quant.py` and one
`BaseQuant` here (`tests/train/test_base_quant.py` checks every training-time name has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ftlab.config import TrainRunConfig
from ftlab.dtypes import dtype_name, torch_dtype
from ftlab.kinds.quant import QuantizationSpec, QuantMethod
from ftlab.models.sources import load_model
from ftlab.paths import Workspace
from ftlab.quant.registry import get_engine
from ftlab.registry import Registry
from ftlab.train.compat import ensure_peft_usable


def compute_dtype(cfg: TrainRunConfig) -> str:
    return dtype_name(cfg.quant.compute_dtype, "compute")


def _plain_merge(model, cfg: TrainRunConfig, source, workspace: Workspace, save_adapter: Callable[[Path], None],
                 scratch: Path):
    return model.merge_and_unload()


@dataclass(frozen=True)
class BaseQuant:
    name: str  # a training-time name of ftlab.kinds.quant.QUANT_METHODS
    spec: Callable[[TrainRunConfig], QuantizationSpec]  # what the run records (metadata, run-name tag)
    load_config: Callable[[QuantizationSpec], Any]  # transformers quantization_config for the base, or None
    model_dtype: Callable[[TrainRunConfig], str]  # dtype of the modules left unquantized
    # (trained peft model, cfg, source, workspace, save_adapter(folder), scratch folder) -> merged model
    merge: Callable[..., Any] = _plain_merge
    quantized_layers: Callable[[Any], int] = lambda model: 0  # how many layers of the loaded model it quantized
    merged_into: str = ""  # recorded as quantization.extra.merged_into when the adapter was merged
    merged_note: str = ""  # what the model card says when the adapter was merged (empty: nothing)


BASE_QUANTS: Registry[BaseQuant] = Registry("training-time quantization method")


# --- NoQuant ---------------------------------------------------------------------------------

BASE_QUANTS.add("NoQuant", BaseQuant(
    "NoQuant", spec=lambda cfg: QuantizationSpec(), load_config=lambda spec: None,
    model_dtype=lambda cfg: cfg.model.dtype))


# --- QLoRA: the adapter trains on a bitsandbytes 4-bit (NF4) or 8-bit (LLM.int8) base ----------


def _qlora_spec(cfg: TrainRunConfig) -> QuantizationSpec:
    four = cfg.quant.bits == 4
    return QuantizationSpec(
        method=QuantMethod.QLORA, bits=cfg.quant.bits, lm_head_dtype=cfg.quant.lm_head_dtype,
        backend="bitsandbytes", double_quant=cfg.quant.double_quant if four else None,
        compute_dtype=compute_dtype(cfg), extra={"quant_type": "nf4" if four else "llm.int8"})


def _qlora_load_config(spec: QuantizationSpec):
    # The base loads exactly as the bitsandbytes post-training engines quantize: one
    # BitsAndBytesConfig builder (ftlab/quant/engines/bnb.py) for both.
    return get_engine("BNB_NF4" if spec.bits == 4 else "BNB_INT8").bnb_config(spec)


def _qlora_model_dtype(cfg: TrainRunConfig) -> str:
    """The unquantized modules (norms, embeddings, head) in the head dtype, unless asked otherwise."""
    if cfg.model.dtype == "auto":
        return cfg.quant.lm_head_dtype or compute_dtype(cfg)
    return cfg.model.dtype


def _dequantized_merge(model, cfg: TrainRunConfig, source, workspace: Workspace,
                       save_adapter: Callable[[Path], None], scratch: Path):
    """The adapter goes into the same 4/8-bit base it trained against, de-quantised to the compute
    dtype, so the merged weights reproduce the trained model (merging into the full-precision
    original would not: the adapter learned to correct the quantized weights)."""
    from peft import PeftModel  # lazy: peft imports torch and transformers; only when a QLoRA adapter is merged


    ensure_peft_usable()
    save_adapter(scratch)
    spec = _qlora_spec(cfg)
    base, _, _ = load_model(source, workspace=workspace, dtype=_qlora_model_dtype(cfg),
                            quantization_config=_qlora_load_config(spec), trust_remote_code=cfg.model.trust_remote_code,
                            revision=cfg.model.revision, seed=cfg.train.seed)
    base = base.dequantize(dtype=torch_dtype(cfg.quant.compute_dtype, "compute"))
    return PeftModel.from_pretrained(base, str(scratch)).merge_and_unload()


def _bnb_layers(model) -> int:
    return sum(type(m).__module__.startswith("bitsandbytes") and type(m).__name__ in ("Linear4bit", "Linear8bitLt")
               for m in model.modules())


BASE_QUANTS.add("QLORA", BaseQuant(
    "QLORA", spec=_qlora_spec, load_config=_qlora_load_config, model_dtype=_qlora_model_dtype,
    merge=_dequantized_merge, quantized_layers=_bnb_layers, merged_into="dequantized base",
    merged_note="The QLoRA adapter was merged into the de-quantised 4/8-bit base it was trained against; "
                "the weights are full precision."))

def base_quant(cfg: TrainRunConfig) -> BaseQuant:
    return BASE_QUANTS.get(cfg.quant.method)


def quantization_spec(cfg: TrainRunConfig) -> QuantizationSpec:
    """The spec a run records and tags its name with."""
    return base_quant(cfg).spec(cfg)
