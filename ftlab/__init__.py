"""ftlab: fine-tune, quantize and evaluate LLMs."""
__version__ = "0.1.0"
