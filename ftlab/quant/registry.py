"""The post-training quantization method registry.

Each engine declares what it supports (`Capabilities`) so an impossible request fails before any
model is loaded, and provides `quantize(job)` (writes weights + config into a folder) and
`load(folder, spec, dtype, device_map)` (returns a ready transformers model). Engines register
themselves by name when `ftlab.quant.engines` is imported; `QuantMethod`, tags and the CLI's
method list are derived from them, so a new method is one engine definition.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# dtype names are ftlab's one dtype rule (ftlab.dtypes); engines spell them through this module
from ftlab.dtypes import DTYPE_NAMES, dtype_name, torch_dtype  # noqa: F401
from ftlab.errors import ConfigError, FtlabError
from ftlab.registry import Registry

if TYPE_CHECKING:  # spec.py builds QuantMethod from this registry, so it is imported lazily here
    from ftlab.quant.spec import QuantizationSpec, QuantMethod

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    """What a method can do; checked by `check_supported` before any work starts."""

    bits: tuple[int, ...]
    default_bits: int
    group_sizes: tuple[int, ...] = ()  # empty: the method has no group-size knob
    default_group_size: int | None = None
    architectures: tuple[str, ...] | None = None  # config.json model_type values; None = any decoder
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("bf16", "fp16", "fp32")  # dtype of the unquantized parts (head, norms)
    default_dtype: str = "fp32"
    needs_calibration: bool = False
    dtype_hint: str = ""  # why some dtypes are missing, shown in the error


@dataclass(frozen=True)
class EngineOption:
    """A method-specific setting (`--option name=value`), stored in `QuantizationSpec.extra`."""

    default: Any
    choices: tuple = ()  # allowed values (empty: any value of the default's type)
    doc: str = ""

    def parse(self, name: str, value: Any, method: str) -> Any:
        kind = type(self.default)
        if isinstance(value, str) and kind is not str:
            text = value.strip().lower()
            try:
                value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text] \
                    if kind is bool else kind(text)
            except (KeyError, ValueError):
                raise FtlabError(f"{method} option {name}={value!r} is not a {kind.__name__}") from None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise FtlabError(f"{method} option {name}={value!r} is not a {kind.__name__}")
        if self.choices and value not in self.choices:
            raise FtlabError(f"{method} option {name}={value!r} is not one of {list(self.choices)}")
        return value


@dataclass
class QuantJob:
    """Everything an engine needs to quantize one model folder."""

    source_dir: Path  # a plain (unquantized, merged) transformers folder
    out_dir: Path  # staging folder; the engine writes weights + config.json here
    spec: QuantizationSpec  # complete: bits, group size, compute dtype filled in
    tokenizer: Any
    calib_texts: list[str] = field(default_factory=list)
    device: str = "cpu"
    max_length: int = 512
    calib_batch_size: int = 8
    name: str = ""  # the output's final folder name (out_dir is its staging folder)


class QuantEngine(ABC):
    name: str  # the method's name: --method, QuantMethod member, first part of the tag
    caps: Capabilities
    backend: str  # recorded in the spec, e.g. gptqmodel:torch
    tag_words: tuple[str, ...] = ()  # a tag head of its own (BNB_nf4) instead of <name>_w<bits>_g<group>
    bundles_tokenizer = False  # the weights file carries the tokenizer (GGUF): no tokenizer files beside it
    options: dict[str, EngineOption] = {}  # method-specific settings, defaults chosen by measurement

    @property
    def method(self) -> "QuantMethod":
        from ftlab.quant.spec import QuantMethod

        return QuantMethod.parse(self.name)

    def tag_forms(self) -> list[tuple[str, ...]]:
        """The tag heads this method writes (`GPTQ`, `BNB_nf4`, `GGUF_q4_0` ...), as word tuples."""
        return [self.tag_words or (self.name,)]

    def tag_parts(self, spec: "QuantizationSpec") -> list[str]:
        """The tag's method part for `spec` (suffixes a/kv/head are added by `tag_quant`)."""
        from ftlab.quant.spec import default_tag_parts

        return list(self.tag_words) if self.tag_words else default_tag_parts(spec)

    def spec_for_tag(self, form: tuple[str, ...]) -> "QuantizationSpec":
        """What a tag head alone says: the method, and its bits when the head fixes them (BNB_nf4)."""
        from ftlab.quant.spec import QuantizationSpec

        return QuantizationSpec(self.name, bits=self.caps.default_bits if self.tag_words else None)

    def complete(self, spec: "QuantizationSpec") -> None:
        """Fills method-specific fields into a requested spec (in place), before the generic defaults:
        each declared option's value (given or default) lands in `spec.extra`."""
        extra = dict(spec.extra or {})
        unknown = sorted(k for k in extra if k not in self.options and k not in self.recorded_extra)
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise FtlabError(f"{self.name} has no option {', '.join(unknown)}; its options: {valid}")
        for name, option in self.options.items():
            extra[name] = option.parse(name, extra.get(name, option.default), self.name)
        spec.extra = extra

    # extra keys an engine records itself (not settable), e.g. GGUF's tensor types
    recorded_extra: tuple[str, ...] = ()

    @abstractmethod
    def quantize(self, job: QuantJob) -> None:
        """Quantizes `job.source_dir` and writes the result (weights + config.json) to `job.out_dir`."""

    @abstractmethod
    def load(self, folder: Path, spec: QuantizationSpec, dtype: Any = None, device_map: Any = None):
        """Loads a folder written by `quantize` as a transformers causal LM in eval mode."""

    def model_problems(self, spec: QuantizationSpec, config: dict) -> list[str]:
        """Problems with this model's shapes for `spec` (read from config.json, before loading)."""
        return []

    def default_group_size(self, config: dict | None) -> int | None:
        """The group size used when none is given (engines may fit it to the model's shapes)."""
        return self.caps.default_group_size

    def describe(self) -> dict:
        c = self.caps
        return {"method": self.name, "backend": self.backend, "bits": list(c.bits),
                "options": {k: {"default": o.default, "choices": list(o.choices), "doc": o.doc} for k, o in self.options.items()},
                "group_sizes": list(c.group_sizes), "architectures": list(c.architectures) if c.architectures else "any",
                "devices": list(c.devices), "dtypes": list(c.dtypes), "needs_calibration": c.needs_calibration}


ENGINES: Registry[QuantEngine] = Registry("post-training quantization method")


def register_engine(cls: type[QuantEngine]) -> type[QuantEngine]:
    """Class decorator: registers one instance of an engine under its method's name."""
    ENGINES.add(cls.name, cls())
    return cls


def _ensure_engines() -> None:
    import ftlab.quant.engines  # noqa: F401  (registers every engine)


def get_engine(method: "str | QuantMethod") -> QuantEngine:
    from ftlab.quant.spec import QuantMethod

    _ensure_engines()
    m = QuantMethod.parse(str(method.value if isinstance(method, QuantMethod) else method).replace("-", "_"))
    if not m.is_ptq:
        raise FtlabError(
            f"method {m.value} is not a post-training method; use one of {', '.join(ENGINES.names())}"
            + (" (QLoRA is chosen at training time: ftlab train quant.method=QLORA)" if m.value == "QLORA" else "")
        )
    return ENGINES.get(m.value)


def method_names() -> list[str]:
    _ensure_engines()
    return ENGINES.names()


def complete_spec(spec: "QuantizationSpec", model_config: dict | None = None) -> "QuantizationSpec":
    """Fills the engine's defaults (bits, group size, dtype, backend) into a requested spec; with the
    source's config.json, the default group size is one that fits the model's layer widths."""
    from ftlab.quant.spec import QuantizationSpec

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
