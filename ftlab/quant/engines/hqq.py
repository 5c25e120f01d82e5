"""HQQ (calibration-free half-quadratic quantization) through hqq's own API, saved as safetensors.

transformers' `HqqConfig` path raises NotImplementedError on transformers 5 (measured on 5.23:
"QuantizationMethod.HQQ is not available yet"), so quantization uses `hqq.models.hf.base.AutoHQQHFModel`.
hqq's own formats are not used for saving: `save_quantized` writes a pickle (`qmodel.pt`), and its
safetensors encoding decodes dtypes with `eval()` on strings read from the file. ftlab writes
`hqq_model.safetensors` (packed weights, scales, zeros and every unquantized tensor) with each
layer's metadata as JSON in the file's header, and rebuilds `HQQLinear` layers from plain values.
PEFT on HQQ layers needs explicit target module names (q_proj, v_proj, ...), not "all-linear".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ftlab.dtypes import torch_dtype
from ftlab.errors import FtlabError
from ftlab.kinds.quant import QuantizationSpec
from ftlab.quant.engine_api import Capabilities, EngineOption, QuantEngine, QuantJob, register_engine

log = logging.getLogger(__name__)

WEIGHTS_FILE = "hqq_model.safetensors"
FORMAT = "ftlab-hqq"
FORMAT_VERSION = 1
LEGACY_PICKLE = "qmodel.pt"
# HQQLinear tensors; everything else in a layer's state is metadata.
_LAYER_TENSORS = ("W_q", "scale", "zero", "bias")
# Metadata values and the type each must have (a file is data: nothing in it is evaluated).
_META_TYPES = {"nbits": int, "group_size": int, "axis": int, "packing": str, "view_as_float": bool,
               "quant_scale": bool, "quant_zero": bool, "channel_wise": bool, "optimize": bool, "round_zero": bool,
               "shape": list, "unpack_view_dtype": str, "compute_dtype": str, "offload_meta": bool}
_DTYPES = {"torch.uint8": "uint8", "torch.int8": "int8", "torch.int32": "int32", "torch.float32": "float32",
           "torch.float16": "float16", "torch.bfloat16": "bfloat16"}


def _device(device_map: Any) -> str:
    import torch  # lazy: torch takes 3.3 s to import

    if isinstance(device_map, str) and device_map != "auto":
        return device_map
    return "cuda" if torch.cuda.is_available() else "cpu"


def _layer_meta(layer) -> dict:
    wq = layer.quant_config["weight_quant_params"]
    meta = {k: v for k, v in layer.meta.items() if k not in _LAYER_TENSORS}
    meta.update({k: wq[k] for k in ("channel_wise", "optimize", "round_zero")})
    meta["shape"] = list(meta["shape"])
    meta["offload_meta"] = bool(layer.offload_meta)
    for key in ("unpack_view_dtype", "compute_dtype"):
        meta[key] = str(meta[key])
    return meta


def save_hqq(model, folder: Path) -> None:
    """Writes an HQQ-quantized transformers model as `hqq_model.safetensors` + config.json."""
    from hqq.core.quantize import HQQLinear  # lazy: hqq.core imports torch
    from safetensors.torch import save_file  # lazy: safetensors.torch imports torch

    tensors, layers = {}, {}
    quantized = set()
    for name, module in model.named_modules():
        if isinstance(module, HQQLinear):
            quantized.add(name)
            layers[name] = _layer_meta(module)
            for key in _LAYER_TENSORS:
                value = module.W_q if key == "W_q" else module.bias if key == "bias" else module.meta.get(key)
                if value is not None:
                    tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
    seen = set()
    for name, tensor in model.state_dict().items():
        # A tied output head shares the embedding's storage: stored once, re-tied on load.
        if name.rsplit(".", 1)[0] in quantized or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().contiguous().cpu()
    header = {"format": FORMAT, "version": str(FORMAT_VERSION), "layers": json.dumps(layers)}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata=header)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)


def _read_header(path: Path) -> dict[str, dict]:
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") != FORMAT:
        raise FtlabError(f"{path} is not an ftlab HQQ file (format {header.get('format')!r}); re-run ftlab quantize --method HQQ")
    if int(header.get("version", 0)) > FORMAT_VERSION:
        raise FtlabError(f"{path} was written by a newer ftlab (HQQ format v{header['version']}); upgrade ftlab")
    try:
        layers = json.loads(header["layers"])
    except (KeyError, json.JSONDecodeError):
        raise FtlabError(f"{path} has no readable layer metadata; the file is damaged") from None
    for name, meta in layers.items():
        for key, kind in _META_TYPES.items():
            if not isinstance(meta.get(key), kind) or (kind is int and isinstance(meta.get(key), bool)):
                raise FtlabError(f"{path}: layer {name} metadata {key!r} is missing or not {kind.__name__}; the file is damaged")
        for key in ("unpack_view_dtype", "compute_dtype"):
            if meta[key] not in _DTYPES:
                raise FtlabError(f"{path}: layer {name} has unknown {key} {meta[key]!r}")
    return layers


def _hqq_layer(meta: dict, tensors: dict, compute_dtype, device: str):
    import torch  # lazy: torch takes 3.3 s to import
    from hqq.core.quantize import HQQLinear  # lazy: hqq.core imports torch

    state = {k: tensors[k] for k in _LAYER_TENSORS if k in tensors}
    state.update({k: v for k, v in meta.items() if k not in ("unpack_view_dtype", "compute_dtype", "shape")})
    state["shape"] = torch.Size(meta["shape"])
    state["unpack_view_dtype"] = getattr(torch, _DTYPES[meta["unpack_view_dtype"]])
    state["compute_dtype"] = compute_dtype
    state["stores_quant_config"] = True
    layer = HQQLinear(None, None, compute_dtype=compute_dtype, device=device, initialize=False)
    # No "encoded_state_dict" key: hqq then takes the values as given instead of decoding strings.
    layer.load_state_dict(state)
    return layer


def load_hqq(folder: Path, compute_dtype, device: str):
    """Rebuilds the model from config.json and `hqq_model.safetensors` (no pickle, nothing evaluated)."""
    from accelerate import init_empty_weights  # lazy: accelerate takes 3.7 s
    from safetensors.torch import load_file  # lazy: safetensors.torch imports torch
    from transformers import AutoConfig, AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

    path = folder / WEIGHTS_FILE
    layers = _read_header(path)
    tensors = load_file(str(path), device=device)
    config = AutoConfig.from_pretrained(folder)
    # Parameters start on the meta device (no random init); buffers such as RoPE's are real.
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=compute_dtype)
    for name, meta in layers.items():
        parent_name, _, child = name.rpartition(".")
        own = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == name}
        model.get_submodule(parent_name).add_module(child, _hqq_layer(meta, own, compute_dtype, device))
    rest = {k: v.to(compute_dtype) if v.is_floating_point() else v for k, v in tensors.items()
            if k.rsplit(".", 1)[0] not in layers}
    missing, unexpected = model.load_state_dict(rest, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left or unexpected:
        raise FtlabError(f"{path} does not match config.json (missing {left[:3]}, unexpected {unexpected[:3]}); "
                         "the folder is damaged, re-run ftlab quantize --method HQQ")
    return model.to(device)


@register_engine
class HqqEngine(QuantEngine):
    name = "HQQ"
    backend = "hqq:pytorch"
    caps = Capabilities(bits=(1, 2, 3, 4, 8), default_bits=4, group_sizes=(32, 64, 128, 256), default_group_size=64,
                        dtypes=("bf16", "fp16", "fp32"), default_dtype="fp32")
    # hqq's BaseQuantizeConfig defaults are axis=1, optimize=True and round_zero=True at 4 bits. Its
    # solver is off by default here: on the demo's fine-tune it took 4-bit accuracy from 0.23 to 0.10
    # and answer-token KL from 0.093 to 0.159 (benchmarks/ptq.md, "HQQ settings"; --option optimize=true).
    options = {
        "axis": EngineOption(1, (0, 1), "grouping axis: 1 = along each output row's inputs (fused kernels), 0 = hqq's "
                                       "higher-quality layout (pytorch backend only)"),
        "optimize": EngineOption(False, (), "run HQQ's half-quadratic solver on scale/zero (False: plain min-max rounding)"),
        "round_zero": EngineOption(True, (), "round zero-points to integers (hqq's default at 4 bits)"),
    }

    def quantize(self, job: QuantJob) -> None:
        from hqq.core.quantize import BaseQuantizeConfig  # lazy: hqq.core imports torch
        from hqq.models.hf.base import AutoHQQHFModel  # lazy: hqq.core imports torch
        from transformers import AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

        dtype = torch_dtype(job.spec.compute_dtype)
        model = AutoModelForCausalLM.from_pretrained(job.source_dir, dtype=dtype, use_safetensors=True)
        opts = job.spec.extra
        qcfg = BaseQuantizeConfig(nbits=job.spec.bits, group_size=job.spec.group_size, axis=opts["axis"])
        qcfg["weight_quant_params"]["optimize"] = opts["optimize"]
        qcfg["weight_quant_params"]["round_zero"] = opts["round_zero"]
        AutoHQQHFModel.quantize_model(model, quant_config=qcfg, compute_dtype=dtype, device=job.device)
        save_hqq(model, job.out_dir)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(job.out_dir)

    def load(self, folder: Path, spec: QuantizationSpec, dtype: Any = None, device_map: Any = None):
        from transformers import GenerationConfig  # lazy: transformers takes 1.3 s (and torch)

        if not (folder / WEIGHTS_FILE).is_file():
            if (folder / LEGACY_PICKLE).is_file():
                raise FtlabError(f"HQQ folder {folder} holds a pickle ({LEGACY_PICKLE}, written by an older ftlab), "
                                 "which ftlab does not load; re-run ftlab quantize --method HQQ on its source")
            raise FtlabError(f"HQQ folder {folder} has no {WEIGHTS_FILE}; re-run ftlab quantize --method HQQ")
        model = load_hqq(folder, torch_dtype(dtype), _device(device_map))
        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(folder)
        return model
