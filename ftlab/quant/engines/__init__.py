"""Quantization engines; importing this package registers each one in `ftlab.quant.registry.ENGINES`."""

# Registration order is the order `--list-methods` and error messages show.
from ftlab.quant.engines import gptq, hqq, bnb, gguf  # noqa: F401,I001
