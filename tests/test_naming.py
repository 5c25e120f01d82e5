import pytest

from ftlab.errors import FtlabError
from ftlab.naming import (RunName, base_component, build_run_name, parse_run_name, peft_tag,
                          sanitize_component, with_quant_tag)

NAMES = [
    "Qwen3-0.6B-openmath_SFT_LoRa256_QLORA_w4_headbf16",
    "SmolLM2-135M-Instruct-arc_SFT_NoPeft_NoQuant",
    "Qwen3-4B-base",
    "SmolLM2-135M-Instruct-base_GPTQ_w4_g128_headbf16",
    "SmolLM2-135M-Instruct-synthetic-arith_SFT_rsLoRa16_NoQuant",
    "gemma-3-270m-squad-v2_SFT_DoRa8_HQQ_w4_g64",
    "scratch-tiny-boolq_PT_NoPeft_BNB_nf4",
    "Llama-3.2-1B-my.data_SFT_VeRa256_AWQ_w4_g128",
]


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name):
    parsed = parse_run_name(name)
    assert parsed.render() == name
    assert parse_run_name(parsed.render()) == parsed


def test_fields():
    r = parse_run_name("Qwen3-0.6B-openmath_SFT_LoRa256_QLORA_w4_headbf16")
    assert (r.base, r.dataset, r.method, r.peft, r.quant_tag) == ("Qwen3-0.6B", "openmath", "SFT", "LoRa256", "QLORA_w4_headbf16")
    b = parse_run_name("Qwen3-4B-base")
    assert b.is_base_snapshot and b.base == "Qwen3-4B" and b.quant_tag == "NoQuant"
    s = parse_run_name("SmolLM2-135M-Instruct-synthetic-arith_SFT_rsLoRa16_NoQuant")
    assert s.base == "SmolLM2-135M-Instruct" and s.dataset == "synthetic-arith"


def test_build_from_refs():
    assert build_run_name("Qwen/Qwen3-0.6B", "openmath", "SFT", peft_tag("LoRa", 256), "QLORA_w4_headbf16").render() == NAMES[0]
    assert build_run_name("Qwen/Qwen3-4B", None).render() == "Qwen3-4B-base"
    assert build_run_name("scratch:tiny", "squad_v2", "PT").render() == "scratch-tiny-squad-v2_PT_NoPeft_NoQuant"
    assert build_run_name("/data/my_model", "/x/my-data_v2.jsonl").render() == "my-model-my.data.v2_SFT_NoPeft_NoQuant"


def test_with_quant_tag():
    assert with_quant_tag("SmolLM2-135M-Instruct-arc_SFT_LoRa16_NoQuant", "GPTQ_w4_g128") == "SmolLM2-135M-Instruct-arc_SFT_LoRa16_GPTQ_w4_g128"
    assert with_quant_tag("Qwen3-4B-base", "HQQ_w4_g64") == "Qwen3-4B-base_HQQ_w4_g64"


@pytest.mark.parametrize("evil", ["../../etc/passwd", "a/b", "x\\y", "na me:*?", "..", "a..b", "con\x00trol"])
def test_sanitised(evil):
    try:
        out = sanitize_component(evil)
    except FtlabError:
        return
    assert "/" not in out and "\\" not in out and ".." not in out and "\x00" not in out
    assert out and not out.startswith(".")


def test_base_component():
    assert base_component("Qwen/Qwen3-0.6B") == "Qwen3-0.6B"
    assert base_component("models/SmolLM2.Q4_1.gguf") == "SmolLM2.Q4-1"  # `_` separates name fields
    assert base_component("scratch:tiny") == "scratch-tiny"


@pytest.mark.parametrize("bad", ["nodash", "X-arc_SFT", "X-arc_FOO_LoRa16_NoQuant", "X-arc_SFT_Lora16_NoQuant", "X-arc_SFT_LoRa16_ZZZ_w4"])
def test_parse_errors(bad):
    with pytest.raises(FtlabError):
        parse_run_name(bad)


def test_peft_tag_rejects_rank_zero():
    with pytest.raises(FtlabError, match="positive"):
        peft_tag("LoRa", 0)
    assert peft_tag("NoPeft") == "NoPeft"
    # A RunName with the "base" dataset is a base snapshot: it renders without method or PEFT and parses back.
    assert str(RunName("a", "base")) == "a-base" and parse_run_name("a-base") == RunName("a", "base")


def test_peft_rank_reads_the_registry():
    from ftlab.naming import peft_rank

    assert peft_rank("LoRa16") == 16 and peft_rank("PiSSA8") == 8 and peft_rank("VeRa256") == 256
    assert peft_rank("NoPeft") is None and peft_rank("Bogus16") is None and peft_rank(None) is None
