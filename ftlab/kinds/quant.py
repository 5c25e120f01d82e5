"""Quantization methods by name, `QuantizationSpec` (what a model's quantization is), and the quant
tag it writes into run names, with the inverse parser.

This is the names layer: the foundation (`ftlab.naming`, `ftlab.schema`, `ftlab.config`) reads
methods and tags from here, and each post-training method's behaviour (capabilities, quantize,
load) is an engine in `ftlab/quant/engines/`, registered against a name of `QUANT_METHODS`
(`tests/quant/test_quant_spec.py` checks that every post-training name has exactly one engine).

Tags: `NoQuant`, `QLORA_w4_headbf16`, `QLORA_w8`, `GPTQ_w4_g128_headbf16`, `AWQ_w4_g128`,
`HQQ_w4_g64`, `BNB_nf4`, `BNB_int8`, `GGUF_q4_k_m`; optional `_a<bits>` (activations),
`_kv<dtype>` and `_head<dtype>`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import Any

from ftlab.errors import FtlabError
from ftlab.registry import Registry, closest


@dataclass(frozen=True)
class QuantMethodName:
    """A quantization method as names and tags see it (its engine is registered in the quant stage)."""

    name: str  # quant.method / --method value, QuantMethod member, first word of the tag
    training: bool = False  # chosen at training time (quant.method; ftlab/train/base_quant.py); the others are post-training engines
    base_bits: tuple[int, ...] = ()  # a training-time method: the bits it quantizes the base to (empty: none)
    doc: str = ""
    words: tuple[str, ...] = ()  # a fixed tag head of its own (BNB_nf4) instead of <name>_w<bits>_g<group>
    fixed_bits: int | None = None  # the bits a fixed tag head stands for
    types: tuple[tuple[str, int], ...] = ()  # the tag names a type (GGUF_q4_k_m): (type, bits); kept in extra[type_key]
    type_key: str = ""

    @property
    def title(self) -> str:
        """How messages name the method: the part of its doc before the colon."""
        return self.doc.split(":")[0] or self.name

    def forms(self) -> list[tuple[str, ...]]:
        """The tag heads this method writes, as word tuples."""
        if self.types:
            return [(self.name, *t.split("_")) for t, _ in self.types]
        return [self.words or (self.name,)]

    def head(self, spec: "QuantizationSpec") -> list[str]:
        """The tag's method part for `spec` (suffixes a/kv/head are added by `tag_quant`)."""
        if self.types:
            kind = (spec.extra or {}).get(self.type_key)
            if kind not in dict(self.types):
                raise FtlabError(f"{self.name} type {kind!r} is not one of {', '.join(t for t, _ in self.types)}")
            return [self.name, kind]
        if self.words:
            return list(self.words)
        parts = [self.name]
        if spec.bits is not None:
            parts.append(f"w{spec.bits}")
        if spec.group_size is not None:
            parts.append(f"g{spec.group_size}")
        return parts

    def spec_for(self, form: tuple[str, ...]) -> "QuantizationSpec":
        """What a tag head alone says: the method, and what the head fixes (BNB_nf4: 4 bits)."""
        if self.types:
            kind = "_".join(form[1:])
            return QuantizationSpec(self.name, bits=dict(self.types)[kind], extra={self.type_key: kind})
        return QuantizationSpec(self.name, bits=self.fixed_bits if self.words else None)


QUANT_METHODS: Registry[QuantMethodName] = Registry("quantization method")

# GGUF's types as users type them and as the tag carries them, with their bits; the engine
# (ftlab/quant/engines/gguf.py) knows how each is written.
GGUF_TYPES = (("f16", 16), ("bf16", 16), ("q8_0", 8), ("q5_1", 5), ("q5_0", 5), ("q4_1", 4), ("q4_0", 4),
              ("q6_k", 6), ("q5_k_m", 5), ("q5_k_s", 5), ("q4_k_m", 4), ("q4_k_s", 4), ("q3_k_l", 3),
              ("q3_k_m", 3), ("q3_k_s", 3), ("q2_k", 2))

for _m in (
    QuantMethodName("NoQuant", training=True, doc="the base is trained and stored as it loads"),
    QuantMethodName("QLORA", training=True, base_bits=(4, 8), doc="bitsandbytes QLoRA: an adapter trained on a 4-bit "
                    "(NF4) or 8-bit (LLM.int8) base"),
    QuantMethodName("GPTQ"),
    QuantMethodName("AWQ"),
    QuantMethodName("HQQ"),
    QuantMethodName("BNB_NF4", words=("BNB", "nf4"), fixed_bits=4),
    QuantMethodName("BNB_INT8", words=("BNB", "int8"), fixed_bits=8),
    QuantMethodName("GGUF", types=GGUF_TYPES, type_key="gguf_type"),
):
    QUANT_METHODS.add(_m.name, _m)

# Training-time settings of quant.method; every other method is a post-training engine.
TRAINING_METHODS = tuple(n for n, m in QUANT_METHODS.items() if m.training)
QUANTIZED_BASE_METHODS = tuple(n for n, m in QUANT_METHODS.items() if m.base_bits)
PTQ_METHODS = tuple(n for n, m in QUANT_METHODS.items() if not m.training)


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


QuantMethod = _QuantMethodBase("QuantMethod", [(n, n) for n in QUANT_METHODS.names()], module=__name__)


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
    if spec.method.value == "NoQuant":
        return "NoQuant"
    parts = QUANT_METHODS.get(spec.method.value).head(spec)
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
    forms = [(form, m) for _, m in QUANT_METHODS.items() if m.name != "NoQuant" for form in m.forms()]
    matching = [(head, m) for head, m in forms if tuple(parts[:len(head)]) == head]
    if not matching:
        if parts[0] in {h[0] for h, _ in forms}:
            valid = " or ".join("_".join(h[1:]) for h, _ in forms if h[0] == parts[0] and len(h) > 1)
            raise FtlabError(f"bad quant tag {tag!r}: {parts[0]} must be followed by {valid}")
        firsts = list(dict.fromkeys(h[0] for h, _ in forms))
        raise FtlabError(f"bad quant tag {tag!r}: starts with {parts[0]!r}, expected one of NoQuant, "
                         + ", ".join(firsts))
    head, method = max(matching, key=lambda m: len(m[0]))
    spec = method.spec_for(head)
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
