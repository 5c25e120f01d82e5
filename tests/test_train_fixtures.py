"""Shared fixtures for the training tests: a tiny Llama with a small BPE tokenizer (fast on CPU).

The SmolLM2 vocabulary (49k) makes the output head dominate a tiny model's step time; a 400-token
BPE trained on the synthetic-arith prompts keeps every test run to a second or two.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(folder: Path, hidden: int = 64, layers: int = 2, vocab: int = 400) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ftlab.data.loading import load_examples
    from ftlab.data.prompts import build_messages, build_target

    examples = load_examples("synthetic-arith", "train", limit=400)
    corpus = []
    for ex in examples:
        corpus += [m["content"] for m in build_messages("synthetic-arith", ex)] + [build_target("synthetic-arith", ex)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus + ["user assistant system\n"] * 5, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = LlamaForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def tiny_overrides(model_dir: Path, **extra) -> list[str]:
    """A few fast steps on synthetic-arith; `extra` as `section__key=value`."""
    base = {
        "model.name": str(model_dir), "data.dataset": "synthetic-arith", "data.trunc_train": 48,
        "data.val_size": 8, "data.max_length": 96, "train.max_steps": 6, "train.batch_size": 8,
        "train.learning_rate": 5e-3, "train.logging_steps": 1, "train.warmup_ratio": 0.0,
        "train.report_to": "none", "train.lr_scheduler": "constant", "train.mixed_precision": "no",
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]
