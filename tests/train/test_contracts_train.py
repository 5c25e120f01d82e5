"""Contracts of the training area defined once: the model-metadata document (one builder, checked on
every write) and the dtype rule (one function; `auto` per role)."""

from __future__ import annotations

import pytest
import torch

from ftlab.errors import FtlabError
from ftlab.schema import (MODEL_METADATA_KEYS, TRAINING_METADATA_FILE, load_training_metadata, model_metadata,
                          model_metadata_problems, write_model_metadata)


def _doc(**over):
    meta = model_metadata(run_name="tiny-arc_SFT_LoRa16_NoQuant", base_model={"ref": "x"},
                          quantization={"method": "NoQuant"}, results={})
    meta.update(over)
    return meta


def test_builder_fills_every_key_and_parses_the_name(tmp_path):
    meta = _doc()
    assert set(MODEL_METADATA_KEYS) <= set(meta) and model_metadata_problems(meta) == []
    assert meta["name_fields"]["peft"] == "LoRa16" and meta["kind"] == "model"
    assert model_metadata(run_name="not a run name", base_model={}, quantization={"method": "NoQuant"},
                          results={})["name_fields"] is None
    write_model_metadata(tmp_path, meta)
    assert load_training_metadata(tmp_path)["run_name"] == "tiny-arc_SFT_LoRa16_NoQuant"


@pytest.mark.parametrize("change, problem", [
    ({"merged": "yes"}, "merged is a str"),
    ({"quantization": {"method": "NOPE"}}, "quantization: unknown quantization method"),
    ({"results": None}, "results is a NoneType"),
])
def test_malformed_document_is_not_written(change, problem, tmp_path):
    with pytest.raises(FtlabError, match=problem):
        write_model_metadata(tmp_path, _doc(**change))
    assert not (tmp_path / TRAINING_METADATA_FILE).exists()
    meta = _doc()
    del meta["history"]
    assert model_metadata_problems(meta) == ["missing key 'history'"]


@pytest.mark.parametrize("native", [True, False])
def test_one_dtype_rule(native, monkeypatch):
    import ftlab.dtypes as dtypes
    from ftlab.models.sources import resolve_dtype
    from ftlab.quant.registry import torch_dtype as quant_torch_dtype
    from ftlab.config import QuantConfig, TrainRunConfig
    from ftlab.train.base_quant import compute_dtype
    from ftlab.train.settings import resolve_mixed_precision

    def resolve_compute_dtype(value):  # QLoRA's matmul dtype for quant.compute_dtype=value
        return compute_dtype(TrainRunConfig(quant=QuantConfig(method="QLORA", compute_dtype=value)))

    if torch.cuda.is_available():
        pytest.skip("the CPU answers are the ones under test")
    monkeypatch.setattr(dtypes, "cpu_has_native_bf16", lambda: native)
    # weights load in fp32 on any CPU (bit-stable greedy decoding; stored CPU evaluations are fp32)
    assert resolve_dtype("auto") is torch.float32 and resolve_dtype(None) is torch.float32
    # compute (mixed precision, QLoRA matmuls) uses bf16 only where it is native
    assert resolve_compute_dtype("auto") == ("bf16" if native else "fp32")
    assert resolve_mixed_precision("auto") == ("bf16" if native else "no")
    assert resolve_compute_dtype("fp16") == "fp16"
    # one table of names behind every caller
    assert quant_torch_dtype is dtypes.torch_dtype
    assert resolve_dtype("bfloat16") is torch.bfloat16 and dtypes.dtype_name(torch.float16) == "fp16"
    with pytest.raises(FtlabError, match="dtype 'int3'"):
        resolve_dtype("int3")
