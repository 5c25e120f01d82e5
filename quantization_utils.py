"""Thin top-level entry point for quantization helpers; the logic lives in `ftlab.quant`."""

from ftlab.quant.registry import (  # noqa: F401
    ENGINES,
    Capabilities,
    QuantEngine,
    check_supported,
    complete_spec,
    get_engine,
    load_quantized,
    method_names,
)
from ftlab.quant.spec import QuantizationSpec, QuantMethod, parse_quant_tag, tag_quant  # noqa: F401

__all__ = ["QuantMethod", "QuantizationSpec", "tag_quant", "parse_quant_tag", "ENGINES", "Capabilities",
           "QuantEngine", "check_supported", "complete_spec", "get_engine", "load_quantized", "method_names"]
