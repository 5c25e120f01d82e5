"""PEFT kinds are single registered definitions; the initialisation kinds (PiSSA, OLoRa, LoftQ) do
what peft documents: base + adapter equals the original model at step 0, and the saved adapter
applies to the original base."""

from __future__ import annotations

import json

import pytest
import torch

from ftlab.config import TrainRunConfig, describe_config, load_config
from ftlab.errors import ConfigError, FtlabError
from ftlab.naming import build_run_name, parse_run_name, peft_tag
from ftlab.schema import load_training_metadata
from ftlab.train.runner import run_training
from ftlab.train.peft_methods import PEFT_KINDS, build_peft_config
from tiny_models import tiny_overrides


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _adapted(method: str, model):
    from peft import get_peft_model

    cfg = load_config(TrainRunConfig, overrides=[f"peft.method={method}", "peft.r=4", "peft.dropout=0"]).peft
    peft_config, _ = build_peft_config(cfg, model)
    return get_peft_model(model, peft_config).eval()


IDS = torch.tensor([[1, 5, 9, 13, 2, 40, 7]])


@pytest.mark.parametrize("method", ["PiSSA", "OLoRa"])
def test_init_moves_weight_into_adapter_and_keeps_the_output(method):
    import copy

    original = _tiny_llama()
    reference = copy.deepcopy(original)
    with torch.no_grad():
        expected = reference(input_ids=IDS).logits
    model = _adapted(method, original)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    # the decomposition moved part of each weight out of the base ...
    before = reference.model.layers[0].self_attn.q_proj.weight
    assert (q.base_layer.weight - before).abs().max() > 1e-3
    assert q.lora_B["default"].weight.abs().max() > 0  # B is not the zero of plain LoRA
    # ... into the adapter, so base' + adapter is still the original model
    with torch.no_grad():
        got = model(input_ids=IDS).logits
    assert torch.allclose(got, expected, atol=1e-4)
    # and with the adapter off, the residual base alone is a different model
    with model.disable_adapter(), torch.no_grad():
        assert not torch.allclose(model(input_ids=IDS).logits, expected, atol=1e-3)


def test_plain_lora_leaves_the_base_alone():
    import copy

    original = _tiny_llama()
    before = copy.deepcopy(original.model.layers[0].self_attn.q_proj.weight)
    model = _adapted("LoRa", original)
    assert torch.equal(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, before)


@pytest.mark.parametrize("method", ["PiSSA", "OLoRa"])
def test_saved_adapter_applies_to_the_original_base(method, tiny_model_dir, workspace):
    """Trained on the residual base, the adapter is saved converted (rank 2r), so plain peft on the
    untouched base reproduces the trained model (the merged run of the same seed)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = {"peft__method": method, "peft__dropout": 0.0, "train__max_steps": 3}
    adapter_dir = run_training(load_config(TrainRunConfig, None, tiny_overrides(tiny_model_dir, **common)), workspace)
    merged_dir = run_training(load_config(TrainRunConfig, None, tiny_overrides(
        tiny_model_dir, train__merge_after_train=True, train__output_dir="merged", **common)), workspace)
    assert adapter_dir.name == f"tiny-synthetic-arith_SFT_{method}16_NoQuant"
    meta = load_training_metadata(adapter_dir)
    assert meta["peft"]["method"] == method and meta["peft"]["init_lora_weights"] == method.lower()
    assert "rank 2r" in meta["peft"]["saved_as"]
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 32
    assert "| adapter saved as | LoRA adapter of rank 2r" in (adapter_dir / "README.md").read_text()

    tok = AutoTokenizer.from_pretrained(adapter_dir)
    ids = tok("What is 1 + 2?", return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, str(adapter_dir))(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)(input_ids=ids).logits
    assert not torch.allclose(adapted, plain, atol=1e-3)  # training changed the model
    assert torch.allclose(adapted, merged, atol=1e-4)


def test_loftq_refused_on_cpu_before_anything_loads(tiny_model_dir, workspace):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = load_config(TrainRunConfig, None, tiny_overrides(tiny_model_dir, peft__method="LoftQ",
                                                           train__merge_after_train=True))
    with pytest.raises(FtlabError, match="peft.method=LoftQ needs a CUDA GPU: .*cuda/xpu only"):
        run_training(cfg, workspace)
    assert not workspace.models_dir.exists() or not any(workspace.models_dir.iterdir())


@pytest.mark.gpu
def test_loftq_init_approximates_the_weight_better_than_its_quantization():
    from peft import get_peft_model

    original = _tiny_llama().cuda()
    before = original.model.layers[0].self_attn.q_proj.weight.detach().clone()
    cfg = load_config(TrainRunConfig, overrides=["peft.method=LoftQ", "peft.r=8", "train.merge_after_train=true"]).peft
    peft_config, _ = build_peft_config(cfg, original)
    q = get_peft_model(original, peft_config).base_model.model.model.layers[0].self_attn.q_proj
    quantized = q.base_layer.weight.detach()
    assert not torch.equal(quantized, before)  # the base now holds the 4-bit approximation
    update = q.scaling["default"] * q.lora_B["default"].weight @ q.lora_A["default"].weight
    assert (before - quantized - update).norm() < (before - quantized).norm()


@pytest.mark.parametrize("overrides, match", [
    (["peft.method=PiSSA", "quant.method=QLORA"], "cannot train peft.method=PiSSA .*full-precision weights only"),
    (["peft.method=LoftQ", "quant.method=QLORA", "train.merge_after_train=true"], "cannot train peft.method=LoftQ"),
    (["peft.method=LoftQ"], "set train.merge_after_train=true"),
    (["peft.method=NoPeft", "quant.method=QLORA"], "QLORA needs an adapter"),
    (["train.warmup_ratio=1.5"], r"warmup_ratio=1.5 must be in \[0, 1\)"),
    (["train.eval_steps=5", "data.val_size=0"], "needs a held-out split"),
    (["model.name=scratch:tiny", "train.method=PT"], "trains every weight of a random model"),
])
def test_model_free_rules_fail_in_config_validation(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainRunConfig, overrides=overrides)


def test_rules_collected_at_once():
    with pytest.raises(ConfigError) as ei:
        load_config(TrainRunConfig, overrides=["peft.method=LoftQ", "train.warmup_ratio=-1",
                                               "train.early_stopping_patience=2"])
    text = str(ei.value)
    assert "merge_after_train" in text and "warmup_ratio" in text and "needs train.eval_steps" in text


def test_every_kind_in_validation_help_and_names():
    with pytest.raises(ConfigError) as ei:
        load_config(TrainRunConfig, overrides=["peft.method=Bogus"])
    doc = next(line for line in describe_config(TrainRunConfig) if line.startswith("peft.method "))
    for name in PEFT_KINDS.names():
        assert name in str(ei.value) and name in doc


@pytest.mark.parametrize("method", ["PiSSA", "OLoRa", "LoftQ", "LoRa", "rsLoRa", "DoRa", "VeRa"])
def test_tag_round_trip(method):
    tag = peft_tag(method, 16)
    assert tag == f"{method}16"
    name = build_run_name("Qwen/Qwen3-0.6B", "openmath", "SFT", tag).render()
    assert name == f"Qwen3-0.6B-openmath_SFT_{method}16_NoQuant"
    assert parse_run_name(name).peft == tag and parse_run_name(name).render() == name


@pytest.mark.parametrize("bad", ["X-arc_SFT_PiSSA_NoQuant", "X-arc_SFT_NoPeft8_NoQuant", "X-arc_SFT_Pissa16_NoQuant",
                                 "X-arc_SFT_Foo16_NoQuant"])
def test_bad_peft_fields_rejected(bad):
    with pytest.raises(FtlabError, match="bad PEFT part"):
        parse_run_name(bad)
