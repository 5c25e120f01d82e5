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


# Training-time settings of quant.method; every post-training method is an engine definition in
# ftlab/quant/engines/ (its name, tag, capabilities, quantize and load live there).
TRAINING_METHODS = ("NoQuant", "QLORA")


class _QuantMethodBase(str, enum.Enum):
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
        return self.value not in TRAINING_METHODS


def _build_method_enum():
    # Engines import no heavy library at module level, so reading their names here is cheap.
    from ftlab.quant.registry import method_names

    names = (*TRAINING_METHODS, *method_names())
    return _QuantMethodBase("QuantMethod", [(n, n) for n in names], module=__name__)


QuantMethod = _build_method_enum()


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


def default_tag_parts(spec: "QuantizationSpec") -> list[str]:
    """`<METHOD>_w<bits>_g<group>`: the tag head of every method that does not define its own."""
    parts = [spec.method.value]
    if spec.bits is not None:
        parts.append(f"w{spec.bits}")
    if spec.group_size is not None:
        parts.append(f"g{spec.group_size}")
    return parts


def tag_quant(spec: QuantizationSpec) -> str:
    m = spec.method
    if m.value == "NoQuant":
        return "NoQuant"
    if m.is_ptq:
        from ftlab.quant.registry import get_engine

        parts = get_engine(m).tag_parts(spec)
    else:
        parts = default_tag_parts(spec)
    if spec.act_bits is not None:
        parts.append(f"a{spec.act_bits}")
    if spec.kv_cache_dtype:
        parts.append(f"kv{spec.kv_cache_dtype}")
    if spec.lm_head_dtype:
        parts.append(f"head{spec.lm_head_dtype}")
    return "_".join(parts)


_PART = re.compile(r"^(?:w(?P<w>\d+)|g(?P<g>-?\d+)|a(?P<a>\d+)|kv(?P<kv>[a-z0-9]+)|head(?P<head>[a-z0-9]+))$")


def _tag_forms() -> list[tuple[tuple[str, ...], object]]:
    """(tag head words, the definition that reads them): training methods, then engines as registered."""
    from ftlab.quant.registry import ENGINES, method_names

    method_names()  # registers the engines
    forms: list[tuple[tuple[str, ...], object]] = [(("QLORA",), None)]
    for _, engine in ENGINES.items():
        forms += [(form, engine) for form in engine.tag_forms()]
    return forms


def parse_quant_tag(tag: str) -> QuantizationSpec:
    """Inverse of `tag_quant` for the fields a tag carries."""
    parts = tag.split("_")
    if parts == ["NoQuant"]:
        return QuantizationSpec()
    forms = _tag_forms()
    matching = [(head, d) for head, d in forms if tuple(parts[:len(head)]) == head]
    if not matching:
        if parts[0] in {h[0] for h, _ in forms}:
            valid = " or ".join("_".join(h[1:]) for h, _ in forms if h[0] == parts[0] and len(h) > 1)
            raise FtlabError(f"bad quant tag {tag!r}: {parts[0]} must be followed by {valid}")
        firsts = list(dict.fromkeys(h[0] for h, _ in forms))
        raise FtlabError(f"bad quant tag {tag!r}: starts with {parts[0]!r}, expected one of NoQuant, "
                         + ", ".join(firsts))
    head, definition = max(matching, key=lambda m: len(m[0]))
    spec = QuantizationSpec(head[0]) if definition is None else definition.spec_for_tag(head)
    for p in parts[len(head):]:
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
