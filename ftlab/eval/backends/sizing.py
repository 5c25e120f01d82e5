"""How many rows a forward pass takes: eval.batch_size=None (auto) from free memory, the token
budget per forward, and what an out-of-memory error means."""

from __future__ import annotations

import logging

import psutil

from ftlab.errors import FtlabError

log = logging.getLogger(__name__)

# eval.batch_size=None (auto): rows whose KV cache fills this share of free memory, capped where
# larger batches stop paying (matmul efficiency on CPU saturates around 64-128 rows).
AUTO_MEMORY_SHARE = 0.25
AUTO_MAX_ROWS = {"cpu": 128, "cuda": 256}
# On CPU, also at most the rows whose KV cache weighs this many times the model's weights. A decode
# step reads the weights once for all its rows, but every row's cache for itself: once the cache
# outweighs the weights, more rows save no reading and widen the padded cache the step attends
# over. Measured on GSM8K 5-shot (100 questions, rows of about 1,550 tokens; SmolLM2-135M fp32, 2
# cores; benchmarks/lmeval_tasks.md), wall seconds by rows: 8: 157, 16: 145-154, 24: 151, 32: 160,
# 64: 172, 80: 166-180 (16 rows is a cache 2x the weights). On synthetic-arith (rows of about 80
# tokens) 128 rows (a cache 0.9x the weights) beat 64 and 32 (benchmarks/eval_throughput.md).
AUTO_KV_WEIGHT_RATIO = {"cpu": 2.0}
AUTO_FALLBACK_ROWS = 16
# At most this many prompt tokens per prefill forward: long prompts (squad_v2 contexts reach 800
# tokens) times a full batch would otherwise need gigabytes of activations at once.
PREFILL_TOKEN_BUDGET = 8192


def kv_bytes_per_token(model) -> int | None:
    """Bytes of KV cache one token takes over all layers, from the model config (None if the
    config does not say)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None)
    if not head_dim and heads and getattr(config, "hidden_size", None):
        head_dim = config.hidden_size // heads
    if not (layers and kv_heads and head_dim):
        return None
    import torch  # lazy: torch takes 3.3 s to import

    dtype = getattr(model, "dtype", torch.float32)
    element = dtype.itemsize if dtype.is_floating_point else 4
    return int(layers) * 2 * int(kv_heads) * int(head_dim) * element


def free_memory_bytes(device) -> int:
    if device.type == "cuda":
        import torch  # lazy: torch takes 3.3 s to import

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)

    return int(psutil.virtual_memory().available)


def weight_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (a quantized model keeps its weights in buffers)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def auto_batch_size(model, tokens_per_row: int, n_prompts: int) -> int:
    """Rows for eval.batch_size=None: as many as AUTO_MEMORY_SHARE of free memory holds for the
    KV cache of rows `tokens_per_row` long (longest prompt + max_new_tokens), capped per device
    (AUTO_MAX_ROWS, and on CPU AUTO_KV_WEIGHT_RATIO)."""
    device = next(model.parameters()).device
    cap = AUTO_MAX_ROWS.get(device.type, AUTO_MAX_ROWS["cpu"])
    per_token = kv_bytes_per_token(model)
    if per_token is None:
        log.info("eval.batch_size=auto: the model config does not give the KV cache size; using %d rows",
                 AUTO_FALLBACK_ROWS)
        return max(1, min(cap, AUTO_FALLBACK_ROWS, n_prompts))
    row_bytes = per_token * max(1, tokens_per_row)
    rows = int(AUTO_MEMORY_SHARE * free_memory_bytes(device) // row_bytes)
    ratio = AUTO_KV_WEIGHT_RATIO.get(device.type)
    if ratio is not None:
        rows = min(rows, int(ratio * weight_bytes(model) // row_bytes))
    return max(1, min(cap, rows, n_prompts))


def single_row_oom(exc: BaseException, what: str = "generating a single row",
                   fix: str = "lower eval.max_new_tokens, shorten the prompts") -> FtlabError:
    first = (str(exc).splitlines() or [""])[0][:200]
    return FtlabError(f"out of memory {what}; {fix} or use a smaller (or quantized) model ({first})")


def is_out_of_memory(exc: RuntimeError) -> bool:
    import torch  # lazy: torch takes 3.3 s to import

    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text
