"""The committed benchmark scripts still run (tiny model, a handful of prompts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_eval_throughput_benchmark_runs_and_matches_answers(tmp_path, shared_datasets):
    out = tmp_path / "eval.json"
    env = dict(os.environ, FTLAB_CACHE=os.environ.get("FTLAB_CACHE", str(tmp_path / "cache")))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "eval_throughput.py"), "--model", "scratch:tiny", "--n", "6",
         "--sweep", "2", "--threads", "1", "--ll-n", "8", "--source-dir", str(shared_datasets), "--out", str(out)],
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
    # The peer: lm-eval's generate_until at auto and at ftlab's batch gives the same answers.
    peer = doc["lm_eval_generate_until"]
    assert [r["batch_size"] for r in peer] == ["auto", 6] and peer[1]["batch_size_used"] == 6
    for r in peer:
        assert r["identical_answers_runs"] == [1.0, 1.0] and r["identical_until_early_stop_runs"] == [1.0, 1.0]
        assert r["wall_s"] > 0 and r["ftlab_speedup_wall"] > 0
    assert doc["speedup_vs_lm_eval_wall"] == min(r["ftlab_speedup_wall"] for r in peer)
    # Log-likelihood: lm-eval's loglikelihood on the pairs ftlab scores picks the same options.
    ll = doc["loglikelihood"]
    assert ll["n"] == 8 and ll["kv_cache_reuse"] is True
    # Questions of similar context length share a forward (MIN_FILL): more than one, at most all.
    assert 1 < ll["ftlab"]["questions_per_forward"] <= 8
    # lm-eval at auto, then at the batch size auto settled on (no probe).
    assert [r["batch_size"] for r in ll["lm_eval"]] == ["auto", ll["lm_eval"][0]["batch_size_used"]]
    for r in ll["lm_eval"]:
        assert r["identical_predictions"] == 1.0 and r["identical_norm_predictions"] == 1.0
        assert r["max_abs_logprob_diff"] < 1e-3 and r["ftlab_speedup_samples_per_s"] > 0
