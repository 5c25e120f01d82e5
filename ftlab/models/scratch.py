"""Small Llama-style architectures (RoPE, SwiGLU, GQA, RMSNorm) for from-scratch training."""

from __future__ import annotations

from dataclasses import dataclass

from ftlab.registry import Registry


@dataclass(frozen=True)
class ScratchPreset:
    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    doc: str = ""

    def llama_config(self, vocab_size: int, bos_token_id: int | None, eos_token_id: int | None,
                     pad_token_id: int | None):
        from transformers import LlamaConfig  # lazy: transformers takes 1.3 s (and torch)

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act="silu",  # SwiGLU MLP
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )


SCRATCH_PRESETS: Registry[ScratchPreset] = Registry("scratch preset")
for _p in (
    ScratchPreset("tiny", 64, 2, 4, 2, 128, 512, doc="~3M params with the SmolLM2 vocab; tests"),
    ScratchPreset("micro", 256, 4, 8, 4, 768, 1024, doc="~16M params; quick CPU experiments"),
    ScratchPreset("small", 512, 8, 8, 4, 1536, 2048, doc="~50M params"),
    ScratchPreset("base", 768, 12, 12, 4, 2048, 2048, doc="~125M params, SmolLM2-135M-sized"),
):
    SCRATCH_PRESETS.add(_p.name, _p)
