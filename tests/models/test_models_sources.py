import json

import pytest
import torch

from ftlab.errors import FtlabError
from ftlab.models.sources import load_model, resolve_model


def test_scratch_tiny_has_llama_architecture():
    model, tok, src = load_model("scratch:tiny", seed=1)
    cfg = model.config
    assert src.kind == "scratch" and src.base_name == "scratch-tiny"
    assert cfg.model_type == "llama" and cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert cfg.hidden_act == "silu" and cfg.vocab_size == len(tok)
    out = model(**tok("hello", return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)
    again, _, _ = load_model("scratch:tiny", seed=1)
    assert torch.equal(next(model.parameters()), next(again.parameters()))  # seeded init


def test_local_folder_and_adapter_folder(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok, _ = load_model("scratch:tiny")
    full = tmp_path / "full"
    model.save_pretrained(full)
    tok.save_pretrained(full)
    m2, t2, src = load_model(str(full))
    assert src.kind == "local" and not src.adapter
    assert torch.equal(next(model.parameters()), next(m2.parameters()))
    peft_model = get_peft_model(m2, LoraConfig(r=2, target_modules=["q_proj"]))
    ad = tmp_path / "adapter"
    peft_model.save_pretrained(ad)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(full)
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    m3, t3, src3 = load_model(str(ad))
    from peft import PeftModel

    assert src3.adapter and isinstance(m3, PeftModel)
    assert t3.pad_token is not None


@pytest.mark.parametrize("ref,match", [
    ("", "empty"), ("./nope", "does not exist"), ("scratch:huge", "unknown scratch preset"),
    ("justaword", "not a folder"),
])
def test_bad_refs(ref, match):
    with pytest.raises(FtlabError, match=match):
        resolve_model(ref)


def test_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(FtlabError, match="no config.json"):
        resolve_model(str(tmp_path / "m"))


def test_hub_id_resolves_without_network():
    src = resolve_model("Qwen/Qwen3-0.6B")
    assert src.kind == "hub" and src.base_name == "Qwen3-0.6B"
    with pytest.raises(FtlabError, match="hub"):
        load_model("Qwen/Qwen3-0.6B")  # offline in tests: a clear error, not a traceback


@pytest.mark.slow
def test_builtin_smollm2_generates():
    model, tok, src = load_model("smollm2-135m-instruct")
    assert src.base_name == "SmolLM2-135M-Instruct" and tok.chat_template
    assert getattr(model, "hf_quantizer", None) is None or model.config.to_dict().get("quantization_config") is None
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_builtin_gemma_converts_with_turn_template():
    model, tok, src = load_model("gemma-3-270m", dtype="fp32")
    assert src.base_name == "gemma-3-270m"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<start_of_turn>model\n") and "<start_of_turn>user\nHi<end_of_turn>" in text
    out = model(**tok("The capital of France is", return_tensors="pt"))
    assert torch.isfinite(out.logits).all()


@pytest.mark.slow
def test_gguf_file_source(tmp_path):
    from ftlab.models.builtins import _locate_smollm2

    gguf = _locate_smollm2()
    src = resolve_model(str(gguf))
    assert src.kind == "gguf" and src.base_name == "SmolLM2-135M-Instruct.Q4-1"
