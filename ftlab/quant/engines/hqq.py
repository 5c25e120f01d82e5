"""HQQ (calibration-free half-quadratic quantization) through hqq's own API.

transformers' `HqqConfig` path raises NotImplementedError on transformers 5, so quantization,
saving (`qmodel.pt` + `config.json`, hqq's format) and loading use `hqq.models.hf.base.AutoHQQHFModel`.
PEFT on HQQ layers needs explicit target module names (q_proj, v_proj, ...), not "all-linear".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError
from ftlab.quant.registry import Capabilities, QuantEngine, QuantJob, register_engine, torch_dtype
from ftlab.quant.spec import QuantizationSpec, QuantMethod

log = logging.getLogger(__name__)

WEIGHTS_FILE = "qmodel.pt"


def _device(device_map: Any) -> str:
    import torch

    if isinstance(device_map, str) and device_map != "auto":
        return device_map
    return "cuda" if torch.cuda.is_available() else "cpu"


@register_engine
class HqqEngine(QuantEngine):
    method = QuantMethod.HQQ
    backend = "hqq:pytorch"
    caps = Capabilities(bits=(1, 2, 3, 4, 8), default_bits=4, group_sizes=(32, 64, 128, 256), default_group_size=64,
                        dtypes=("bf16", "fp16", "fp32"), default_dtype="fp32")

    def quantize(self, job: QuantJob) -> None:
        from hqq.core.quantize import BaseQuantizeConfig
        from hqq.models.hf.base import AutoHQQHFModel
        from transformers import AutoModelForCausalLM

        dtype = torch_dtype(job.spec.compute_dtype)
        model = AutoModelForCausalLM.from_pretrained(job.source_dir, dtype=dtype, use_safetensors=True)
        qcfg = BaseQuantizeConfig(nbits=job.spec.bits, group_size=job.spec.group_size)
        AutoHQQHFModel.quantize_model(model, quant_config=qcfg, compute_dtype=dtype, device=job.device)
        AutoHQQHFModel.save_quantized(model, str(job.out_dir))
        if model.generation_config is not None:
            model.generation_config.save_pretrained(job.out_dir)

    def load(self, folder: Path, spec: QuantizationSpec, dtype: Any = None, device_map: Any = None):
        from hqq.models.hf.base import AutoHQQHFModel
        from transformers import GenerationConfig

        if not (folder / WEIGHTS_FILE).is_file():
            raise FtlabError(f"HQQ folder {folder} has no {WEIGHTS_FILE}; re-run ftlab quantize --method HQQ")
        # hqq's loader appends file names to the folder with plain string concatenation.
        model = AutoHQQHFModel.from_quantized(str(folder), compute_dtype=torch_dtype(dtype), device=_device(device_map))
        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(folder)
        return model
