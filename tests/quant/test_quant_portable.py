"""Outputs other tools can load: GPTQ/AWQ folders reload with plain transformers, HQQ is
safetensors with no pickle anywhere on a load path, and group sizes that would make a folder
unloadable are refused before any work."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from ftlab.paths import Workspace
from ftlab.quant.pipeline import QuantRequest, quantize
from ftlab.quant.registry import check_supported, complete_spec, load_quantized
from ftlab.kinds.quant import QuantizationSpec
from tiny_models import build_quant_tiny_model

REPO = Path(__file__).resolve().parents[2]
SMOLLM2_SHAPES = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
                  "num_attention_heads": 9, "head_dim": 64}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def test_no_unsafe_deserialization_in_ftlab():
    """No torch.load without weights_only=True, no pickle loads, no hqq pickle loaders in ftlab/."""
    problems = []
    for path in sorted((REPO / "ftlab").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, owner, name in _calls(tree):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and name == "load":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    problems.append(f"{where} torch.load without weights_only=True")
            if owner in ("pickle", "cloudpickle", "dill") and name in ("load", "loads"):
                problems.append(f"{where} {owner}.{name}")
            if name in ("from_quantized", "load_weights") and owner.startswith("AutoHQQ"):
                problems.append(f"{where} hqq's pickle loader {owner}.{name}")
    assert problems == []


def test_unsafe_call_detector_can_fail(tmp_path):
    code = "import torch, pickle\ntorch.load('x')\ntorch.load('y', weights_only=True)\npickle.loads(b'')\n"
    found = [(owner, name, node.lineno) for node, owner, name in _calls(ast.parse(code))
             if (owner, name) in (("torch", "load"), ("pickle", "loads"))]
    assert found == [("torch", "load", 2), ("torch", "load", 3), ("pickle", "loads", 4)]


@pytest.mark.parametrize("method", ["GPTQ", "AWQ"])
def test_group_size_must_divide_every_layer_width(method):
    from ftlab.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"{method} group_size=128 must divide every quantized layer's input "
                                          r"width \(hidden_size=576\).*--group-size 32 or 64"):
        check_supported(QuantizationSpec(method, bits=4, group_size=128), model_config=SMOLLM2_SHAPES)
    # Without --group-size the default fits the model: 128 -> 64 for SmolLM2's 576-wide layers.
    spec = complete_spec(QuantizationSpec(method), SMOLLM2_SHAPES)
    assert spec.group_size == 64 and spec.tag == f"{method}_w4_g64"
    check_supported(spec, model_config=SMOLLM2_SHAPES)
    assert complete_spec(QuantizationSpec(method), {"hidden_size": 1024, "intermediate_size": 4096}).group_size == 128
    # Gemma-style o_proj: heads x head_dim (4 x 256) differs from hidden_size and is checked too.
    assert complete_spec(QuantizationSpec(method), {"hidden_size": 640, "intermediate_size": 2048,
                                                    "num_attention_heads": 4, "head_dim": 256}).group_size == 128
    with pytest.raises(ConfigError, match=r"num_attention_heads\*head_dim=960"):
        check_supported(QuantizationSpec(method, bits=4, group_size=128),
                        model_config={"hidden_size": 1024, "num_attention_heads": 15, "head_dim": 64})


@pytest.fixture(scope="module")
def tiny_port(tmp_path_factory) -> Path:
    return build_quant_tiny_model(tmp_path_factory.mktemp("portable") / "Models" / "tiny-port")


@pytest.mark.parametrize("method", ["GPTQ", "AWQ"])
def test_gptq_awq_reload_with_plain_transformers(method, tiny_port):
    """The folder alone is enough: transformers' own loader (via its gptqmodel integration) gives the
    same logits on CPU as ftlab's loader."""
    import torch
    from transformers import AutoModelForCausalLM

    ws = Workspace(tiny_port.parent.parent)
    folder = quantize(QuantRequest(model=str(tiny_port), spec=QuantizationSpec(method), calib_dataset="synthetic-arith",
                                   calib_samples=8, measure_fidelity=False, max_length=96), ws)
    plain = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    names = {type(m).__name__ for m in plain.modules()}
    assert any("Awq" in n or "Quant" in n or "Linear" in n and n != "Linear" for n in names), names
    spec = QuantizationSpec.from_dict(json.loads((folder / "training_metadata.json").read_text())["quantization"])
    ours = load_quantized(folder, spec)
    # gptqmodel's torch.compile around the GPTQ de-quantization (TorchLinear.optimize, run at load) is
    # undone on CPU, where it is slower at every step measured (ftlab.quant.engines.gptq.eager_dequantization).
    quantized = [m for m in ours.modules() if hasattr(m, "qweight")]
    assert quantized, {type(m).__name__ for m in ours.modules()}
    assert not any("dequantize_weight" in vars(m) for m in quantized)
    if method == "GPTQ":
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear

        assert all(isinstance(m, TorchLinear) and m.optimized for m in quantized)
    ids = torch.tensor([[1, 5, 9, 12, 7, 3, 20, 40, 11, 2]])
    with torch.inference_mode():
        a, b = plain(ids).logits.float(), ours(ids).logits.float()
    # Different CPU kernels on the same packed weights: equal to bf16 rounding.
    assert (a - b).abs().max().item() < 0.05 * b.abs().max().item()
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_hqq_is_safetensors_and_reloads_exactly(tiny_port, tmp_path):
    """ftlab's HQQ file reproduces the in-memory quantized model bit for bit, holds no pickle, and an
    old pickle folder is refused with a one-line error."""
    import torch
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from ftlab.errors import FtlabError
    from ftlab.quant.engines.hqq import WEIGHTS_FILE, load_hqq, save_hqq

    model = AutoModelForCausalLM.from_pretrained(tiny_port, dtype=torch.float32)
    AutoHQQHFModel.quantize_model(model, quant_config=BaseQuantizeConfig(nbits=4, group_size=32),
                                  compute_dtype=torch.float32, device="cpu")
    out = tmp_path / "hqq"
    out.mkdir()
    save_hqq(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", WEIGHTS_FILE]
    with safe_open(str(out / WEIGHTS_FILE), framework="pt") as f:
        assert f.metadata()["format"] == "ftlab-hqq"
        keys = set(f.keys())
    assert "model.layers.0.self_attn.q_proj.W_q" in keys and "lm_head.weight" not in keys  # tied: stored once
    back = load_hqq(out, torch.float32, "cpu")
    ids = torch.tensor([[1, 5, 9, 12, 7, 3, 20, 40]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, back(ids).logits)
    assert back.lm_head.weight is back.model.embed_tokens.weight

    (out / WEIGHTS_FILE).unlink()
    (out / "qmodel.pt").write_bytes(b"not loaded")
    with pytest.raises(FtlabError, match="holds a pickle"):
        load_quantized(out, QuantizationSpec("HQQ", bits=4, group_size=32, compute_dtype="fp32"))


def test_damaged_hqq_header_is_a_clear_error(tmp_path):
    import torch
    from safetensors.torch import save_file

    from ftlab.errors import FtlabError
    from ftlab.quant.engines.hqq import WEIGHTS_FILE, load_hqq

    save_file({"x": torch.zeros(1)}, str(tmp_path / WEIGHTS_FILE),
              metadata={"format": "ftlab-hqq", "version": "1",
                        "layers": json.dumps({"a.q": {"nbits": "__import__('os')"}})})
    with pytest.raises(FtlabError, match="metadata 'nbits' is missing or not int"):
        load_hqq(tmp_path, torch.float32, "cpu")
