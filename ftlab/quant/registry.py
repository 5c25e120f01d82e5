"""The post-training quantization method registry: every engine of `ftlab/quant/engines/`, looked
up by method name, and what is done with one (defaults, support checks, loading a folder).

Each engine declares what it supports (`Capabilities`) so an impossible request fails before any
model is loaded, and provides `quantize(job)` and `load(folder, spec, dtype, device_map)`; the
interface lives in `ftlab.quant.engine_api`. A method's name and run-name tag live in
`ftlab.kinds.quant`, below the foundation that reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ftlab.quant.engines  # noqa: F401  (registers every engine; they import no heavy library at module level)
from ftlab.dtypes import DTYPE_NAMES, dtype_name, torch_dtype  # noqa: F401
from ftlab.errors import ConfigError, FtlabError
from ftlab.kinds.quant import QUANT_METHODS, QUANTIZED_BASE_METHODS, QuantizationSpec, QuantMethod
from ftlab.quant.engine_api import ENGINES, QuantEngine, QuantJob  # noqa: F401


def get_engine(method: "str | QuantMethod") -> QuantEngine:
    m = QuantMethod.parse(str(method.value if isinstance(method, QuantMethod) else method).replace("-", "_"))
    if not m.is_ptq:
        raise FtlabError(
            f"method {m.value} is not a post-training method; use one of {', '.join(ENGINES.names())}"
            + (f" ({QUANT_METHODS.get(m.value).title} is chosen at training time: ftlab train quant.method={m.value})"
               if m.value in QUANTIZED_BASE_METHODS else "")
        )
    return ENGINES.get(m.value)


def method_names() -> list[str]:
    return ENGINES.names()


def complete_spec(spec: "QuantizationSpec", model_config: dict | None = None) -> "QuantizationSpec":
    """Fills the engine's defaults (bits, group size, dtype, backend) into a requested spec; with the
    source's config.json, the default group size is one that fits the model's layer widths."""
    engine = get_engine(spec.method)
    c = engine.caps
    out = QuantizationSpec.from_dict(spec.to_dict())
    engine.complete(out)
    if out.bits is None:
        out.bits = c.default_bits
    if out.group_size is None and c.group_sizes:
        out.group_size = engine.default_group_size(model_config)
    if out.compute_dtype is None:
        out.compute_dtype = out.lm_head_dtype or c.default_dtype
    out.backend = out.backend or engine.backend
    return out


def check_supported(spec: QuantizationSpec, *, model_type: str | None = None, device: str = "cpu",
                    model_config: dict | None = None) -> None:
    """Raises one error listing every unsupported part of the request (before any work starts).

    `model_config` (the source's config.json) lets engines check shapes, e.g. AWQ's group size
    must divide every linear layer's input width."""
    engine = get_engine(spec.method)
    c, name = engine.caps, spec.method.value
    problems = []
    if spec.bits is not None and spec.bits not in c.bits:
        problems.append(f"bits={spec.bits} is not supported by {name}; use one of {list(c.bits)}")
    if spec.group_size is not None:
        if not c.group_sizes:
            problems.append(f"group_size is not a setting of {name}; leave --group-size out")
        elif spec.group_size not in c.group_sizes:
            problems.append(f"group_size={spec.group_size} is not supported by {name}; use one of {list(c.group_sizes)}")
    if spec.act_bits is not None:
        problems.append(f"activation quantization (act_bits={spec.act_bits}) is not supported by {name} "
                        "(weight-only engine); leave it out")
    if spec.kv_cache_dtype is not None:
        problems.append(f"kv_cache_dtype={spec.kv_cache_dtype!r} is not supported by {name}; leave it out")
    for label, value in (("lm_head dtype", spec.lm_head_dtype), ("compute dtype", spec.compute_dtype)):
        if value is None:
            continue
        if value not in DTYPE_NAMES:
            problems.append(f"{label} {value!r} is not one of {', '.join(DTYPE_NAMES)} (the head is never quantized)")
        elif value not in c.dtypes:
            hint = f" ({c.dtype_hint})" if c.dtype_hint else ""
            problems.append(f"{name} cannot keep weights in {value} on {device}{hint}; use one of {list(c.dtypes)}")
    if spec.lm_head_dtype and spec.compute_dtype and spec.lm_head_dtype != spec.compute_dtype:
        problems.append(f"lm_head dtype {spec.lm_head_dtype} differs from compute dtype {spec.compute_dtype}; "
                        "the unquantized tensors share one dtype, give one value")
    if device not in c.devices:
        problems.append(f"{name} does not run on {device}; it needs one of {list(c.devices)}")
    if model_config is not None:
        model_type = model_type or model_config.get("model_type")
        problems += engine.model_problems(spec, model_config)
    if model_type is not None and c.architectures is not None and model_type not in c.architectures:
        problems.append(f"{name} does not support model_type {model_type!r}; supported: {', '.join(c.architectures)}")
    if problems:
        raise ConfigError(problems)


def _resolve_load_dtype(spec: QuantizationSpec, dtype: Any, engine: QuantEngine) -> str:
    # None/"auto": the dtype the model was quantized in, so reloads match what was measured.
    if dtype is None or dtype == "auto":
        return spec.compute_dtype or engine.caps.default_dtype
    name = dtype_name(dtype)
    if name not in engine.caps.dtypes:
        hint = f" ({engine.caps.dtype_hint})" if engine.caps.dtype_hint else ""
        raise FtlabError(f"dtype={name} cannot load a {spec.method.value} model{hint}; use one of {list(engine.caps.dtypes)}")
    return name


def load_quantized(folder: str | Path, spec: QuantizationSpec, *, dtype: Any = None, device_map: Any = None):
    """Loads a post-training quantized folder through its method's engine."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FtlabError(f"quantized model folder {folder} does not exist")
    engine = get_engine(spec.method)
    model = engine.load(folder, spec, _resolve_load_dtype(spec, dtype, engine), device_map)
    model.eval()
    return model
