"""QuantizationSpec, tags and the registry's capability checks (no model is loaded here)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ftlab.errors import FtlabError
from ftlab.quant.registry import check_supported, complete_spec, dtype_name, get_engine, method_names, torch_dtype
from ftlab.kinds.quant import QuantizationSpec, QuantMethod, parse_quant_tag, tag_quant

ROUND_TRIP_SPECS = [
    QuantizationSpec(),
    QuantizationSpec(QuantMethod.QLORA, bits=4, lm_head_dtype="bf16"),
    QuantizationSpec(QuantMethod.GPTQ, bits=4, group_size=128, lm_head_dtype="bf16"),
    QuantizationSpec(QuantMethod.GPTQ, bits=3, group_size=-1),
    QuantizationSpec(QuantMethod.AWQ, bits=4, group_size=64),
    QuantizationSpec(QuantMethod.HQQ, bits=4, group_size=64),
    QuantizationSpec(QuantMethod.HQQ, bits=2, group_size=32, act_bits=8, kv_cache_dtype="fp8"),
    QuantizationSpec(QuantMethod.BNB_NF4, bits=4),
    QuantizationSpec(QuantMethod.BNB_INT8, bits=8, lm_head_dtype="fp16"),
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS, ids=lambda s: s.tag)
def test_tag_round_trip(spec):
    tag = tag_quant(spec)
    back = parse_quant_tag(tag)
    assert tag_quant(back) == tag
    assert back.method is spec.method
    for f in ("group_size", "act_bits", "kv_cache_dtype", "lm_head_dtype"):
        assert getattr(back, f) == getattr(spec, f), f


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS, ids=lambda s: s.tag)
def test_json_round_trip(spec):
    spec = QuantizationSpec.from_dict(spec.to_dict())
    spec.calib_dataset, spec.calib_samples, spec.calib_hash = "openmath", 128, "abc123"
    back = QuantizationSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec


def test_every_registered_method_round_trips_after_completion():
    assert method_names() == ["GPTQ", "AWQ", "HQQ", "BNB_NF4", "BNB_INT8", "GGUF"]
    expected = {"GPTQ": "GPTQ_w4_g128", "AWQ": "AWQ_w4_g128", "HQQ": "HQQ_w4_g64", "BNB_NF4": "BNB_nf4",
                "BNB_INT8": "BNB_int8", "GGUF": "GGUF_q8_0"}
    for name in method_names():
        spec = complete_spec(QuantizationSpec(name))
        assert spec.tag == expected[name]
        assert parse_quant_tag(spec.tag).tag == spec.tag
        assert spec.backend == get_engine(name).backend
        check_supported(spec, model_type="llama")  # defaults are always a supported combination


def test_head_tag_matches_brief_example():
    spec = complete_spec(QuantizationSpec("GPTQ", lm_head_dtype="bf16"))
    assert spec.tag == "GPTQ_w4_g128_headbf16"
    assert spec.compute_dtype == "bf16"


@pytest.mark.parametrize("tag", ["GPTQ_x4", "FOO_w4", "BNB_fp4", "HQQ_w4_gX", "GGUF_q9_0", "GGUF"])
def test_bad_tags(tag):
    with pytest.raises(FtlabError, match="bad quant tag"):
        parse_quant_tag(tag)


def test_methods_and_tags_are_one_name_each_with_one_engine(monkeypatch):
    """One definition per method: QuantMethod and tag parsing read ftlab.kinds.quant, each
    post-training name has exactly one engine, and the CLI's list reads the engines."""
    from ftlab.kinds import quant as kinds
    from ftlab.kinds.quant import PTQ_METHODS, QUANT_METHODS
    from ftlab.commands.quantize import _methods_doc

    assert [m.value for m in QuantMethod] == ["NoQuant", "QLORA", *method_names()]
    assert method_names() == list(PTQ_METHODS)
    assert _methods_doc() == ", ".join(method_names())
    for name in method_names():
        assert get_engine(name).name == name
        for form in QUANT_METHODS.get(name).forms():
            spec = QUANT_METHODS.get(name).spec_for(form)
            assert parse_quant_tag("_".join(form)).to_dict() == spec.to_dict()
    gguf = parse_quant_tag("GGUF_q4_k_m_headbf16")
    assert (gguf.method.value, gguf.bits, gguf.extra["gguf_type"], gguf.lm_head_dtype) == ("GGUF", 4, "q4_k_m", "bf16")
    assert tag_quant(gguf) == "GGUF_q4_k_m_headbf16"
    from ftlab.quant.engines.gguf import TYPES
    assert {n: t.bits for n, t in TYPES.items()} == dict(kinds.GGUF_TYPES)
    # A tag head the names layer no longer declares stops parsing: the tag words live only there.
    nf4 = QUANT_METHODS.get("BNB_NF4")
    monkeypatch.setitem(QUANT_METHODS._items, "bnb_nf4", ("BNB_NF4", dataclasses.replace(nf4, words=("BNB", "nf4x"))))
    with pytest.raises(FtlabError, match="BNB must be followed by nf4x or int8"):
        parse_quant_tag("BNB_nf4")


def test_an_engine_needs_a_post_training_name():
    from ftlab.quant.engine_api import QuantEngine, register_engine

    with pytest.raises(ValueError, match="not a post-training method of ftlab.kinds.quant"):
        register_engine(type("Fp3Engine", (QuantEngine,), {"name": "FP3"}))


def test_unknown_spec_field_is_rejected():
    with pytest.raises(FtlabError, match="unknown quantization spec field"):
        QuantizationSpec.from_dict({"method": "GPTQ", "bitz": 4})


@pytest.mark.parametrize("spec, model_type, match", [
    (QuantizationSpec("BNB_NF4", bits=3), "llama", r"bits=3 is not supported by BNB_NF4; use one of \[4\]"),
    (QuantizationSpec("BNB_INT8", group_size=64), "llama", "group_size is not a setting of BNB_INT8"),
    (QuantizationSpec("AWQ", bits=4, group_size=128, compute_dtype="fp32", lm_head_dtype="fp32"), "llama",
     "AWQ cannot keep weights in fp32 on cpu .*bf16/fp16"),
    (QuantizationSpec("GPTQ", bits=5, group_size=128), "llama", "bits=5 is not supported by GPTQ"),
    (QuantizationSpec("HQQ", bits=4, group_size=100), "llama", "group_size=100 is not supported by HQQ"),
    (QuantizationSpec("GPTQ", bits=4, group_size=128), "bert", "GPTQ does not support model_type 'bert'"),
    (QuantizationSpec("HQQ", bits=4, group_size=64, act_bits=8), "llama", "activation quantization"),
    (QuantizationSpec("GPTQ", bits=4, group_size=128, kv_cache_dtype="fp8"), "llama", "kv_cache_dtype"),
    (QuantizationSpec("HQQ", bits=4, group_size=64, lm_head_dtype="int4"), "llama", "the head is never quantized"),
])
def test_unsupported_combinations(spec, model_type, match):
    with pytest.raises(FtlabError, match=match):
        check_supported(spec, model_type=model_type)


def test_all_problems_reported_at_once():
    with pytest.raises(FtlabError) as err:
        check_supported(QuantizationSpec("BNB_NF4", bits=3, group_size=64))
    assert "bits=3" in str(err.value) and "group_size" in str(err.value)


def test_unknown_and_training_time_methods():
    with pytest.raises(FtlabError, match="did you mean 'GPTQ'"):
        get_engine("gptqq")
    with pytest.raises(FtlabError, match="QLoRA is chosen at training time"):
        get_engine("QLORA")
    assert get_engine("bnb-nf4").method is QuantMethod.BNB_NF4


def test_dtype_names():
    import torch

    assert torch_dtype("bf16") is torch.bfloat16 and dtype_name(torch.float16) == "fp16"
    assert dtype_name("float32") == "fp32"
    with pytest.raises(FtlabError, match="dtype 'int3'"):
        torch_dtype("int3")


def test_output_names():
    from ftlab.quant.pipeline import output_name

    assert output_name("SmolLM2-135M-Instruct-base", "GPTQ_w4_g128") == "SmolLM2-135M-Instruct-base_GPTQ_w4_g128"
    assert (output_name("SmolLM2-135M-Instruct-synthetic-arith_SFT_LoRa16_NoQuant", "HQQ_w4_g64")
            == "SmolLM2-135M-Instruct-synthetic-arith_SFT_LoRa16_HQQ_w4_g64")
    assert (output_name("Qwen3-0.6B-openmath_SFT_LoRa16_QLORA_w4", "AWQ_w4_g128")
            == "Qwen3-0.6B-openmath_SFT_LoRa16_AWQ_w4_g128")
    assert output_name("mymodel", "BNB_nf4") == "mymodel_BNB_nf4"  # not a run name: tag appended


def test_quantization_utils_reexports():
    import quantization_utils as qu

    assert qu.tag_quant is tag_quant and qu.parse_quant_tag is parse_quant_tag
    assert qu.QuantizationSpec is QuantizationSpec and qu.QuantMethod is QuantMethod
    from ftlab.quant import registry

    assert qu.load_quantized is registry.load_quantized and qu.ENGINES is registry.ENGINES and "HQQ" in qu.ENGINES


def test_engine_options_are_declared_typed_and_recorded():
    spec = complete_spec(QuantizationSpec("HQQ", extra={"axis": "0", "optimize": "false"}))
    assert spec.extra["axis"] == 0 and spec.extra["optimize"] is False
    assert spec.extra["round_zero"] is get_engine("HQQ").options["round_zero"].default  # defaults recorded too
    assert spec.tag == "HQQ_w4_g64"  # options live in the spec (metadata), not in the folder name
    with pytest.raises(FtlabError, match="HQQ has no option axes; its options: axis, optimize, round_zero"):
        complete_spec(QuantizationSpec("HQQ", extra={"axes": 0}))
    with pytest.raises(FtlabError, match=r"HQQ option axis=2 is not one of \[0, 1\]"):
        complete_spec(QuantizationSpec("HQQ", extra={"axis": "2"}))
    with pytest.raises(FtlabError, match="GPTQ has no option axis; its options: none"):
        complete_spec(QuantizationSpec("GPTQ", extra={"axis": 0}))
