"""Every PTQ method on a tiny Llama on CPU: quantize -> save -> reload via load_quantized -> generate,
plus metadata, tags, the CLI end to end and the no-half-written-output guarantees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab.errors import FtlabError
from ftlab.paths import Workspace
from ftlab.quant.pipeline import QuantRequest, quantize
from ftlab.kinds.quant import QuantizationSpec, parse_quant_tag
from tiny_models import build_quant_tiny_model

SOURCE = "tiny-base"


@pytest.fixture(scope="module")
def quant_ws(tmp_path_factory) -> Workspace:
    """One workspace per module holding Models/tiny-base; each test writes differently named outputs."""
    root = tmp_path_factory.mktemp("ptq")
    build_quant_tiny_model(root / "Models" / SOURCE)
    return Workspace(root)


def _request(method: str, quant_ws: Workspace, **kw) -> QuantRequest:
    base = dict(model=str(quant_ws.models_dir / SOURCE), spec=QuantizationSpec(method), calib_dataset="synthetic-arith",
                calib_samples=8, fidelity_samples=4, max_length=96)
    base.update(kw)
    return QuantRequest(**base)


EXPECTED = {
    "GPTQ": ("GPTQ_w4_g64", {"bits": 4, "group_size": 64}),
    "AWQ": ("AWQ_w4_g64", {"bits": 4, "group_size": 64}),
    "HQQ": ("HQQ_w4_g64", {}),
    "BNB_NF4": ("BNB_nf4", {}),
    "BNB_INT8": ("BNB_int8", {}),
}


@pytest.mark.parametrize("method", list(EXPECTED))
def test_method_quantize_reload_generate(method, quant_ws):
    import torch

    from ftlab.models.sources import load_model
    from ftlab.schema import load_training_metadata

    tag, fields = EXPECTED[method]
    req = _request(method, quant_ws, spec=QuantizationSpec(method, **fields))
    folder = quantize(req, quant_ws)

    assert folder == quant_ws.models_dir / f"{SOURCE}_{tag}"
    assert not [p for p in quant_ws.models_dir.iterdir() if p.name.startswith(".staging")]
    for f in ("config.json", "tokenizer_config.json", "chat_template.jinja", "training_metadata.json", "README.md"):
        assert (folder / f).is_file(), f
    # Shared like every other result: safetensors alone would leave its weights file 0600.
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert all(m & 0o444 == 0o444 for m in modes.values()), modes
    meta = load_training_metadata(folder)
    spec = QuantizationSpec.from_dict(meta["quantization"])
    assert spec.tag == tag and parse_quant_tag(tag).method is spec.method
    assert meta["run_name"] == folder.name and meta["name_fields"]["quant_tag"] == tag
    ptq = meta["results"]["ptq"]
    assert ptq["quantization_time_s"] > 0 and ptq["peak_memory"]["peak_rss_mb"] > 0
    size = ptq["size_on_disk_bytes"]
    assert size["weights_before"] > 0 and size["weights_after"] > 0
    fid = ptq["fidelity"]
    assert fid["samples"] == 4 and fid["tokens"] > 4 and fid["answer_perplexity_before"] > 1
    # An untrained model's distributions are near uniform; quantization must not wreck them.
    assert 0 <= fid["kl_mean"] < 0.05 and fid["top1_agreement"] > 0.5
    assert abs(fid["whole_text_perplexity_after"] / fid["whole_text_perplexity_before"] - 1) < 0.5
    # GPTQ/AWQ compute in bf16: the cast's own share is measured separately.
    assert (ptq["fidelity_of_cast"] is not None) == (spec.compute_dtype != "fp32")
    if method in ("GPTQ", "AWQ"):
        assert ptq["calibration"]["samples"] == 8 and spec.calib_hash == ptq["calibration"]["hash"]
        assert spec.calib_dataset == "synthetic-arith"
    else:
        assert ptq["calibration"] is None and spec.calib_hash is None

    # Reload exactly as evaluation does: load_model dispatches on the metadata's PTQ spec.
    model, tok, src = load_model(str(folder))
    assert any("Linear" in type(m).__name__ and type(m).__name__ != "Linear" for m in model.modules()), \
        "reloaded model has no quantized linear layers"
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], tokenize=False,
                                     add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4


def test_reloaded_gptq_accepts_lora(quant_ws):
    """The reload uses gptqmodel's torch kernels, which have autograd, so LoRA can train on top."""
    from peft import LoraConfig, get_peft_model

    from ftlab.quant.registry import load_quantized

    folder = quant_ws.models_dir / f"{SOURCE}_GPTQ_w4_g64"
    if not folder.exists():
        quantize(_request("GPTQ", quant_ws, spec=QuantizationSpec("GPTQ", bits=4, group_size=64), measure_fidelity=False), quant_ws)
    spec = QuantizationSpec.from_dict(json.loads((folder / "training_metadata.json").read_text())["quantization"])
    model = load_quantized(folder, spec)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    import torch

    ids = torch.tensor([[1, 5, 9, 12, 7, 3]])
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)


def test_adapter_folder_is_merged_first(quant_ws, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftlab.schema import load_training_metadata

    base = quant_ws.models_dir / SOURCE
    adapter = tmp_path / "tiny-synthetic-arith_SFT_LoRa4_NoQuant"
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"]))
    peft_model.save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))

    folder = quantize(_request("HQQ", quant_ws, model=str(adapter), measure_fidelity=False), quant_ws)
    assert folder.name == "tiny-synthetic-arith_SFT_LoRa4_HQQ_w4_g64"
    meta = load_training_metadata(folder)
    assert meta["merged"] is True and meta["adapter_only"] is False and meta["source"]["adapter_merged"]


def test_history_keeps_source_metadata_and_requantizing_is_refused(quant_ws, tmp_path):
    from ftlab.schema import load_training_metadata, write_training_metadata

    src = tmp_path / "Models" / "tiny-synthetic-arith_SFT_NoPeft_NoQuant"
    src.parent.mkdir()
    import shutil

    shutil.copytree(quant_ws.models_dir / SOURCE, src)
    write_training_metadata(src, {"run_name": src.name, "method": "SFT", "dataset": {"name": "synthetic-arith"},
                                  "quantization": QuantizationSpec().to_dict(), "history": [],
                                  "results": {"train_loss": 1.5}, "merged": False})
    local_ws = Workspace(tmp_path)
    out = quantize(_request("BNB_NF4", local_ws, model=str(src), measure_fidelity=False), local_ws)
    meta = load_training_metadata(out)
    assert out.name == "tiny-synthetic-arith_SFT_NoPeft_BNB_nf4"
    assert meta["method"] == "SFT" and meta["dataset"]["name"] == "synthetic-arith"
    assert meta["history"][-1]["run_name"] == src.name and meta["history"][-1]["results"]["train_loss"] == 1.5
    with pytest.raises(FtlabError, match="already quantized"):
        quantize(_request("HQQ", local_ws, model=str(out)), local_ws)


def test_failed_quantization_leaves_nothing(quant_ws, monkeypatch):
    from ftlab.quant.registry import get_engine

    engine = get_engine("HQQ")

    def boom(job):
        (job.out_dir / "partial.bin").write_bytes(b"x")
        raise RuntimeError("simulated crash mid-quantization")

    monkeypatch.setattr(engine, "quantize", boom)
    req = _request("HQQ", quant_ws, spec=QuantizationSpec("HQQ", bits=2, group_size=32), measure_fidelity=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        quantize(req, quant_ws)
    assert not (quant_ws.models_dir / f"{SOURCE}_HQQ_w2_g32").exists()
    assert not [p for p in quant_ws.models_dir.iterdir() if p.name.startswith(".staging")]


def _cli(ws_root: Path, *args: str) -> int:
    from ftlab.cli import main

    return main(["--workdir", str(ws_root), "quantize", *args])


def test_cli_end_to_end(tmp_path, capsys, monkeypatch):
    from ftlab.schema import load_training_metadata

    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    build_quant_tiny_model(tmp_path / "Models" / SOURCE)
    common = ["--calib-dataset", "synthetic-arith", "--fidelity-samples", "4", "--max-length", "96", "--threads", "1"]
    rc = _cli(tmp_path, "--model", f"Models/{SOURCE}", "--method", "hqq", "--bits", "4", "--group-size", "32",
              "--lm-head", "bf16", *common)
    assert rc == 0
    out = tmp_path / "Models" / f"{SOURCE}_HQQ_w4_g32_headbf16"
    assert capsys.readouterr().out.strip().endswith(out.name)
    meta = load_training_metadata(out)
    assert meta["quantization"]["compute_dtype"] == "bf16" and meta["quantization"]["lm_head_dtype"] == "bf16"

    # Existing output: exit 2, the folder untouched; --overwrite replaces it.
    stamp = (out / "training_metadata.json").stat().st_mtime_ns
    assert _cli(tmp_path, "--model", f"Models/{SOURCE}", "--method", "HQQ", "--group-size", "32", "--lm-head", "bf16",
                *common) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "training_metadata.json").stat().st_mtime_ns == stamp
    assert _cli(tmp_path, "--model", f"Models/{SOURCE}", "--method", "HQQ", "--group-size", "32", "--lm-head", "bf16",
                "--overwrite", "--no-fidelity", *common) == 0
    assert (out / "training_metadata.json").stat().st_mtime_ns != stamp


@pytest.mark.parametrize("args, message", [
    (["--method", "BNB_NF4", "--bits", "3"], "bits=3 is not supported by BNB_NF4"),
    (["--method", "AWQ", "--lm-head", "fp32"], "AWQ cannot keep weights in fp32"),
    (["--method", "GPTQ", "--calib-samples", "0"], "--calib-samples=0 must be a positive integer"),
    (["--method", "gptqq"], "did you mean 'GPTQ'"),
    (["--method", "HQQ", "--calib-dataset", "no-such-task"], "unknown task"),
    (["--method", "QLORA"], "not a post-training method"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    models = tmp_path / "Models"
    models.mkdir()
    src = tmp_path / "src-model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))  # checks run before any load
    rc = _cli(tmp_path, "--model", str(src), "--calib-dataset", "synthetic-arith", *args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and err.startswith("error: ") and "Traceback" not in err
    assert list(models.iterdir()) == []


def test_cli_unsupported_architecture_before_loading(tmp_path, capsys):
    src = tmp_path / "bert-thing"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert _cli(tmp_path, "--model", str(src), "--method", "GPTQ", "--calib-dataset", "synthetic-arith") == 2
    assert "GPTQ does not support model_type 'bert'" in capsys.readouterr().err


def test_list_methods(tmp_path, capsys):
    assert _cli(tmp_path, "--list-methods") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["method"] for d in lines] == ["GPTQ", "AWQ", "HQQ", "BNB_NF4", "BNB_INT8", "GGUF"]
    hqq = next(d for d in lines if d["method"] == "HQQ")
    assert hqq["options"]["optimize"]["default"] is False and hqq["options"]["axis"]["choices"] == [0, 1]


@pytest.mark.slow
def test_gptqmodel_import_keeps_hf_home():
    """Importing gptqmodel bare sets HF_HOME to a temp folder; ftlab's import must not leak that."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HOME"}
    code = ("import os; from ftlab.quant.engines.gptq import import_gptqmodel; import_gptqmodel(); "
            "print('HF_HOME=' + str(os.environ.get('HF_HOME')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HF_HOME=None" in out.stdout


@pytest.mark.slow
def test_smollm2_hqq_keeps_quality(tmp_path):
    """Real weights: 4-bit HQQ of SmolLM2-135M-Instruct stays close to the fp32 model's perplexity."""
    import torch

    from ftlab.models.sources import load_model
    from ftlab.schema import load_training_metadata

    quant_ws = Workspace(tmp_path)
    req = QuantRequest(model="smollm2-135m-instruct", spec=QuantizationSpec("HQQ", bits=4, group_size=64),
                       calib_dataset="synthetic-arith", fidelity_samples=16, max_length=128)
    folder = quantize(req, quant_ws)
    assert folder.name == "SmolLM2-135M-Instruct-base_HQQ_w4_g64"
    fid = load_training_metadata(folder)["results"]["ptq"]["fidelity"]
    assert fid["whole_text_perplexity_before"] < 200, fid  # a trained model (an untrained one scores near 49k)
    assert fid["whole_text_perplexity_after"] / fid["whole_text_perplexity_before"] < 1.5, fid
    # Answer tokens: close to the source, far from a broken quantization (KL of several nats).
    assert fid["kl_mean"] < 0.5 and fid["top1_agreement"] > 0.7, fid
    model, tok, _ = load_model(str(folder))
    enc = tok(tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                      add_generation_prompt=True), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_tools_script_runs_the_same_command(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(repo / "tools" / "quantize.py"), "--workdir", str(tmp_path),
                          "--model", str(tmp_path / "missing"), "--method", "HQQ"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "does not exist" in out.stderr, out.stderr[-1000:]


def test_awq_group_size_must_divide_layer_widths(tmp_path, capsys):
    """SmolLM2's hidden size 576 is not a multiple of 128: AWQ would crash mid-run, so it is refused."""
    src = tmp_path / "smol-shaped"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536}))
    assert _cli(tmp_path, "--model", str(src), "--method", "AWQ", "--group-size", "128",
                "--calib-dataset", "synthetic-arith") == 2
    err = capsys.readouterr().err
    assert "AWQ group_size=128 must divide" in err and "hidden_size=576" in err and "--group-size 32 or 64" in err
