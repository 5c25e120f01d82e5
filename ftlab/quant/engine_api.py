"""What a post-training quantization engine is: the interface every engine in
`ftlab/quant/engines/` implements and the registry it is added to (`ftlab.quant.registry` imports
the engines and answers lookups, so engines never import the module that imports them).

Each engine declares what it supports (`Capabilities`) so an impossible request fails before any
model is loaded, and provides `quantize(job)` (writes weights + config into a folder) and
`load(folder, spec, dtype, device_map)` (returns a ready transformers model). Engines register
themselves (`register_engine`) against a post-training name of `ftlab.kinds.quant.QUANT_METHODS`,
where the method's name and run-name tag live, below the foundation that reads them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError
from ftlab.kinds.quant import PTQ_METHODS, QuantizationSpec, QuantMethod
from ftlab.registry import Registry


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
    name: str  # a post-training name of ftlab.kinds.quant.QUANT_METHODS (its tag is defined there)
    caps: Capabilities
    backend: str  # recorded in the spec, e.g. gptqmodel:torch
    bundles_tokenizer = False  # the weights file carries the tokenizer (GGUF): no tokenizer files beside it
    options: dict[str, EngineOption] = {}  # method-specific settings, defaults chosen by measurement

    @property
    def method(self) -> QuantMethod:
        return QuantMethod.parse(self.name)

    def complete(self, spec: "QuantizationSpec") -> None:
        """Fills method-specific fields into a requested spec (in place), before the generic defaults:
        each declared option's value (given or default) lands in `spec.extra`."""
        extra = dict(spec.extra or {})
        unknown = sorted(k for k in extra if k not in self.settable_extra)
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise FtlabError(f"{self.name} has no option {', '.join(unknown)}; its options: {valid}")
        for name, option in self.options.items():
            extra[name] = option.parse(name, extra.get(name, option.default), self.name)
        spec.extra = extra

    # extra keys an engine records itself, e.g. GGUF's tensor types (a caller may fix some: gguf_type)
    recorded_extra: tuple[str, ...] = ()

    @property
    def settable_extra(self) -> tuple[str, ...]:
        """The `spec.extra` names a request may carry: the options, and what the engine records."""
        return (*self.options, *self.recorded_extra)

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
    if cls.name not in PTQ_METHODS:  # the name and its tag are defined in ftlab.kinds.quant
        raise ValueError(f"engine {cls.name!r} is not a post-training method of ftlab.kinds.quant: {PTQ_METHODS}")
    ENGINES.add(cls.name, cls())
    return cls


