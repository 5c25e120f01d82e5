"""Training-time base quantization (quant.method) is one definition per method: its name, tag and
config rules in ftlab/kinds/quant.py, what training does with it in ftlab/train/base_quant.py."""

from __future__ import annotations

import pytest

from ftlab.config import QuantConfig, TrainRunConfig, load_config
from ftlab.errors import ConfigError
from ftlab.kinds.quant import QUANT_METHODS, TRAINING_METHODS, parse_quant_tag
from ftlab.quant.registry import get_engine
from ftlab.train.base_quant import BASE_QUANTS, base_quant, quantization_spec


def test_every_training_time_name_has_one_definition():
    assert BASE_QUANTS.names() == list(TRAINING_METHODS) == ["NoQuant", "QLORA"]
    for name, q in BASE_QUANTS.items():
        assert q.name == name and QUANT_METHODS.get(name).training


@pytest.mark.parametrize("bits, head", [(4, "BNB_NF4"), (8, "BNB_INT8")])
def test_qlora_loads_its_base_as_the_bitsandbytes_engine_quantizes(bits, head):
    cfg = TrainRunConfig(quant=QuantConfig(method="QLORA", bits=bits, compute_dtype="fp32"))
    spec = quantization_spec(cfg)
    assert spec.tag == f"QLORA_w{bits}_headbf16" and parse_quant_tag(spec.tag).bits == bits
    ours = base_quant(cfg).load_config(spec).to_dict()
    assert ours == get_engine(head).bnb_config(spec).to_dict()
    assert ours["load_in_4bit"] == (bits == 4) and ours["load_in_8bit"] == (bits == 8)
    assert BASE_QUANTS.get("NoQuant").load_config(quantization_spec(TrainRunConfig())) is None


def test_bits_rule_comes_from_the_names_layer():
    with pytest.raises(ConfigError) as err:
        load_config(TrainRunConfig, overrides=["quant.method=QLORA", "quant.bits=3"])
    assert "quant.bits=3 is not supported by bitsandbytes QLoRA; use 4 or 8" in err.value.problems
    # NoQuant quantizes nothing, so its bits are not checked
    load_config(TrainRunConfig, overrides=["quant.bits=3"])


def test_a_new_training_time_method_is_one_name_and_one_definition(monkeypatch):
    """A throwaway 2-bit method: registered once in each layer, it is validated, tagged and named."""
    from ftlab.kinds import quant as kinds
    from ftlab.kinds.quant import QuantizationSpec, QuantMethodName
    from ftlab.train import base_quant as bq
    from ftlab.train.settings import run_name

    monkeypatch.setitem(kinds.QUANT_METHODS._items, "qlora",  # the enum is fixed: reuse QLORA's member
                        ("QLORA", QuantMethodName("QLORA", training=True, base_bits=(2,), doc="two-bit base: test")))
    monkeypatch.setitem(bq.BASE_QUANTS._items, "qlora", ("QLORA", bq.BaseQuant(
        "QLORA", spec=lambda cfg: QuantizationSpec("QLORA", bits=cfg.quant.bits), load_config=lambda spec: None,
        model_dtype=lambda cfg: "fp32")))
    cfg = load_config(TrainRunConfig, overrides=["quant.method=QLORA", "quant.bits=2", "data.dataset=arc"])
    assert run_name(cfg, "tiny").endswith("_QLORA_w2")
    with pytest.raises(ConfigError, match="not supported by two-bit base; use 2"):
        load_config(TrainRunConfig, overrides=["quant.method=QLORA", "quant.bits=4"])
