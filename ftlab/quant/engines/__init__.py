"""Quantization engines; importing this package registers each one in `ftlab.quant.registry.ENGINES`."""

from ftlab.quant.engines import bnb, gptq, hqq  # noqa: F401
