"""`ftlab demo --quick` end to end in a temporary workspace (the real SmolLM2 model, on CPU): the
demo is a study run with two seeds, ends in its recipe-level report, `ftlab study plan` measures
its variance and job times, and a rerun reuses every job."""

import json
import subprocess
import sys
import time

import pytest

from ftlab.naming import parse_run_name


@pytest.mark.slow
def test_demo_quick_is_a_study_ending_in_a_report_and_a_rerun_reuses_everything(tmp_path):
    cmd = [sys.executable, "-m", "ftlab", "--workdir", str(tmp_path), "demo", "--quick", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    models = sorted(p.name for p in (tmp_path / "Models").iterdir() if not p.name.startswith("."))
    plain = [parse_run_name(m).with_variant(None).render() for m in models]
    assert plain == [  # two seeds of the recipe, each quantized
        "SmolLM2-135M-Instruct-base",
        "SmolLM2-135M-Instruct-synthetic-arith_SFT_LoRa16_BNB_int8",
        "SmolLM2-135M-Instruct-synthetic-arith_SFT_LoRa16_BNB_int8",
        "SmolLM2-135M-Instruct-synthetic-arith_SFT_LoRa16_NoQuant",
        "SmolLM2-135M-Instruct-synthetic-arith_SFT_LoRa16_NoQuant",
    ]
    metrics = tmp_path / "Testing" / "metrics"
    for m in models:
        doc = json.loads((metrics / f"{m}.json").read_text())
        assert doc["status"] == "complete" and doc["datasets"]["synthetic-arith"]["n"] == 24
        assert (tmp_path / "Models" / m / "training_metadata.json").exists()
    report = tmp_path / "Testing" / "studies" / "demo-quick"
    for name in ("report.md", "report.html", "frame.parquet", "frame.csv"):
        assert (report / name).is_file(), name
    assert "10 jobs ran, 0 were already done, 0 failed, 0 skipped" in out
    assert "synthetic-arith:" in out and f"report: {report / 'report.html'}" in out
    # Two seeds: the verdict is about the recipe, its interval over seeds and items.
    assert "Best recipe: `peft.method=LoRa, peft.r=16`, score" in out and "over 2 seeds" in out
    assert "One seed per recipe" not in out and "Sensitivity: with 2 seeds per recipe and 24 items" in out
    assert "recovery" in (report / "report.md").read_text().lower()  # each quantized model against its fine-tune
    assert "over its 2 seeds" in out
    assert "Traceback" not in r.stderr

    # The plan, after the run: variance and job times measured on this study.
    from ftlab.commands.demo import study_file

    plan = subprocess.run([sys.executable, "-m", "ftlab", "--workdir", str(tmp_path), "study", "plan",
                           str(study_file(quick=True))], capture_output=True, text=True, timeout=600)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "variance from this study's results: 1 recipe(s) with 2 seeds on 24 items" in plan.stdout
    assert "job times: measured on 10 finished job(s) of demo-quick: training" in plan.stdout
    assert "planned design (2 seeds x 24 items): power" in plan.stdout and "<- planned" in plan.stdout

    # A rerun reuses every job: nothing trains, quantizes or evaluates again.
    t0 = time.monotonic()
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "0 jobs ran, 10 were already done, 0 failed, 0 skipped" in r2.stdout
    assert time.monotonic() - t0 < 120
