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
# Rows with at least this many tokens of their own are prefilled one at a time: a padded batch
# loses sdpa's causal kernel and its activations leave the CPU's caches. Measured on
# SmolLM2-135M fp32, 2 cores (tokens per second, batched / alone; benchmarks/kv_cache_steps.py):
# 1000 tokens 557 / 613, 512 tokens 531 / 570, 256 tokens 639 / 500, 128 tokens 631 / 430.
SOLO_PREFILL_TOKENS = 384
# Room a growing cache layer adds when it fills (tokens per row).
GROWTH_TOKENS = 128

# forward(ids, mask, position_ids, cache) -> (what the caller keeps of the output, cache)
Forward = Callable[..., tuple]


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with (chat template, system prompt, task preamble, few-shot
    examples), leaving each prompt at least one token of its own to prefill; 0 below
    MIN_SHARED_PREFIX."""
    n = min(len(os.path.commonprefix(list(encoded))), min(len(e) for e in encoded) - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


PLAIN_LAYERS = ("DynamicLayer", "GrowingLayer")  # not DynamicLayer's sliding or hybrid subclasses


def cache_layers(cache) -> list | None:
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ not in PLAIN_LAYERS for layer in layers):
        return None
    return layers


def growing(cache):
    """Turns `cache`'s plain layers into GrowingLayers (in place; a layer already growing is left
    as it is) and returns it."""
    layers = cache_layers(cache)
    for i, layer in enumerate(layers or ()):
        if type(layer).__name__ == "DynamicLayer" and layer.is_initialized:
            layers[i] = _growing_layer_class()(layer.keys, layer.values)
    return cache


_GROWING = None


def _length(tensor) -> int:
    return 0 if tensor is None or tensor.dim() < 4 else tensor.shape[-2]


def _append(buffer, n: int, states):
    """Writes `states` after the first `n` positions of `buffer`, first moving them into a buffer
    with GROWTH_TOKENS more room when they do not fit; returns (buffer, new length)."""
    k = states.shape[-2]
    if n + k > buffer.shape[-2]:
        size = list(buffer.shape)
        size[-2] = n + k + GROWTH_TOKENS
        bigger = buffer.new_empty(size)
        bigger[:, :, :n] = buffer[:, :, :n]
        buffer = bigger
    buffer[:, :, n:n + k] = states
    return buffer, n + k


def _growing_layer_class():
    """transformers' DynamicLayer, appending into spare room instead of concatenating. Decoding
    one token into a concatenating cache copies every row's whole cache in every layer: a decode
    step of 16 rows over 1000 tokens took 189 ms that way and 158 ms this way (SmolLM2-135M, 2
    cores, benchmarks/kv_cache_steps.py); this copies only when the room runs out. The keys and
    values it returns are views of the same numbers, and the logits are bitwise the same.
    Assigning `keys`/`values` (row selection and splicing) adopts the tensor."""
    global _GROWING
    if _GROWING is None:
        from transformers.cache_utils import DynamicLayer  # lazy: transformers takes 1.3 s (and torch)

        class GrowingLayer(DynamicLayer):
            def __init__(self, keys, values):
                super().__init__()
                self.dtype, self.device = keys.dtype, keys.device
                self.keys, self.values = keys, values
                self.is_initialized = True

            # Keys and values keep their own lengths: row selection assigns one, then reads the other.
            @property
            def keys(self):
                return None if self._k is None else self._k[:, :, :self._nk]

            @keys.setter
            def keys(self, tensor):
                self._k, self._nk = tensor, _length(tensor)

            @property
            def values(self):
                return None if self._v is None else self._v[:, :, :self._nv]

            @values.setter
            def values(self, tensor):
                self._v, self._nv = tensor, _length(tensor)

            def update(self, key_states, value_states, *args, **kwargs):
                self._k, self._nk = _append(self._k, self._nk, key_states)
                self._v, self._nv = _append(self._v, self._nv, value_states)
                return self.keys, self.values

            def drop_leading(self, n: int) -> None:
                """Forgets the first `n` positions, as a view: the spare room stays."""
                self._k, self._nk = self._k[:, :, n:], self._nk - n
                self._v, self._nv = self._v[:, :, n:], self._nv - n

        _GROWING = GrowingLayer
    return _GROWING


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
        if len(seqs) > 1 and width >= SOLO_PREFILL_TOKENS:
            return self._prefill_alone(model, seqs, pad_id, device, forward)
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

    def _prefill_alone(self, model, seqs, pad_id: int, device, forward: Forward):
        """`prefill`, one row at a time, the rows then left-padded after the prefix into one cache
        (the layout a batched prefill gives)."""
        import torch  # lazy: torch takes 3.3 s to import
        from transformers.cache_utils import DynamicCache  # lazy: transformers takes 1.3 s (and torch)

        p = len(self.tokens)
        width = max(len(seq) - p for seq in seqs)
        outs, parts = [], []
        for seq in seqs:
            out, cache, _, _ = self.prefill(model, [seq], pad_id, device, forward)
            outs.append(out)
            parts.append([(layer.keys, layer.values) for layer in cache_layers(cache)])
        mask = torch.zeros((len(seqs), p + width), dtype=torch.long, device=device)
        mask[:, :p] = 1
        for r, seq in enumerate(seqs):
            mask[r, p + width - (len(seq) - p):] = 1
        combined = DynamicCache(config=model.config)
        for layer_idx, (k0, _) in enumerate(parts[0]):
            keys = k0.new_zeros((len(seqs), k0.shape[1], p + width, k0.shape[3]))
            values = torch.zeros_like(keys)
            for r, seq in enumerate(seqs):
                k, v = parts[r][layer_idx]
                keys[r, :, :p], values[r, :, :p] = k[0, :, :p], v[0, :, :p]
                own = len(seq) - p
                keys[r, :, p + width - own:], values[r, :, p + width - own:] = k[0, :, p:], v[0, :, p:]
            combined.update(keys, values, layer_idx)
        next_pos = torch.tensor([len(seq) for seq in seqs], dtype=torch.long, device=device)
        return torch.cat(outs), combined, mask, next_pos


def _first_used_column(mask) -> int:
    """The first column any row's mask uses (0 when none does): the columns before it are left
    padding no row needs."""
    used = mask.any(0).nonzero()
    return int(used[0]) if used.numel() else 0


def select_rows(cache, mask, idx):
    """Keeps rows `idx` (repeats allowed: a row copied per option) and drops left-padding columns
    no remaining row needs. Edits `cache` in place."""
    mask = mask[idx]
    start = _first_used_column(mask)
    for layer in cache_layers(cache):
        layer.keys = layer.keys[idx, :, start:, :]
        layer.values = layer.values[idx, :, start:, :]
    return cache, mask[:, start:]


def write_rows(cache, mask, slots: Sequence[int], new_cache, new_mask):
    """Writes the rows of `new_cache` into rows `slots` of `cache`, left-padded to its width, in
    place: finished rows' slots are reused and the rows that stay are not copied. `new_mask` must
    be no wider than `mask`. Returns the mask. Left of the new rows, their slots keep the old
    rows' numbers, masked out (finite, so their attention weight of exactly 0 leaves no trace)."""
    import torch  # lazy: torch takes 3.3 s to import

    start = mask.shape[1] - new_mask.shape[1]
    idx = torch.tensor(list(slots), device=mask.device)
    for layer, new_layer in zip(cache_layers(cache), cache_layers(new_cache)):
        layer.keys[idx, :, start:] = new_layer.keys  # keys/values may be views: written through
        layer.values[idx, :, start:] = new_layer.values
    mask[idx] = 0
    mask[idx, start:] = new_mask
    return mask


def drop_unused_columns(cache, mask):
    """Drops the leading columns no row's mask uses (the left padding of rows that left), as
    views: nothing is copied. Edits `cache` in place; returns the mask."""
    start = _first_used_column(mask)
    if not start:
        return mask
    for layer in cache_layers(cache):
        if hasattr(layer, "drop_leading"):
            layer.drop_leading(start)
        else:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
    return mask[:, start:]


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
