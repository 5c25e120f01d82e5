import json
import os

import pytest

from ftlab.errors import FtlabError
from ftlab.io import append_jsonl, atomic_write_json, read_jsonl, staging_dir
from ftlab.registry import Registry
from ftlab.schema import load_training_metadata, register_upgrader, upgrade, write_training_metadata


def test_atomic_write_leaves_no_temp(tmp_path):
    p = atomic_write_json(tmp_path / "a" / "x.json", {"v": float("nan"), "n": 1})
    assert json.loads(p.read_text()) == {"v": None, "n": 1}
    assert os.listdir(p.parent) == ["x.json"]


def test_jsonl_tolerates_truncated_tail(tmp_path):
    p = tmp_path / "s.jsonl"
    append_jsonl(p, {"i": 1})
    append_jsonl(p, {"i": 2})
    with open(p, "a") as fh:
        fh.write('{"i": 3, "trunc')  # a kill mid-write
    assert [r["i"] for r in read_jsonl(p)] == [1, 2]


def test_staging_dir_success_and_failure(tmp_path):
    final = tmp_path / "Models" / "run"
    with pytest.raises(RuntimeError):
        with staging_dir(final) as tmp:
            (tmp / "f").write_text("x")
            raise RuntimeError("boom")
    assert not final.exists() and list(final.parent.iterdir()) == []
    with staging_dir(final) as tmp:
        (tmp / "f").write_text("x")
    assert (final / "f").read_text() == "x"
    with pytest.raises(FtlabError, match="overwrite"):
        with staging_dir(final):
            pass
    with staging_dir(final, overwrite=True) as tmp:
        (tmp / "g").write_text("y")
    assert sorted(os.listdir(final)) == ["g"]


def test_registry_errors():
    r = Registry("widget")
    r.add("LoRa", 1)
    assert r.get("lora") == 1 and r.canonical("LORA") == "LoRa"
    with pytest.raises(FtlabError, match="unknown widget 'Lora2'.*did you mean 'LoRa'.*valid: LoRa"):
        r.get("Lora2")


def test_metadata_schema_upgrade(tmp_path):
    (tmp_path / "training_metadata.json").write_text(json.dumps({"schema_version": 0, "base_model": "Qwen/Qwen3-0.6B", "quant_method": "QLORA"}))
    meta = load_training_metadata(tmp_path)
    assert meta["schema_version"] == 1 and meta["base_model"]["ref"] == "Qwen/Qwen3-0.6B"
    assert meta["quantization"]["method"] == "QLORA" and meta["kind"] == "model"
    write_training_metadata(tmp_path, {"run_name": "x"})
    assert load_training_metadata(tmp_path)["run_name"] == "x"
    with pytest.raises(FtlabError, match="newer"):
        upgrade("model", {"schema_version": 99})
    with pytest.raises(FtlabError, match="schema_version"):
        upgrade("model", {})
    (tmp_path / "training_metadata.json").write_text("{broken")
    with pytest.raises(FtlabError, match="not valid JSON"):
        load_training_metadata(tmp_path)


def test_custom_upgrader_chain():
    from ftlab.schema import CURRENT_VERSIONS

    CURRENT_VERSIONS["toy"] = 2
    register_upgrader("toy", 0, lambda d: {**d, "a": 1})
    register_upgrader("toy", 1, lambda d: {**d, "b": d["a"] + 1})
    assert upgrade("toy", {"schema_version": 0}) == {"schema_version": 2, "a": 1, "b": 2}


def test_atomic_files_get_normal_permissions(tmp_path):
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    p = atomic_write_json(tmp_path / "m.json", {})
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
