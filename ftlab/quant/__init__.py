"""Quantization: the spec and tags (spec.py), the method registry and engines."""

from ftlab.kinds.quant import QuantizationSpec, QuantMethod, parse_quant_tag, tag_quant

__all__ = ["QuantMethod", "QuantizationSpec", "parse_quant_tag", "tag_quant"]
