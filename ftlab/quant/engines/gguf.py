"""GGUF (llama.cpp / Ollama) as a post-training method: one self-contained `model.gguf`.

The file is written with the `gguf` package (llama.cpp's own Python writer): hyper-parameters,
the tokenizer (tokens, types, merges, special ids) and the chat template inside, tensors named and
laid out as llama.cpp's converter does (Q/K rows permuted for its rotary kernel; transformers undoes
that when it reads the file). Types the `gguf` package can quantize are written directly (f16,
bf16, q8_0, q5_0, q5_1, q4_0, q4_1); K-quants go through llama.cpp's `llama-quantize` binary from
an f16 file, found by `ftlab.quant.llama_cpp.find_tool` ($FTLAB_LLAMA_CPP, PATH, or ftlab's cache where
`python tools/build_llama_cpp.py` builds it). 1-D tensors (norms) stay f32, as in llama.cpp. Beside
it: an Ollama `Modelfile`.

Reloading goes through transformers (`from_pretrained(folder, gguf_file="model.gguf")`), which
de-quantizes to fp32: the figures ftlab measures are those of the GGUF's weights, while llama.cpp's
kernels also round activations (q8_1) in quantized matmuls.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlab.errors import FtlabError
from ftlab.io import atomic_write_text
from ftlab.kinds.quant import GGUF_TYPES, QuantizationSpec
from ftlab.models.builtins import BUILTIN_MODELS, drop_gguf_quantizer
from ftlab.models.integrity import quiet_loading
from ftlab.quant import llama_cpp
from ftlab.quant.engine_api import Capabilities, QuantEngine, QuantJob, register_engine

log = logging.getLogger(__name__)

GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
LLAMA_QUANTIZE = "llama-quantize"
ARCHITECTURES = ("llama",)  # config.json model_type values written as llama.cpp's "llama" arch


@dataclass(frozen=True)
class GgufType:
    name: str  # as users type it and as the tag carries it: q4_0, q4_k_m (ftlab.kinds.quant.GGUF_TYPES)
    bits: int
    ggml: str | None  # gguf.GGMLQuantizationType member the gguf package writes; None: llama-quantize
    quantize_arg: str = ""  # llama-quantize's type name


# How each type of ftlab.kinds.quant.GGUF_TYPES (its names and bits, read by run-name tags) is written:
# (gguf package type, llama-quantize type).
_WRITERS = {"f16": ("F16", ""), "bf16": ("BF16", ""), "q8_0": ("Q8_0", ""), "q5_1": ("Q5_1", ""), "q5_0": ("Q5_0", ""),
            "q4_1": ("Q4_1", ""), "q4_0": ("Q4_0", ""), "q6_k": (None, "Q6_K"), "q5_k_m": (None, "Q5_K_M"),
            "q5_k_s": (None, "Q5_K_S"), "q4_k_m": (None, "Q4_K_M"), "q4_k_s": (None, "Q4_K_S"),
            "q3_k_l": (None, "Q3_K_L"), "q3_k_m": (None, "Q3_K_M"), "q3_k_s": (None, "Q3_K_S"), "q2_k": (None, "Q2_K")}
TYPES = {name: GgufType(name, bits, *_WRITERS[name]) for name, bits in GGUF_TYPES}
DEFAULT_BY_BITS = {16: "f16", 8: "q8_0", 5: "q5_0", 4: "q4_0", 6: "q6_k", 3: "q3_k_m", 2: "q2_k"}
# Below 8 bits the (tied) embedding / output head is kept at q8_0: llama-quantize keeps the output
# head at q6_k for these types, which the gguf package cannot write.
HEAD_TYPE_BELOW_8_BITS = "Q8_0"


def gguf_type(spec: QuantizationSpec) -> GgufType:
    name = (spec.extra or {}).get("gguf_type")
    if name not in TYPES:
        raise FtlabError(f"GGUF type {name!r} is not one of {', '.join(TYPES)}")
    return TYPES[name]


def llama_quantize_problem() -> str | None:
    if llama_cpp.find_tool(LLAMA_QUANTIZE):
        return None
    return (f"K-quant GGUF types need llama.cpp's `{LLAMA_QUANTIZE}`, which was not found: "
            f"{llama_cpp.how_to_get()}; without it use " + ", ".join(n for n, t in TYPES.items() if t.ggml))


# ---------------------------------------------------------------------------------------------
# tensors


def _permute_for_rope(w, n_head: int):
    """HF stores each head's rotary halves as [first half; second half]; llama.cpp's kernel expects
    them interleaved pairwise. Rows of each head are reordered (transformers reverses this on load)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(name: str, array, ggml: str, gguf_mod):
    """(data, raw dtype or None, stored type name) for one tensor; rows that do not split into the
    type's blocks stay f16 (recorded), norms and biases stay f32."""
    import numpy as np  # lazy: numpy takes 0.18 s

    qtype = getattr(gguf_mod.GGMLQuantizationType, ggml)
    if array.ndim < 2:
        return array.astype(np.float32), None, "F32"
    if ggml == "F16":
        return array.astype(np.float16), None, "F16"
    block = gguf_mod.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        log.info("GGUF: %s rows of %d do not split into %s blocks of %d; kept f16", name, array.shape[-1], ggml, block)
        return array.astype(np.float16), None, "F16"
    return gguf_mod.quants.quantize(array.astype(np.float32), qtype), qtype, ggml


def _write_tensors(writer, model, config, ggml: str, gguf_mod) -> dict[str, str]:
    n_blocks = config.num_hidden_layers
    names = gguf_mod.get_tensor_name_map(gguf_mod.MODEL_ARCH.LLAMA, n_blocks)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    stored = {}
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise FtlabError(f"GGUF export: no llama.cpp name for tensor {hf_name}; this architecture is not supported")
        w = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            w = _permute_for_rope(w, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            w = _permute_for_rope(w, config.num_key_value_heads)
        is_head = name in ("token_embd.weight", "output.weight") and (tied or name == "output.weight")
        kind = HEAD_TYPE_BELOW_8_BITS if is_head and ggml not in ("F16", "BF16", "Q8_0") else ggml
        data, raw, stored[name] = _encode(name, w, kind, gguf_mod)
        writer.add_tensor(name, data, raw_dtype=raw)
    return stored


# ---------------------------------------------------------------------------------------------
# tokenizer and hyper-parameters


def _token_types(tokenizer, n_vocab: int, gguf_mod) -> tuple[list[str], list[int]]:
    TT = gguf_mod.TokenType
    added = tokenizer.get_added_vocab()
    special = set(tokenizer.all_special_tokens)
    decoder = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens, types = [], []
    for i in range(n_vocab):
        if i >= len(decoder) or decoder[i] is None:
            tokens.append(f"[PAD{i}]")
            types.append(TT.UNUSED)
            continue
        tok = decoder[i]
        tokens.append(tok)
        if tok in added:
            types.append(TT.CONTROL if tok in special or added_is_special(tokenizer, tok) else TT.USER_DEFINED)
        else:
            types.append(TT.NORMAL)
    return tokens, types


def added_is_special(tokenizer, tok: str) -> bool:
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if added.content == tok:
            return bool(added.special)
    return False


def _pre_tokenizer(tokenizer, run_name: str) -> str:
    """llama.cpp identifies a BPE pre-tokenizer by name; reuse the name in the built-in GGUF this
    model was fine-tuned from (its run name starts with the built-in's base name, and the
    vocabularies match), else llama.cpp's "default"."""
    from gguf import GGUFReader  # lazy: gguf takes 0.3 s (numpy)


    vocab = tokenizer.get_vocab()
    for name, builtin in BUILTIN_MODELS.items():
        if not run_name.startswith(builtin.base_name):
            continue
        try:
            reader = GGUFReader(str(builtin.locate()))
        except Exception:  # an uninstalled built-in is simply not a candidate
            continue
        fields = reader.fields
        model = bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() if "tokenizer.ggml.model" in fields else ""
        tokens = fields.get("tokenizer.ggml.tokens")
        if model != "gpt2" or tokens is None or len(tokens.data) != len(vocab):
            continue
        first = [bytes(tokens.parts[i]).decode("utf-8", "replace") for i in tokens.data[:2000]]
        if all(vocab.get(t) == k for k, t in enumerate(first)) and "tokenizer.ggml.pre" in fields:
            return bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode()
    if _is_plain_gpt2_byte_level(tokenizer):
        return "gpt-2"
    log.warning("GGUF export: tokenizer matches no known llama.cpp pre-tokenizer; writing 'default'")
    return "default"


def _is_plain_gpt2_byte_level(tokenizer) -> bool:
    """A lone ByteLevel pre-tokenizer with GPT-2's split regex and no prefix space: exactly llama.cpp's
    "gpt-2" pre-tokenizer. ("default" splits digits in threes and punctuation apart, so llama.cpp would
    read numbers as other tokens than transformers.)"""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if pre is None:
        return False
    try:
        state = json.loads(pre.__getstate__())
    except Exception:  # a pre-tokenizer that does not serialise is not a known one
        return False
    return state.get("type") == "ByteLevel" and state.get("use_regex", True) and not state.get("add_prefix_space")


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _write_header(writer, config, tokenizer, source_dir: Path, gguf_mod, gtype: GgufType, name: str) -> str:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(getattr(gguf_mod.LlamaFileType, "MOSTLY_" + gtype.ggml))
    writer.add_tokenizer_model("gpt2")
    pre = _pre_tokenizer(tokenizer, name)
    writer.add_tokenizer_pre(pre)
    tokens, types = _token_types(tokenizer, config.vocab_size, gguf_mod)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # Merges, bos/eos/unk/pad ids, add_bos and the chat template, read from the tokenizer files.
    gguf_mod.SpecialVocab(source_dir, load_merges=True, n_vocab=config.vocab_size).add_to_gguf(writer)
    return pre


def model_problems_of(config: dict) -> list[str]:
    cfg = config.get("text_config") or config
    problems = []
    scaling = (cfg.get("rope_parameters") or {}).get("rope_type", "default") if isinstance(cfg.get("rope_parameters"), dict) \
        else ((cfg.get("rope_scaling") or {}).get("rope_type") or (cfg.get("rope_scaling") or {}).get("type") or "default")
    if scaling not in ("default", None):
        problems.append(f"GGUF export does not write rope scaling ({scaling}) yet; export a model without it")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        problems.append("GGUF export of llama models with attention/MLP biases is not supported")
    return problems


# ---------------------------------------------------------------------------------------------
# Ollama


def _chat_turns(tokenizer) -> tuple[str | None, str | None]:
    """(Ollama TEMPLATE, default SYSTEM) for ChatML templates (SmolLM2, Qwen); (None, None) for
    others, which Ollama then takes from the GGUF's chat template."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" not in template:
        return None, None
    go = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
          "{{ end }}<|im_start|>assistant\n")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    m = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", rendered, flags=re.S)
    return go, (m.group(1) if m else None)


def modelfile(tokenizer) -> str:
    template, system = _chat_turns(tokenizer)
    lines = ["# Ollama: ollama create <name> -f Modelfile", f"FROM ./{GGUF_FILE}"]
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# The chat template is inside model.gguf (tokenizer.chat_template).")
    if system:
        lines.append(f'SYSTEM """{system}"""')
    stops = {t for t in (tokenizer.eos_token, "<|im_end|>" if template else None) if t}
    lines += [f'PARAMETER stop "{s}"' for s in sorted(stops)]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def export_gguf(source_dir: Path, out_file: Path, tokenizer, gtype: GgufType, name: str) -> dict:
    """Writes `out_file` from a plain transformers folder; returns what was stored."""
    import gguf as gguf_mod  # lazy: gguf takes 0.3 s (numpy)
    import torch  # lazy: torch takes 3.3 s to import
    from transformers import AutoConfig, AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)

    config = AutoConfig.from_pretrained(source_dir)
    if config.model_type not in ARCHITECTURES:
        raise FtlabError(f"GGUF export supports model_type {', '.join(ARCHITECTURES)}, not {config.model_type!r}")
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32, use_safetensors=True)
    direct = gtype if gtype.ggml else TYPES["f16"]
    target = out_file if gtype.ggml else out_file.with_name("f16-" + out_file.name)
    writer = gguf_mod.GGUFWriter(str(target), "llama")
    pre = _write_header(writer, config, tokenizer, source_dir, gguf_mod, direct, name)
    stored = _write_tensors(writer, model, config, direct.ggml, gguf_mod)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    del model
    if not gtype.ggml:
        _llama_quantize(target, out_file, gtype)
        target.unlink()
        stored = {"all": f"{gtype.quantize_arg} (llama-quantize)"}

    return {"tensor_types": dict(Counter(stored.values())), "pre_tokenizer": pre}


def _llama_quantize(src: Path, dst: Path, gtype: GgufType) -> None:
    exe = llama_cpp.find_tool(LLAMA_QUANTIZE)
    if exe is None:
        raise FtlabError(llama_quantize_problem())
    # llama-quantize logs every tensor; captured, not shown (its last line goes into the error).
    out = llama_cpp.run_quiet([str(exe), str(src), str(dst), gtype.quantize_arg])
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FtlabError(f"{LLAMA_QUANTIZE} failed for {gtype.name} (exit {out.returncode}): {tail[0]}")


@register_engine
class GgufEngine(QuantEngine):
    name = "GGUF"
    backend = "gguf"
    # Block sizes are fixed by each type (32 for q4_0..q8_0, 256 for K-quants): no group-size knob.
    # Reloaded through transformers, which de-quantizes to fp32.
    caps = Capabilities(bits=(2, 3, 4, 5, 6, 8, 16), default_bits=8, architectures=ARCHITECTURES, dtypes=("fp32",),
                        default_dtype="fp32", dtype_hint="transformers de-quantizes GGUF weights to fp32")
    bundles_tokenizer = True
    recorded_extra = ("gguf_type", "tensor_types", "pre_tokenizer")

    def complete(self, spec: QuantizationSpec) -> None:
        super().complete(spec)
        name = (spec.extra or {}).get("gguf_type") or DEFAULT_BY_BITS.get(spec.bits or self.caps.default_bits)
        if name not in TYPES:
            raise FtlabError(f"GGUF type {name!r} is not one of {', '.join(TYPES)}")
        if spec.bits is not None and TYPES[name].bits != spec.bits and (spec.extra or {}).get("gguf_type"):
            raise FtlabError(f"GGUF type {name} stores {TYPES[name].bits} bits, not bits={spec.bits}; leave --bits out")
        spec.extra = {**(spec.extra or {}), "gguf_type": name}
        spec.bits = TYPES[name].bits
        if TYPES[name].ggml not in (None, "F16", "BF16"):
            spec.group_size = None  # the block size is part of the type

    def model_problems(self, spec: QuantizationSpec, config: dict) -> list[str]:
        problems = model_problems_of(config)
        t = TYPES.get((spec.extra or {}).get("gguf_type"))
        if t is not None and t.ggml is None and (p := llama_quantize_problem()):
            problems.append(p)
        return problems

    def quantize(self, job: QuantJob) -> None:
        t = gguf_type(job.spec)
        info = export_gguf(job.source_dir, job.out_dir / GGUF_FILE, job.tokenizer, t, job.name or job.source_dir.name)
        job.spec.extra = {**job.spec.extra, **info}

        atomic_write_text(job.out_dir / MODELFILE, modelfile(job.tokenizer))

    def load(self, folder: Path, spec: QuantizationSpec, dtype: Any = None, device_map: Any = None):
        import torch  # lazy: torch takes 3.3 s to import
        from transformers import AutoModelForCausalLM  # lazy: transformers takes 1.3 s (and torch)


        if not (folder / GGUF_FILE).is_file():
            raise FtlabError(f"GGUF folder {folder} has no {GGUF_FILE}; re-run ftlab export --format gguf")
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE, dtype=torch.float32)
        drop_gguf_quantizer(model)
        return model
