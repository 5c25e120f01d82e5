"""Every PEFT method, with and without a QLoRA base, trains a tiny model for real on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from ftlab.config import TrainRunConfig, load_config
from ftlab.schema import load_training_metadata
from ftlab.train.runner import run_training
from tiny_models import tiny_overrides

REQUIRED_KEYS = {"schema_version", "kind", "run_name", "name_fields", "base_model", "dataset", "method", "peft",
                 "adapter_only", "merged", "quantization", "history", "training_args", "results",
                 "environment", "created_at"}


def _cfg(model_dir, **extra) -> TrainRunConfig:
    return load_config(TrainRunConfig, None, tiny_overrides(model_dir, **extra))


def _check_common(folder, meta):
    assert REQUIRED_KEYS <= set(meta)
    assert meta["run_name"] == folder.name
    res = meta["results"]
    assert res["global_step"] == res["max_steps"]
    # loss must go down: last logged training loss and held-out loss below the first logged loss
    assert res["last_logged_loss"] < res["first_logged_loss"]
    assert res["eval_loss"] < res["first_logged_loss"]
    assert res["tokens"] > 0 and res["tokens_per_s"] > 0
    assert res["peak_memory"]["peak_rss_mb"] > 0
    tp = res["trainable_parameters"]
    assert 0 < tp["trainable"] <= tp["total"]
    for name in ("README.md", "resolved_config.yaml", "tokenizer_config.json", "chat_template.jinja",
                 "log_history.json"):
        assert (folder / name).is_file(), name
    assert not list(folder.parent.glob(".staging-*"))


def _logits(model, tok):
    ids = tok("What is 1 + 2?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", ["NoPeft", "LoRa", "rsLoRa", "DoRa", "VeRa"])
def test_method_trains_and_loads(method, tiny_model_dir, workspace):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"peft__method": method}
    if method == "VeRa":
        extra.update(peft__r=32, train__learning_rate=2e-2)
    if method == "NoPeft":
        extra.update(train__learning_rate=2e-3)
    folder = run_training(_cfg(tiny_model_dir, **extra), workspace)
    meta = load_training_metadata(folder)
    _check_common(folder, meta)
    tag = "NoPeft" if method == "NoPeft" else f"{method}{32 if method == 'VeRa' else 16}"
    assert folder.name == f"tiny-synthetic-arith_SFT_{tag}_NoQuant"
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template
    if method == "NoPeft":
        assert meta["peft"] is None and not meta["adapter_only"]
        assert meta["results"]["trainable_parameters"]["share"] == 1.0
        model = AutoModelForCausalLM.from_pretrained(folder)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        assert not torch.allclose(_logits(model, tok), _logits(base, tok))  # weights really changed
        return
    assert meta["adapter_only"] and not meta["merged"]
    assert meta["peft"]["method"] == method
    assert set(meta["peft"]["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}
    assert meta["results"]["trainable_parameters"]["share"] < 0.5
    adapter_cfg = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_model_dir)
    if method == "rsLoRa":
        assert adapter_cfg["use_rslora"] and meta["peft"]["scaling"] == pytest.approx(32 / 4)
    if method == "DoRa":
        assert adapter_cfg["use_dora"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = _logits(base, tok)
    model = PeftModel.from_pretrained(base, str(folder))
    assert not torch.allclose(_logits(model, tok), plain)  # the adapter is not a no-op


@pytest.mark.parametrize("method", ["LoRa", "rsLoRa", "DoRa", "VeRa"])
def test_qlora_4bit(method, tiny_model_dir, workspace):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"peft__method": method, "quant__method": "QLORA", "train__max_steps": 5}
    if method == "VeRa":
        extra.update(peft__r=32, train__learning_rate=2e-2)
    folder = run_training(_cfg(tiny_model_dir, **extra), workspace)
    meta = load_training_metadata(folder)
    _check_common(folder, meta)
    assert folder.name.endswith("_QLORA_w4_headbf16")
    q = meta["quantization"]
    assert q["method"] == "QLORA" and q["bits"] == 4 and q["double_quant"] is True
    assert q["extra"]["quant_type"] == "nf4" and q["compute_dtype"] == "bf16"
    assert meta["results"]["quantized_linear_layers"] == 14  # 7 linear layers x 2 blocks were 4-bit
    # The adapter trained on the 4-bit base loads onto the plain base and changes what it computes.
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = _logits(base, tok)
    model = PeftModel.from_pretrained(base, str(folder))
    assert model.peft_config["default"].peft_type.value == ("VERA" if method == "VeRa" else "LORA")
    assert not torch.allclose(_logits(model, tok), plain)


def test_qlora_8bit_merged_into_dequantized_base(tiny_model_dir, workspace):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = _cfg(tiny_model_dir, quant__method="QLORA", quant__bits=8, train__merge_after_train=True,
               train__max_steps=4)
    folder = run_training(cfg, workspace)
    meta = load_training_metadata(folder)
    assert folder.name.endswith("_QLORA_w8_headbf16")
    assert meta["merged"] and not meta["adapter_only"]
    assert meta["quantization"]["extra"]["merged_into"] == "dequantized base"
    assert not (folder / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert not any("bnb" in type(m).__module__ for m in model.modules())
    assert torch.isfinite(_logits(model, AutoTokenizer.from_pretrained(folder))).all()
    assert "de-quantised" in (folder / "README.md").read_text()


def test_lora_merge_matches_adapter(tiny_model_dir, workspace, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = run_training(_cfg(tiny_model_dir, train__merge_after_train=True, train__max_steps=3,
                                   peft__dropout=0.0), workspace)
    adapter_dir = run_training(_cfg(tiny_model_dir, train__max_steps=3, peft__dropout=0.0,
                                    train__output_dir="adapter"), workspace)
    meta = load_training_metadata(merged_dir)
    assert meta["merged"] and not meta["adapter_only"] and meta["peft"]["method"] == "LoRa"
    tok = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter_dir))
    # same seed and data: the merged weights reproduce base + adapter
    assert torch.allclose(_logits(merged, tok), _logits(adapted, tok), atol=1e-4)


def test_qkvo_preset_and_explicit_targets(tiny_model_dir, workspace):
    folder = run_training(_cfg(tiny_model_dir, peft__target_modules="qkvo", train__max_steps=2), workspace)
    meta = load_training_metadata(folder)
    assert meta["peft"]["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert meta["peft"]["requested_target_modules"] == ["qkvo"]


def test_compact_fused_head_matches_trl(tiny_model_dir):
    """ftlab's CPU head (labelled positions only) gives TRL's loss, log-probs, entropy and gradients."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from ftlab.train.fast_head import compact_fused_head

    torch.manual_seed(0)
    ids = torch.randint(0, 300, (3, 20))
    labels = ids.clone()
    labels[:, :14] = -100  # a prompt, as with completion-only loss
    labels[2, :] = -100  # one fully masked row

    def run(compact: bool):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        if compact:
            assert compact_fused_head(model)
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        return out, grad

    ref, ref_grad = run(False)
    got, got_grad = run(True)
    assert torch.allclose(got.loss, ref.loss, atol=1e-6)
    assert torch.allclose(got.log_probs, ref.log_probs, atol=1e-5)
    assert torch.allclose(got.entropy, ref.entropy, atol=1e-5)
    assert torch.equal(got.is_top1, ref.is_top1) and torch.equal(got.label_mask, ref.label_mask)
    assert torch.allclose(got_grad, ref_grad, atol=1e-6)
