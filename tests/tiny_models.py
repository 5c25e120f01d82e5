"""Tiny models the tests build in-process (no hub): a few-layer Llama with a small BPE tokenizer.

The SmolLM2 vocabulary (49k) makes the output head dominate a tiny model's step time; a 400-token
BPE trained on the synthetic-arith prompts keeps every training or quantization run to a second or
two. Fixtures that use these live in conftest.py; test modules import the plain helpers from here.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(folder: Path, hidden: int = 64, layers: int = 2, vocab: int = 400,
                     corpus_rows: int = 400) -> Path:
    """Save a seeded tiny Llama and its BPE tokenizer (trained on `corpus_rows` synthetic-arith rows) in `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ftlab.data.loading import load_examples
    from ftlab.data.prompts import build_messages, build_target

    corpus = []
    for ex in load_examples("synthetic-arith", "train", limit=corpus_rows):
        corpus += [m["content"] for m in build_messages("synthetic-arith", ex)] + [build_target("synthetic-arith", ex)]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus + ["user assistant system\n"] * 5, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_quant_tiny_model(folder: Path, hidden: int = 128, layers: int = 2, vocab: int = 400) -> Path:
    """The quantization tests' tiny Llama: linear shapes fit every kernel (multiples of 64)."""
    return build_tiny_model(folder, hidden=hidden, layers=layers, vocab=vocab, corpus_rows=300)


def build_peaked_quant_tiny_model(folder: Path, hidden: int = 64, vocab: int = 300, scale: float = 5.0) -> Path:
    """A quantization tiny Llama whose weights are scaled up: random init gives near-uniform
    next-token distributions whose argmax no rounding moves; 5x the weights makes them peaked like
    a trained model's (measured top-1 agreement at 8/4/2 bits: 99/72/19%), so fidelity figures
    move measurably with the bits."""
    import torch
    from transformers import AutoModelForCausalLM

    build_quant_tiny_model(folder, hidden=hidden, vocab=vocab)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(scale)
    model.save_pretrained(folder)
    return folder


def tiny_overrides(model_dir: Path, **extra) -> list[str]:
    """A few fast training steps on synthetic-arith as `key=value` overrides; `extra` as `section__key=value`."""
    base = {
        "model.name": str(model_dir), "data.dataset": "synthetic-arith", "data.trunc_train": 48,
        "data.val_size": 8, "data.max_length": 96, "train.max_steps": 6, "train.batch_size": 8,
        "train.learning_rate": 5e-3, "train.logging_steps": 1, "train.warmup_ratio": 0.0,
        "train.report_to": "none", "train.lr_scheduler": "constant", "train.mixed_precision": "no",
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]
