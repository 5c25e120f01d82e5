"""Model source kinds: one `SourceKind` definition each, tried in rank order, read by every stage.

These tests load no weights: recognition, naming and the downstream decisions (study graph, PTQ
source, training metadata, adapter bases) all come from the definitions."""

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftlab.errors import FtlabError
from ftlab.models import sources
from ftlab.models.sources import (
    SOURCE_KINDS, LoadRequest, ModelSource, SourceKind, SourceRef, adapter_base_ref, load_model, recognise,
    recognition_order, register_source_kind, resolve_model,
)
from ftlab.registry import Registry

PARTS = ("recognise", "resolve", "base_name", "tokenizer", "load", "model_config", "model_folder")


def test_every_registered_kind_has_every_part_and_its_own_rank():
    assert [k.name for k in recognition_order()] == ["scratch", "builtin", "gguf", "local", "hub"]
    ranks = [k.rank for _, k in SOURCE_KINDS.items()]
    assert len(set(ranks)) == len(ranks)
    for name, kind in SOURCE_KINDS.items():
        assert kind.name == name and isinstance(kind.rank, int) and kind.doc.strip(), name
        missing = [p for p in PARTS if not callable(getattr(kind, p))]
        assert not missing, f"{name} lacks {missing}"
        for flag in ("run_folder", "always_available", "on_disk", "path_is_ref"):
            assert isinstance(getattr(kind, flag), bool), (name, flag)
        # The module docstring documents the recognition order; it must list every kind at its rank.
        assert f"- {kind.rank} `{name}`:" in sources.__doc__, f"{name} (rank {kind.rank}) missing from the docstring"


def test_a_taken_rank_is_refused():
    scratch = SOURCE_KINDS.get("scratch")
    with pytest.raises(ValueError, match="rank 10 is taken by 'scratch'"):
        register_source_kind(SourceKind(
            "other", 10, "x", recognise=scratch.recognise, resolve=scratch.resolve, base_name=scratch.base_name,
            tokenizer=scratch.tokenizer, load=scratch.load, model_config=scratch.model_config))
    assert "other" not in SOURCE_KINDS


def _model_folder(path: Path, config: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "llama", "hidden_size": 64}))
    return path


def test_recognition_order_picks_the_first_kind_that_matches(workspace, tmp_path):
    ws = workspace
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "model.gguf").write_bytes(b"GGUF")
    _model_folder(ws.models_dir / "run")

    def kind(ref):
        k = recognise(SourceRef(ref, ws))
        return k.name if k else None

    assert kind("scratch:tiny") == "scratch"
    assert kind("smollm2-135m-instruct") == "builtin"
    assert kind(str(tmp_path / "w.gguf")) == "gguf" and kind(str(exported)) == "gguf"
    assert kind("missing.gguf") == "gguf"  # recognised by its suffix; resolving says it is not there
    assert kind("run") == "local" and kind("Models/run") == "local"
    assert kind("Qwen/Qwen3-0.6B") == "hub"
    assert kind("./nope") is None and kind("justaword") is None and kind("a/b/c") is None
    with pytest.raises(FtlabError, match="GGUF file .*missing.gguf not found"):
        resolve_model("missing.gguf", ws)


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A throwaway kind `zoo:<name>` at rank 15 (between scratch and built-in names), registered in a
    copy of SOURCE_KINDS that monkeypatch puts back: every reader sees it only during the test."""
    registry: Registry[SourceKind] = Registry(SOURCE_KINDS.kind)
    for name, kind in SOURCE_KINDS.items():
        registry.add(name, kind)
    monkeypatch.setattr(sources, "SOURCE_KINDS", registry)
    folder = _model_folder(tmp_path / "zoo-weights", {"model_type": "llama", "hidden_size": 96})
    calls: list[LoadRequest] = []

    def load(src, req):
        calls.append(req)
        return SimpleNamespace(generation_config=SimpleNamespace(pad_token_id=None))

    kind = register_source_kind(SourceKind(
        "zoo", 15, "zoo:<name>: an animal from the test zoo",
        recognise=lambda r: r.ref.startswith("zoo:"),
        resolve=lambda r: ModelSource(r.ref, extra={"animal": r.ref.split(":", 1)[1]}),
        base_name=lambda r, src: f"zoo-{src.extra['animal']}",
        tokenizer=lambda src, ws: SimpleNamespace(pad_token=None, eos_token="</s>", unk_token=None, pad_token_id=7),
        load=load,
        model_config=lambda src: json.loads((folder / "config.json").read_text()),
        model_folder=lambda src: folder,
        always_available=True,
    ))
    return SimpleNamespace(kind=kind, folder=folder, calls=calls)


def test_a_new_kind_is_one_definition_that_every_stage_reads(zoo, workspace):
    from ftlab.quant.pipeline import _Source
    from ftlab.study.graph import base_config
    from ftlab.train.output import base_model_info

    assert [k.name for k in recognition_order()][:3] == ["scratch", "zoo", "builtin"]
    src = resolve_model("zoo:otter", workspace)
    assert (src.kind, src.base_name, src.definition) == ("zoo", "zoo-otter", zoo.kind)
    assert src.describe()["source_kind"] == "zoo"

    model, tok, loaded = load_model("zoo:otter", workspace=workspace, dtype="fp32", seed=3)
    assert loaded.kind == "zoo" and tok.pad_token == "</s>"  # the generic pad rule applies to its tokenizer
    assert model.generation_config.pad_token_id == 7 and zoo.calls[0].seed == 3

    # Study graph: the config PTQ group sizes are fitted to, cached beside the jobs.
    assert base_config(src, workspace)["hidden_size"] == 96
    assert list((workspace.jobs_dir / "configs").glob("*.json"))
    # Training metadata records its plain folder as the base's path.
    assert base_model_info(src)["path"] == str(zoo.folder)
    # PTQ: not a run folder, so the output is named as a base snapshot; its plain folder is quantized as is.
    ptq = _Source("zoo:otter", workspace)
    assert ptq.name.startswith("zoo-otter") and ptq.plain_dir == zoo.folder
    assert ptq.config()["hidden_size"] == 96
    # Adapters on it: an always-available base is taken as recorded.
    adapter = ModelSource("Models/a", "local", "zoo-otter",
                          metadata={"base_model": {"ref": "zoo:otter", "source_kind": "zoo"}})
    assert adapter_base_ref(adapter, workspace) == "zoo:otter"


def test_rank_decides_between_two_kinds_that_both_match(zoo, workspace):
    catch_all = SourceKind(
        "anything", 95, "any reference nothing before it took",
        recognise=lambda r: True, resolve=lambda r: ModelSource(r.ref), base_name=lambda r, src: "anything",
        tokenizer=zoo.kind.tokenizer, load=zoo.kind.load, model_config=lambda src: None)
    register_source_kind(catch_all)
    assert resolve_model("Qwen/Qwen3-0.6B", workspace).kind == "hub"  # rank 90 is tried first
    assert resolve_model("justaword", workspace).kind == "anything"  # no other kind takes it
    register_source_kind(replace(catch_all, name="first", rank=1))
    assert resolve_model("scratch:tiny", workspace).kind == "first"


def test_a_recorded_on_disk_base_that_is_gone_is_an_error_not_a_hub_id(zoo, workspace, tmp_path):
    sources.SOURCE_KINDS.add("cellar", replace(zoo.kind, name="cellar", rank=35, recognise=lambda r: False,
                                               always_available=False, on_disk=True))
    gone = ModelSource("Models/a", "local", "x", path=tmp_path / "a",
                       metadata={"base_model": {"ref": "org/model", "source_kind": "cellar"}})
    with pytest.raises(FtlabError, match="no longer exists"):
        adapter_base_ref(gone, workspace)
    hub = ModelSource("Models/a", "local", "x", path=tmp_path / "a",
                      metadata={"base_model": {"ref": "org/model", "source_kind": "hub"}})
    assert adapter_base_ref(hub, workspace) == "org/model"


def test_the_kinds_are_gone_after_the_throwaway_test():
    assert "zoo" not in SOURCE_KINDS and "anything" not in SOURCE_KINDS and "cellar" not in SOURCE_KINDS
    assert sources.SOURCE_KINDS is SOURCE_KINDS
