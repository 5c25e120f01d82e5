"""GPTQ and AWQ through gptqmodel (the maintained successor of auto-gptq).

auto-gptq refuses to quantize without CUDA and autoawq does not import with transformers 5, so
both methods use gptqmodel, which quantizes on CPU with its torch kernels.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from ftlab.console import quiet_third_party
from ftlab.errors import FtlabError
from ftlab.quant.registry import Capabilities, QuantEngine, QuantJob, register_engine, torch_dtype
from ftlab.quant.spec import QuantizationSpec, QuantMethod

log = logging.getLogger(__name__)

# Decoder families gptqmodel ships definitions for that ftlab's loaders also handle.
GPTQMODEL_ARCHITECTURES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
                           "gemma3_text", "phi3", "granite", "olmo2", "starcoder2", "cohere")


@contextlib.contextmanager
def _preserve_env(*names: str):
    # gptqmodel (via tokenicer) points HF_HOME at a temp folder on import unless it is set;
    # the user's cache must stay where it was for every later load in this process.
    saved = {n: os.environ.get(n) for n in names}
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def import_gptqmodel():
    """Imports gptqmodel once with HF_HOME and friends preserved and a CPU worker count that fits."""
    # gptqmodel's thread pool reserves a 2-worker loader pool inside its CPU pool, so fewer than 2
    # CPU workers fails at the first load; more than the cores oversubscribes small machines.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, min(4, os.cpu_count() or 2))))
    with _preserve_env("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE"):
        try:
            with quiet_third_party():  # its banner and GIL/environment advice, unless -v
                import gptqmodel
        except ImportError as exc:
            raise FtlabError(f"gptqmodel is not importable ({exc}); install it with `uv sync`") from None
    return gptqmodel


class _GptqModelEngine(QuantEngine):
    config_class_name: str

    def _quantize_config(self, spec: QuantizationSpec):
        from gptqmodel.quantization import config as qconfig

        cls = getattr(qconfig, self.config_class_name)
        # offload_to_disk streams layers through a temp folder: slower and pointless for models
        # that fit in RAM, which is every model this CPU path is meant for.
        return cls(bits=spec.bits, group_size=spec.group_size, offload_to_disk=False)

    def _device(self, device_map: Any) -> str:
        import torch

        if isinstance(device_map, str) and device_map not in ("auto",):
            return device_map
        return "cuda" if torch.cuda.is_available() else "cpu"

    def quantize(self, job: QuantJob) -> None:
        import_gptqmodel()
        from gptqmodel import GPTQModel

        if not job.calib_texts:
            raise FtlabError(f"{self.method.value} needs calibration texts; set --calib-samples to a positive number")
        model = GPTQModel.load(str(job.source_dir), self._quantize_config(job.spec), device=job.device,
                               dtype=torch_dtype(job.spec.compute_dtype))
        # Calibration rows are sorted by length inside gptqmodel, so batches pad little; batching
        # cuts the per-row Python overhead of the layer-by-layer forwards several-fold on CPU.
        model.quantize(job.calib_texts, tokenizer=job.tokenizer, batch_size=job.calib_batch_size)
        model.save(str(job.out_dir))
        # gptqmodel's per-layer log is a debugging aid, not part of the model.
        with contextlib.suppress(FileNotFoundError):
            (job.out_dir / "quant_log.csv").unlink()

    def load(self, folder: Path, spec: QuantizationSpec, dtype: Any = None, device_map: Any = None):
        import_gptqmodel()
        from gptqmodel import BACKEND, GPTQModel

        device = self._device(device_map)
        # The torch kernels are the ones with autograd, so LoRA can train on top of the reload;
        # gptqmodel's auto choice on CPU (avx512 kernels) has none.
        backend = BACKEND.TORCH if device == "cpu" else BACKEND.AUTO
        wrapped = GPTQModel.load(str(folder), device=device, backend=backend, dtype=torch_dtype(dtype))
        return wrapped.model


@register_engine
class GptqEngine(_GptqModelEngine):
    method = QuantMethod.GPTQ
    backend = "gptqmodel:torch"
    config_class_name = "GPTQConfig"
    caps = Capabilities(bits=(2, 3, 4, 8), default_bits=4, group_sizes=(-1, 32, 64, 128), default_group_size=128,
                        architectures=GPTQMODEL_ARCHITECTURES, dtypes=("bf16", "fp16"), default_dtype="bf16",
                        needs_calibration=True, dtype_hint="gptqmodel packs and runs GPTQ layers in half precision")


def _linear_in_features(config: dict) -> dict[str, int]:
    """Input widths of a decoder's linear layers, from config.json (text config for multimodal)."""
    cfg = config.get("text_config") or config
    out = {}
    if isinstance(cfg.get("hidden_size"), int):
        out["hidden_size"] = cfg["hidden_size"]
    if isinstance(cfg.get("intermediate_size"), int):
        out["intermediate_size"] = cfg["intermediate_size"]
    return out


@register_engine
class AwqEngine(_GptqModelEngine):
    method = QuantMethod.AWQ
    backend = "gptqmodel:torch_awq"
    config_class_name = "AWQConfig"
    caps = Capabilities(bits=(4,), default_bits=4, group_sizes=(32, 64, 128), default_group_size=128,
                        architectures=GPTQMODEL_ARCHITECTURES, dtypes=("bf16", "fp16"), default_dtype="bf16",
                        needs_calibration=True,
                        dtype_hint="gptqmodel's torch AWQ kernel needs bf16/fp16 weights; fp32 fails on CPU")

    def model_problems(self, spec: QuantizationSpec, config: dict) -> list[str]:
        # gptqmodel's AWQ scale search averages weights per group and fails mid-run otherwise.
        g = spec.group_size
        if g is None or g <= 0:
            return []
        bad = {k: v for k, v in _linear_in_features(config).items() if v % g}
        if not bad:
            return []
        widths = ", ".join(f"{k}={v}" for k, v in bad.items())
        fits = [x for x in self.caps.group_sizes if all(v % x == 0 for v in _linear_in_features(config).values())]
        return [f"AWQ group_size={g} must divide every layer's input width ({widths}); "
                f"use --group-size {' or '.join(map(str, fits)) if fits else 'another value'}"]
