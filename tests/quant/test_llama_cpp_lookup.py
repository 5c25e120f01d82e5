"""Where ftlab finds llama.cpp's tools ($FTLAB_LLAMA_CPP, then PATH, then ftlab's cache), what
`ftlab doctor` says about them, and the builder's reuse of a finished build (no compiler needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ftlab.quant import llama_cpp


def _fake_tools(folder: Path, names=llama_cpp.TOOLS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        exe = folder / n
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    return folder


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """No llama.cpp anywhere: an empty PATH, no $FTLAB_LLAMA_CPP, an empty cache."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.delenv(llama_cpp.ENV_DIR, raising=False)
    monkeypatch.setenv("FTLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_lookup_order_env_then_path_then_cache(clean, monkeypatch):
    assert llama_cpp.find_tool("llama-quantize") is None
    cached = _fake_tools(llama_cpp.cache_bin_dir())
    assert llama_cpp.cache_bin_dir() == clean / "cache" / "llama.cpp" / llama_cpp.VERSION / "bin"
    assert llama_cpp.locate("llama-quantize") == ("ftlab cache", cached / "llama-quantize")
    on_path = _fake_tools(clean / "empty-path")
    assert llama_cpp.locate("llama-quantize") == ("PATH", on_path / "llama-quantize")
    named = _fake_tools(clean / "mine")
    monkeypatch.setenv(llama_cpp.ENV_DIR, str(named))
    assert llama_cpp.locate("llama-quantize") == ("$FTLAB_LLAMA_CPP", named / "llama-quantize")
    (named / "llama-simple").chmod(0o644)  # not executable: the next place is asked
    assert llama_cpp.locate("llama-simple") == ("PATH", on_path / "llama-simple")


def test_doctor_says_where_llama_cpp_is_or_how_to_get_it(clean, capsys, monkeypatch):
    from ftlab.cli import main
    from ftlab.commands import doctor

    monkeypatch.setattr(doctor, "_import_status", lambda name: "not imported here")  # 20-40 s of engine imports

    assert main(["doctor", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)["llama_cpp"]
    assert line.startswith("not found; build it with `python tools/build_llama_cpp.py`"), line
    _fake_tools(llama_cpp.cache_bin_dir(), names=("llama-quantize",))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    row = next(r for r in out.splitlines() if r.startswith("llama_cpp"))
    assert f"found in ftlab cache ({llama_cpp.cache_bin_dir()})" in row and "missing llama-simple, llama-perplexity, llama-server" in row


def test_k_quant_check_finds_llama_quantize_in_the_cache(clean):
    from ftlab.quant.engines.gguf import llama_quantize_problem

    problem = llama_quantize_problem()
    assert problem and "tools/build_llama_cpp.py" in problem and "q4_0" in problem
    _fake_tools(llama_cpp.cache_bin_dir())
    assert llama_quantize_problem() is None


def test_build_reuses_a_finished_build_without_a_compiler(clean):
    bin_dir = _fake_tools(llama_cpp.cache_bin_dir())
    assert llama_cpp.build() == bin_dir  # no cmake on this PATH: nothing was run
    assert llama_cpp.main(["--if-missing"]) == 0


def test_build_without_cmake_is_one_line_error(clean, capsys):
    assert llama_cpp.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cmake is not installed") and err.count("\n") == 1
    assert not (llama_cpp.cache_root() / llama_cpp.VERSION).exists()


def test_build_script_runs_without_the_model_stack(clean):
    """tools/build_llama_cpp.py imports only the standard library and ftlab.paths, so .ci/run can
    call it with the system Python before `uv run` has installed anything."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = ("import sys, runpy; sys.argv = ['build_llama_cpp.py', '--if-missing']; "
            f"runpy.run_path({str(root / 'tools' / 'build_llama_cpp.py')!r}, run_name='__main__')")
    _fake_tools(llama_cpp.cache_bin_dir())
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                       env={**os.environ}, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "found in ftlab cache" in r.stdout
    imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert not {"torch", "numpy", "transformers"} & imported
