"""`ftlab export --format gguf`: a self-contained model.gguf (tokenizer and chat template inside),
an Ollama Modelfile and metadata; transformers reloads it with logits within each type's error,
and ftlab evaluates the folder like any other model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftlab.paths import Workspace
from ftlab.schema import load_training_metadata
from tiny_models import build_peaked_quant_tiny_model

SOURCE = "tinyg-base"


@pytest.fixture(scope="module")
def quant_ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("gguf")
    build_peaked_quant_tiny_model(root / "Models" / SOURCE)
    return Workspace(root)


def _export(quant_ws: Workspace, *args: str) -> int:
    from ftlab.cli import main

    return main(["--workdir", str(quant_ws.root), "export", "--model", f"Models/{SOURCE}", "--fidelity-dataset",
                 "synthetic-arith", "--fidelity-samples", "8", "--max-length", "128", "--threads", "1", *args])


@pytest.fixture(scope="module")
def exported(quant_ws) -> dict[str, Path]:
    out = {}
    for t in ("f16", "q8_0", "q4_0"):
        assert _export(quant_ws, "--type", t) == 0
        out[t] = quant_ws.models_dir / f"{SOURCE}_GGUF_{t}"
    return out


def test_folder_contents_metadata_and_fidelity_per_type(exported, capsys):
    fid = {}
    for t, folder in exported.items():
        assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "README.md", "model.gguf",
                                                            "training_metadata.json"]
        meta = load_training_metadata(folder)
        q = meta["quantization"]
        assert q["method"] == "GGUF" and q["extra"]["gguf_type"] == t and meta["name_fields"]["quant_tag"] == f"GGUF_{t}"
        fid[t] = meta["results"]["ptq"]["fidelity"]
    # Round trip through transformers' GGUF reader: f16 is exact to half precision, q8_0 close,
    # q4_0 clearly lossy; a wrong Q/K layout or tensor name would wreck all three.
    assert fid["f16"]["kl_mean"] < 1e-5 and fid["f16"]["top1_agreement"] == 1.0
    assert fid["f16"]["kl_mean"] < fid["q8_0"]["kl_mean"] < 1e-3
    assert fid["q8_0"]["kl_mean"] < fid["q4_0"]["kl_mean"] < 0.2
    assert fid["q4_0"]["top1_agreement"] > 0.5


def test_tensor_types_tokenizer_and_chat_template_inside(exported, quant_ws):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from ftlab.models.sources import load_tokenizer, resolve_model

    reader = GGUFReader(str(exported["q4_0"] / "model.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q4_0"
    assert types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types  # tied head
    source_tok = load_tokenizer(resolve_model(str(quant_ws.models_dir / SOURCE)), quant_ws)
    gguf_tok = AutoTokenizer.from_pretrained(str(exported["q4_0"]), gguf_file="model.gguf")
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    assert gguf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        source_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    for text in ("What is 123 + 456?\n\nThe answer is \\boxed{579}.<|im_end|>\n", "user assistant system"):
        assert gguf_tok(text, add_special_tokens=False)["input_ids"] == source_tok(text, add_special_tokens=False)["input_ids"]
    modelfile = (exported["q4_0"] / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and "<|im_start|>{{ .Role }}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


def test_k_quant_without_llama_quantize_is_one_line_error(quant_ws, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/nonexistent")  # nor on PATH,
    monkeypatch.delenv("FTLAB_LLAMA_CPP", raising=False)  # nor named,
    monkeypatch.setenv("FTLAB_CACHE", str(tmp_path / "empty-cache"))  # nor built into the cache
    assert _export(quant_ws, "--type", "q4_k_m") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "llama-quantize" in err and err.count("\n") == 1
    assert "tools/build_llama_cpp.py" in err  # how to get it
    assert not (quant_ws.models_dir / f"{SOURCE}_GGUF_q4_k_m").exists()


@pytest.mark.parametrize("args, message", [(["--type", "q9_9"], "--type 'q9_9' is not a GGUF type"),
                                           (["--format", "onnx"], "--format 'onnx' is not supported")])
def test_bad_export_arguments(quant_ws, capsys, args, message):
    assert _export(quant_ws, *args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_orchestrator_evaluates_gguf_folders(exported, quant_ws):
    """Discovery finds the GGUF folder by its metadata and the evaluator loads model.gguf."""
    from ftlab.orchestrate.discovery import EvalOptions
    from ftlab.orchestrate.sweep import Sweep, SweepSettings

    report = Sweep(quant_ws, EvalOptions(datasets=["synthetic-arith"], limit=2),
                   SweepSettings(threads=1, only=[f"{SOURCE}_GGUF_q8_0"])).run()
    assert [o.model for o in report.evaluated] == [f"{SOURCE}_GGUF_q8_0"], report
    doc = json.loads((quant_ws.metrics_dir / f"{SOURCE}_GGUF_q8_0.json").read_text())
    assert doc["status"] == "complete" and doc["datasets"]["synthetic-arith"]["n"] == 2
    assert doc["model"]["metadata"]["quantization"]["method"] == "GGUF"

