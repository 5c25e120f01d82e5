"""Which texts `ftlab export` / `ftlab quantize` calibrate on and measure fidelity with when the user
names none: the source model's own training task (its training_metadata.json), else openmath; a
default whose texts cannot be had offline is skipped with one warning line and recorded as not
measured, a named one is a one-line error before anything loads (issue 23)."""

from __future__ import annotations

import logging
import shutil
import socket

import pytest

from ftlab.data.loading import DatasetUnavailable
from ftlab.data.tasks import trained_task
from ftlab.kinds.quant import QuantizationSpec
from ftlab.paths import Workspace
from ftlab.quant.pipeline import FALLBACK_TASK, QuantRequest, default_task, plan_data, quantize
from ftlab.schema import load_training_metadata, write_training_metadata
from tiny_models import build_quant_tiny_model

ARITH = "tiny-synthetic-arith_SFT_NoPeft_NoQuant"
OPENMATH = "tiny-openmath_SFT_NoPeft_NoQuant"
FAST = ["--fidelity-samples", "4", "--max-length", "96", "--threads", "1"]


def _metadata(name: str, dataset: str | None) -> dict:
    return {"run_name": name, "method": "SFT", "dataset": {"name": dataset} if dataset else None,
            "quantization": QuantizationSpec().to_dict(), "history": [], "merged": False}


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """Two fine-tunes of one tiny Llama: one on synthetic-arith (generated, always here), one on
    openmath (hub data, absent from this workspace's Datasets/)."""
    root = tmp_path_factory.mktemp("fid-default")
    arith = build_quant_tiny_model(root / "Models" / ARITH, hidden=64, vocab=300)
    write_training_metadata(arith, _metadata(ARITH, "synthetic-arith"))
    shutil.copytree(arith, root / "Models" / OPENMATH)
    write_training_metadata(root / "Models" / OPENMATH, _metadata(OPENMATH, "openmath"))
    return Workspace(root)


@pytest.fixture
def offline(monkeypatch, ws):
    """No hub, no data folder but the workspace's (which holds no openmath files), and a hub fetch fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("FTLAB_DATASETS", raising=False)
    monkeypatch.setenv("FTLAB_HOME", str(ws.root))

    def no_hub(task, split, limit):
        raise AssertionError(f"offline, yet the hub was asked for {task.name} ({split})")

    monkeypatch.setattr("ftlab.data.loading.hub_rows", no_hub)


def _export(ws: Workspace, model: str, *args: str) -> int:
    from ftlab.cli import main

    return main(["--workdir", str(ws.root), "export", "--model", f"Models/{model}", "--overwrite", *FAST, *args])


def _fidelity_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("fidelity not measured")]


def test_the_training_task_is_read_once_for_every_stage():
    assert trained_task({"dataset": {"name": "synthetic-arith"}}) == "synthetic-arith"
    assert trained_task({"dataset": {"name": "/data/mine.jsonl"}}) is None  # a file that may not be here
    assert trained_task({"dataset": None}) is None and trained_task(None) is None
    assert default_task({"dataset": {"name": "boolq"}}) == "boolq"
    for meta in (None, {"dataset": None}, {"dataset": {"name": "mine.csv"}}, {"dataset": {"name": "no-such-task"}}):
        assert default_task(meta) == FALLBACK_TASK == "openmath"

    from ftlab.eval.evaluator import resolve_entry  # evaluation's `perplexity` entry reads the same helper

    assert resolve_entry("perplexity", {"dataset": {"name": "boolq"}}).task.name == "boolq"
    assert resolve_entry("perplexity", {"dataset": {"name": "mine.json"}}).task.name == "synthetic-arith"


def test_offline_export_of_a_synthetic_arith_finetune_needs_no_flag(ws, offline, caplog, capsys):
    assert _export(ws, ARITH) == 0
    out = ws.models_dir / ARITH.replace("NoQuant", "GGUF_q8_0")
    assert capsys.readouterr().out.strip().endswith(out.name)
    ptq = load_training_metadata(out)["results"]["ptq"]
    assert ptq["fidelity"]["dataset"] == "synthetic-arith" and ptq["fidelity"]["samples"] == 4
    assert ptq["fidelity"]["tokens"] > 0 and 0 <= ptq["fidelity"]["kl_mean"] < 0.1
    assert ptq["fidelity_not_measured"] is None and not _fidelity_warnings(caplog)


@pytest.mark.parametrize("how", ["offline", "hub fails"])
def test_training_task_unavailable_exports_with_one_warning_and_records_why(ws, offline, caplog, monkeypatch, how):
    if how == "hub fails":  # the hub looked askable (no offline variable), and the fetch failed
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.setattr("ftlab.data.loading.hub_unreachable", lambda: None)
        calls = []

        def failing(task, split, limit):
            calls.append((task.name, split))
            raise DatasetUnavailable(f"cannot fetch {task.hub_id} ({split}) from the hub: timed out")

        monkeypatch.setattr("ftlab.data.loading.hub_rows", failing)
    assert _export(ws, OPENMATH) == 0
    out = ws.models_dir / OPENMATH.replace("NoQuant", "GGUF_q8_0")
    assert (out / "model.gguf").is_file() and not list(ws.models_dir.glob(".staging-*"))
    ptq = load_training_metadata(out)["results"]["ptq"]
    assert ptq["fidelity"] is None and ptq["fidelity_of_cast"] is None
    assert ptq["fidelity_not_measured"]["dataset"] == "openmath"
    reason = ptq["fidelity_not_measured"]["reason"]
    warnings = _fidelity_warnings(caplog)
    assert len(warnings) == 1 and "\n" not in warnings[0] and reason in warnings[0]
    assert warnings[0].startswith("fidelity not measured: no held-out texts from openmath: ")
    assert "--fidelity-dataset NAME" in warnings[0] and "--data-dir" in warnings[0]
    if how == "offline":
        assert "HF_HUB_OFFLINE=1" in reason
    else:
        assert calls == [("openmath", "test")] and "timed out" in reason
    assert "not measured: " + reason in (out / "README.md").read_text()


def test_named_fidelity_dataset_that_cannot_be_had_is_one_line_error_before_any_load(ws, offline, capsys,
                                                                                    monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the tokenizer was loaded before the data check")

    monkeypatch.setattr("ftlab.quant.pipeline.load_tokenizer", no_load)
    before = sorted(p.name for p in ws.models_dir.iterdir())
    assert _export(ws, ARITH, "--type", "f16", "--fidelity-dataset", "openmath") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no held-out texts from openmath") and len(err.splitlines()) == 1
    assert "HF_HUB_OFFLINE=1" in err and "--data-dir" in err
    assert sorted(p.name for p in ws.models_dir.iterdir()) == before  # nothing written, no staging folder


def test_calibration_defaults_to_the_training_task_too(ws, offline, monkeypatch):
    """GPTQ and AWQ calibrate: the same default; a default that cannot be had is an error (no texts,
    no quantization) naming --calib-dataset, before the tokenizer loads."""
    def request(model: str, **kw) -> QuantRequest:
        return QuantRequest(model=str(ws.models_dir / model), spec=QuantizationSpec("GPTQ"), **kw)

    arith = {"dataset": {"name": "synthetic-arith"}}
    plan = plan_data(request(ARITH), arith, needs_calibration=True, workspace=ws)
    assert (plan.calib, plan.fidelity, plan.calib_asked, plan.fidelity_asked) == ("synthetic-arith",) * 2 + (False,) * 2
    plan = plan_data(request(OPENMATH, calib_dataset="synthetic-arith", measure_fidelity=False),
                     {"dataset": {"name": "openmath"}}, True, ws)  # named: openmath's absence does not matter
    assert (plan.calib, plan.fidelity, plan.calib_asked) == ("synthetic-arith", None, True)
    assert plan.not_measured() == {"dataset": None, "reason": "not asked for (--no-fidelity)"}

    monkeypatch.setattr("ftlab.quant.pipeline.load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded"))
    with pytest.raises(DatasetUnavailable, match=r"no calibration texts from openmath: .*--calib-dataset NAME$"):
        quantize(request(OPENMATH), ws)
    with pytest.raises(DatasetUnavailable) as named:  # named by the user: no other task suggested
        quantize(request(ARITH, calib_dataset="openmath"), ws)
    assert "--calib-dataset" not in str(named.value)
    assert not list(ws.models_dir.glob("*GPTQ*")) and not list(ws.models_dir.glob(".staging-*"))


def test_hub_unreachable_is_known_without_a_request(monkeypatch):
    from ftlab.data.loading import hub_unreachable

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "true")
    assert hub_unreachable() == "HF_DATASETS_OFFLINE=true is set"
    monkeypatch.delenv("HF_DATASETS_OFFLINE")

    def no_dns(host, port, *a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert hub_unreachable() == "huggingface.co cannot be resolved (no network)"
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org")
    assert hub_unreachable() == "hub.example.org cannot be resolved (no network)"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # the proxy resolves names: ask the hub
    assert hub_unreachable() is None
