"""bitsandbytes NF4 and int8 as post-training quantization: quantize on load, save, reload.

The saved folder carries transformers' `quantization_config`, so a plain `from_pretrained`
rebuilds the 4/8-bit layers; the engine only adds the dtype and device choice.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import logging

from ftlab.dtypes import torch_dtype
from ftlab.kinds.quant import QuantizationSpec
from ftlab.quant.engine_api import Capabilities, QuantEngine, QuantJob, register_engine



class _BnbEngine(QuantEngine):
    @abstractmethod
    def bnb_config(self, spec: QuantizationSpec):
        """The transformers BitsAndBytesConfig for this method."""

    def quantize(self, job: QuantJob) -> None:
        from transformers import AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

        dtype = torch_dtype(job.spec.compute_dtype)
        model = AutoModelForCausalLM.from_pretrained(job.source_dir, dtype=dtype, use_safetensors=True,
                                                     quantization_config=self.bnb_config(job.spec),
                                                     device_map=job.device)
        model.save_pretrained(job.out_dir)

    def load(self, folder: Path, spec: QuantizationSpec, dtype: Any = None, device_map: Any = None):
        import torch  # lazy: torch takes 3.3 s to import
        from transformers import AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

        device_map = device_map or ("cuda" if torch.cuda.is_available() else "cpu")
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype), device_map=device_map,
                                                    use_safetensors=True)


@register_engine
class BnbNf4Engine(_BnbEngine):
    name = "BNB_NF4"
    backend = "bitsandbytes:nf4"
    caps = Capabilities(bits=(4,), default_bits=4, dtypes=("bf16", "fp16", "fp32"), default_dtype="fp32")

    def bnb_config(self, spec: QuantizationSpec):
        from transformers import BitsAndBytesConfig  # lazy: transformers takes 1.3 s (and torch)

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=bool(spec.double_quant),
                                  bnb_4bit_compute_dtype=torch_dtype(spec.compute_dtype))


class _FirstOnly(logging.Filter):
    """Lets a message prefix through once: bitsandbytes logs its fp32->fp16 cast on every int8 matmul
    (17k lines for a 100-question evaluation)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        first, self.seen = not self.seen, True
        return first


def _quiet_int8_cast_warning() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _FirstOnly) for f in logger.filters):
        logger.addFilter(_FirstOnly("MatMul8bitLt: inputs will be cast"))


@register_engine
class BnbInt8Engine(_BnbEngine):
    name = "BNB_INT8"
    backend = "bitsandbytes:int8"
    caps = Capabilities(bits=(8,), default_bits=8, dtypes=("bf16", "fp16", "fp32"), default_dtype="fp32")

    def bnb_config(self, spec: QuantizationSpec):
        from transformers import BitsAndBytesConfig  # lazy: transformers takes 1.3 s (and torch)

        return BitsAndBytesConfig(load_in_8bit=True)

    def load(self, folder: Path, spec: QuantizationSpec, dtype: Any = None, device_map: Any = None):
        _quiet_int8_cast_warning()
        return super().load(folder, spec, dtype, device_map)
