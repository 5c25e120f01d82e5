"""QuantizationSpec: what a model's quantization is, its tag in run names, and the inverse parser.

Tags: `NoQuant`, `QLORA_w4_headbf16`, `QLORA_w8`, `GPTQ_w4_g128_headbf16`, `AWQ_w4_g128`,
`HQQ_w4_g64`, `BNB_nf4`, `BNB_int8`; optional `_a<bits>` (activations) and `_kv<dtype>`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import Any

from ftlab.errors import FtlabError
from ftlab.registry import closest


class QuantMethod(str, enum.Enum):
    NoQuant = "NoQuant"
    QLORA = "QLORA"
    GPTQ = "GPTQ"
    AWQ = "AWQ"
    HQQ = "HQQ"
    BNB_NF4 = "BNB_NF4"
    BNB_INT8 = "BNB_INT8"

    @classmethod
    def parse(cls, value: "str | QuantMethod") -> "QuantMethod":
        if isinstance(value, QuantMethod):
            return value
        for m in cls:
            if m.value.lower() == str(value).lower():
                return m
        names = [m.value for m in cls]
        hint = closest(str(value), names)
        extra = f" (did you mean {hint!r}?)" if hint else ""
        raise FtlabError(f"unknown quantization method {value!r}{extra}; valid: {', '.join(names)}")

    @property
    def is_ptq(self) -> bool:
        """Post-training methods produce a quantized model folder (QLORA is a training-time method)."""
        return self not in (QuantMethod.NoQuant, QuantMethod.QLORA)


_DTYPES = ("bf16", "fp16", "fp32", "fp8", "int8")


@dataclass
class QuantizationSpec:
    method: QuantMethod = QuantMethod.NoQuant
    bits: int | None = None  # weight bits
    group_size: int | None = None  # weights per quantization group; -1 = per channel
    act_bits: int | None = None  # activation bits (None = unquantized activations)
    kv_cache_dtype: str | None = None  # e.g. fp8; None = model dtype
    lm_head_dtype: str | None = None  # dtype the output head is kept in, e.g. bf16
    backend: str | None = None  # engine/kernel name, e.g. gptqmodel:torch, hqq:pytorch
    double_quant: bool | None = None  # bitsandbytes nested quantization of the scales (QLoRA)
    compute_dtype: str | None = None  # dtype of matmuls on dequantized weights
    calib_dataset: str | None = None
    calib_samples: int | None = None
    calib_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method = QuantMethod.parse(self.method)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method"] = self.method.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantizationSpec":
        if not isinstance(d, dict):
            raise FtlabError(f"quantization spec must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise FtlabError(f"unknown quantization spec field(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)

    @property
    def tag(self) -> str:
        return tag_quant(self)


def tag_quant(spec: QuantizationSpec) -> str:
    m = spec.method
    if m is QuantMethod.NoQuant:
        return "NoQuant"
    if m is QuantMethod.BNB_NF4:
        parts = ["BNB", "nf4"]
    elif m is QuantMethod.BNB_INT8:
        parts = ["BNB", "int8"]
    else:
        parts = [m.value]
        if spec.bits is not None:
            parts.append(f"w{spec.bits}")
        if spec.group_size is not None:
            parts.append(f"g{spec.group_size}")
    if spec.act_bits is not None:
        parts.append(f"a{spec.act_bits}")
    if spec.kv_cache_dtype:
        parts.append(f"kv{spec.kv_cache_dtype}")
    if spec.lm_head_dtype:
        parts.append(f"head{spec.lm_head_dtype}")
    return "_".join(parts)


_PART = re.compile(r"^(?:w(?P<w>\d+)|g(?P<g>-?\d+)|a(?P<a>\d+)|kv(?P<kv>[a-z0-9]+)|head(?P<head>[a-z0-9]+))$")


def parse_quant_tag(tag: str) -> QuantizationSpec:
    """Inverse of `tag_quant` for the fields a tag carries."""
    parts = tag.split("_")
    if parts == ["NoQuant"]:
        return QuantizationSpec()
    head, rest = parts[0], parts[1:]
    if head == "BNB":
        if not rest or rest[0] not in ("nf4", "int8"):
            raise FtlabError(f"bad quant tag {tag!r}: BNB must be followed by nf4 or int8")
        spec = QuantizationSpec(QuantMethod.BNB_NF4 if rest[0] == "nf4" else QuantMethod.BNB_INT8)
        spec.bits = 4 if rest[0] == "nf4" else 8
        rest = rest[1:]
    else:
        try:
            spec = QuantizationSpec(QuantMethod(head))
        except ValueError:
            raise FtlabError(
                f"bad quant tag {tag!r}: starts with {head!r}, expected one of "
                + ", ".join(m.value for m in QuantMethod if m not in (QuantMethod.BNB_NF4, QuantMethod.BNB_INT8))
                + ", BNB"
            ) from None
    for p in rest:
        mt = _PART.match(p)
        if not mt:
            raise FtlabError(f"bad quant tag {tag!r}: cannot read part {p!r} (expected w<bits>, g<size>, a<bits>, kv<dtype>, head<dtype>)")
        if mt["w"]:
            spec.bits = int(mt["w"])
        elif mt["g"]:
            spec.group_size = int(mt["g"])
        elif mt["a"]:
            spec.act_bits = int(mt["a"])
        elif mt["kv"]:
            spec.kv_cache_dtype = mt["kv"]
        else:
            spec.lm_head_dtype = mt["head"]
    return spec


def tag_fields_equal(a: QuantizationSpec, b: QuantizationSpec) -> bool:
    """True when two specs agree on everything a tag records (used by round-trip tests)."""
    return tag_quant(a) == tag_quant(b)
