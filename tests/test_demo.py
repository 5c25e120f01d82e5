"""`ftlab demo --quick` end to end in a temporary workspace (the real SmolLM2 model, on CPU)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_quick_end_to_end_and_rerun_reuses(tmp_path):
    env_cmd = [sys.executable, "-m", "ftlab", "--workdir", str(tmp_path), "demo", "--quick", "--threads", "1"]
    r = subprocess.run(env_cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    models = sorted(p.name for p in (tmp_path / "Models").iterdir() if not p.name.startswith("."))
    assert models == [
        "SmolLM2-135M-Instruct-base",
        "SmolLM2-135M-Instruct-synthetic-arith_SFT_LoRa16_GPTQ_w4_g64",
        "SmolLM2-135M-Instruct-synthetic-arith_SFT_LoRa16_NoQuant",
    ]
    metrics = tmp_path / "Testing" / "metrics"
    for m in models:
        doc = json.loads((metrics / f"{m}.json").read_text())
        assert doc["status"] == "complete" and doc["datasets"]["synthetic-arith"]["n"] == 24
        assert (metrics / f"{m}.samples.jsonl").exists()
        assert (tmp_path / "Models" / m / "training_metadata.json").exists()
    assert (tmp_path / "Testing" / "metrics_summary.csv").exists()
    assert list((tmp_path / "Testing" / "plots").glob("*.png"))
    for m in models:
        assert m in out  # the comparison table names every model
    assert "[6/6] compare" in out and "synthetic-arith accuracy: base" in out

    # A rerun reuses everything: no training, no evaluation.
    r2 = subprocess.run(env_cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "reused" in r2.stdout and "0 evaluated, 0 failed" in r2.stdout
