"""The committed benchmark scripts still run (tiny model, a handful of prompts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_eval_throughput_benchmark_runs_and_matches_answers(tmp_path):
    out = tmp_path / "eval.json"
    env = dict(os.environ, FTLAB_CACHE=os.environ.get("FTLAB_CACHE", str(tmp_path / "cache")))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "eval_throughput.py"), "--model", "scratch:tiny", "--n", "6",
         "--sweep", "2", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["n"] == 6 and doc["threads"] == 1
    assert doc["batch_size"] == "auto" and doc["batch_size_used"] == 6  # auto: memory is plenty, one row per prompt
    # Greedy answers of ftlab's batched generator equal the one-at-a-time loop's.
    assert doc["identical_until_early_stop_runs"] == [1.0, 1.0]
    assert doc["identical_answers_runs"] == [1.0, 1.0]
    assert [r["batch_size"] for r in doc["batch_sweep"]] == [2, 6]
    for row in doc["batch_sweep"]:
        assert 0 < row["matmul_floor_s"] and row["max_speedup_at_floor"] > 0
    tokens = doc["ftlab_tokens"]
    assert tokens["prefill_tokens"] == tokens["prompt_tokens"] - 6 * tokens["shared_prefix_tokens"]
