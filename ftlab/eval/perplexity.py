"""Perplexity of a causal LM on held-out texts (token-weighted, so long texts count by length)."""

from __future__ import annotations

import math


def perplexity(model, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 4) -> float:
    import torch  # lazy: torch takes 3.3 s to import

    if not texts:
        raise ValueError("perplexity needs at least one text")
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        model.eval()
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            ids = enc["input_ids"].to(device)
            mask = enc["attention_mask"].to(device)
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            # Token t is predicted from positions < t; padding never counts.
            shift_logits = logits[:, :-1]
            shift_labels = ids[:, 1:]
            shift_mask = mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), reduction="none"
            ).view_as(shift_labels)
            total_nll += nll[shift_mask].sum().item()
            total_tokens += int(shift_mask.sum().item())
    finally:
        tokenizer.padding_side = saved_side
    if total_tokens == 0:
        raise ValueError("texts are too short to score (need at least two tokens)")
    return math.exp(total_nll / total_tokens)
