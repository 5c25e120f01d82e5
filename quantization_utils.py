"""Thin top-level entry point for quantization helpers; the logic lives in `ftlab.quant`."""

from ftlab.quant.engine_api import ENGINES, Capabilities, QuantEngine  # noqa: F401
from ftlab.quant.registry import (  # noqa: F401
    check_supported,
    complete_spec,
    get_engine,
    load_quantized,
    method_names,
)
from ftlab.kinds.quant import QuantizationSpec, QuantMethod, parse_quant_tag, tag_quant  # noqa: F401

__all__ = ["QuantMethod", "QuantizationSpec", "tag_quant", "parse_quant_tag", "ENGINES", "Capabilities",
           "QuantEngine", "check_supported", "complete_spec", "get_engine", "load_quantized", "method_names"]
