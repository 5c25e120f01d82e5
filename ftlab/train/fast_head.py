"""Score only the positions that carry a label in TRL's fused LM head, on every device.

TRL's fused head projects hidden states through the output embedding in vocabulary tiles. On
Triton devices it projects only positions whose label is not -100; elsewhere (CPU) it projects
*every* position, because tile shapes that change per batch force recompiles on Neuron. With
completion-only loss most positions are prompt (SmolLM2 + synthetic-arith: ~80%), so on CPU the
head does ~5x the work it needs (measured: about a third of a LoRA step on SmolLM2-135M). CPUs do
not recompile per shape, so ftlab feeds TRL's own kernel the labelled positions only; the loss,
log-probs, entropy and top-1 outputs are identical.
"""

from __future__ import annotations

import logging
import types

log = logging.getLogger(__name__)


def compact_fused_head(model) -> bool:
    """Wraps the forward TRL installed on `model` (the base model, not the PEFT wrapper).
    Returns False, leaving TRL's head as is, when this TRL version lacks the pieces used here or
    the model needs a head transform (soft-capping, logit scaling) that only TRL's path applies."""
    try:
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, FusedCausalLMOutput, _ChunkedLogProbFunction  # lazy: trl imports torch and transformers
    except ImportError:
        log.debug("TRL internals changed; keeping TRL's fused head")
        return False
    text_config = model.config.get_text_config()
    scaled = any(getattr(text_config, k, None) not in (None, 1.0) for k in
                 ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                  "logits_scaling"))
    if scaled or getattr(text_config, "output_router_logits", False):
        return False
    trl_forward = model.forward

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        if not fused_lm_head or labels is None or shift_labels is not None or kwargs.get("output_router_logits"):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:]
        head = self.get_output_embeddings()
        hidden = hidden.to(head.weight.device)
        labels = labels.to(head.weight.device)
        mask = labels != -100
        per_token = _ChunkedLogProbFunction.apply(
            hidden[mask], head.weight, head.bias, labels[mask], 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
            ("log_probs", "entropy", "is_top1"),
        )
        # masked_scatter keeps an all-masked micro-batch connected to the graph (a zero loss, not an error)
        log_probs, entropy, _, _, is_top1 = (
            None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token
        )
        denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / denom, log_probs=log_probs, entropy=entropy,
                                   is_top1=is_top1, label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True
