"""KV-cache editing shared by the continuous batcher and the log-likelihood scorer: the prefix all
prompts share computed once, left-padded prefills after it, and rows selected, repeated or spliced.

Rows are edited through the per-layer key/value tensors of transformers' DynamicCache, which is
only valid for plain (full-attention, dynamically grown) caches: `supports_cache_surgery` says
whether a model has one; callers fall back to whole-sequence forwards otherwise.
"""

from __future__ import annotations

import inspect
import os
from typing import Callable, Sequence

MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a separate forward pass

# forward(ids, mask, position_ids, cache) -> (what the caller keeps of the output, cache)
Forward = Callable[..., tuple]


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with (chat template, system prompt, task preamble, few-shot
    examples), leaving each prompt at least one token of its own to prefill; 0 below
    MIN_SHARED_PREFIX."""
    n = min(len(os.path.commonprefix(list(encoded))), min(len(e) for e in encoded) - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def cache_layers(cache) -> list | None:
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return None
    return layers


def supports_cache_surgery(model) -> bool:
    """Whether rows may be added to and removed from the model's KV cache by editing its per-layer
    tensors (plain full-attention caches; not sliding-window or hybrid ones)."""
    from transformers.cache_utils import DynamicCache  # lazy: transformers takes 1.3 s (and torch)

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        cache = DynamicCache(config=config)
    except Exception:  # noqa: BLE001 - exotic configs: fall back to whole-sequence forwards
        return False
    layers = getattr(cache, "layers", None)
    # Lazily created layers (empty list) are DynamicLayer too; a sliding or hybrid cache is not.
    return layers is not None and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class PrefixCache:
    """The KV cache of the prefix every sequence shares, computed once; `prefill` then runs only
    each sequence's own tokens. Prompts are ~3x longer than the answers of short tasks and
    few-shot examples repeat in every prompt, so this is most of the work saved there."""

    def __init__(self, tokens: Sequence[int] = (), kv: Sequence[tuple] = ()):
        self.tokens = list(tokens)
        self.kv = list(kv)

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def compute(cls, model, encoded: Sequence[Sequence[int]], forward: Forward, device) -> "PrefixCache":
        import torch  # lazy: torch takes 3.3 s to import
        from transformers.cache_utils import DynamicCache  # lazy: transformers takes 1.3 s (and torch)

        n = shared_prefix_length(encoded)
        if not n:
            return cls()
        first = list(encoded[0][:n])
        ids = torch.tensor([first], dtype=torch.long, device=device)
        pos = torch.arange(n, device=device)[None]
        _, cache = forward(ids, torch.ones_like(ids), pos, DynamicCache(config=model.config))
        layers = cache_layers(cache)
        if layers is None:
            return cls()
        return cls(first, [(layer.keys, layer.values) for layer in layers])

    def prefill(self, model, seqs: Sequence[Sequence[int]], pad_id: int, device, forward: Forward):
        """Runs the tokens of `seqs` after the shared prefix in one left-padded forward.
        Returns (forward's output, cache, attention mask, next position id per row)."""
        import torch  # lazy: torch takes 3.3 s to import
        from transformers.cache_utils import DynamicCache  # lazy: transformers takes 1.3 s (and torch)

        p = len(self.tokens)
        rest = [seq[p:] for seq in seqs]
        width = max(len(s) for s in rest)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), p + width), dtype=torch.long)
        mask[:, :p] = 1
        for r, seq in enumerate(rest):
            ids[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[r, p + width - len(seq):] = 1
        # Same position ids as model.generate derives for left padding; padding between the
        # shared prefix and a row's own tokens is masked out like left padding.
        pos = ((mask.cumsum(-1) - 1).masked_fill(mask == 0, 0))[:, p:]
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
        cache = DynamicCache(config=model.config)
        for layer_idx, (k, v) in enumerate(self.kv):
            cache.update(k.expand(len(seqs), -1, -1, -1).contiguous(), v.expand(len(seqs), -1, -1, -1).contiguous(),
                         layer_idx)
        out, cache = forward(ids, mask, pos, cache)
        return out, cache, mask, pos[:, -1] + 1


def select_rows(cache, mask, idx):
    """Keeps rows `idx` (repeats allowed: a row copied per option) and drops left-padding columns
    no remaining row needs. Edits `cache` in place."""
    mask = mask[idx]
    used = mask.any(0).nonzero()
    start = int(used[0]) if used.numel() else 0
    for layer in cache_layers(cache):
        layer.keys = layer.keys[idx, :, start:, :]
        layer.values = layer.values[idx, :, start:, :]
    return cache, mask[:, start:]


def copy_rows(cache, mask, idx):
    """A new cache (and mask) holding rows `idx` of `cache` (repeats allowed: one copy of a
    question's context per option); `cache` itself is left as it was."""
    from transformers.cache_utils import DynamicCache  # lazy: transformers takes 1.3 s (and torch)

    new = DynamicCache()
    for layer_idx, layer in enumerate(cache_layers(cache)):
        new.update(layer.keys[idx], layer.values[idx], layer_idx)
    return new, mask[idx]


def splice_rows(cache, mask, new_cache, new_mask):
    """Appends the rows of `new_cache` to `cache`, left-padding whichever is shorter."""
    import torch  # lazy: torch takes 3.3 s to import
    import torch.nn.functional as F  # lazy: torch takes 3.3 s to import

    old_len, new_len = mask.shape[1], new_mask.shape[1]
    width = max(old_len, new_len)
    for layer, new_layer in zip(cache_layers(cache), cache_layers(new_cache)):
        for attr in ("keys", "values"):
            a, b = getattr(layer, attr), getattr(new_layer, attr)
            a = F.pad(a, (0, 0, width - old_len, 0))
            b = F.pad(b, (0, 0, width - new_len, 0))
            setattr(layer, attr, torch.cat([a, b], dim=0))
    mask = torch.cat([F.pad(mask, (width - old_len, 0)), F.pad(new_mask, (width - new_len, 0))], dim=0)
    return cache, mask
