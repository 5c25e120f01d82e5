"""`ftlab study plan`: the variance it plans from (assumed or measured), the power and items it
prints, the compute from measured job times, and its errors (no model is loaded)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ftlab.compare.crossed import VarianceModel
from ftlab.errors import FtlabError
from ftlab.paths import Workspace

REPO = Path(__file__).resolve().parents[2]


def study_file(tmp_path: Path, analysis: dict | None = None, seeds=(0, 1, 2), limit: int = 200) -> Path:
    spec = {
        "name": "planned", "bases": ["scratch:tiny"], "datasets": ["synthetic-arith"],
        "train": {"fixed": {"train.max_steps": 2, "data.val_size": 0}, "grid": {"peft.r": [4, 16]},
                  "seeds": list(seeds)},
        "quantize": {"variants": [{"method": "HQQ", "bits": 4, "group_size": 64}]},
        "evaluate": {"datasets": ["synthetic-arith"], "limit": limit},
    }
    if analysis is not None:
        spec["analysis"] = analysis
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def open_(path: Path):
    from ftlab.study.run import open_study

    return open_study(path, Workspace(path.parent))


def linear_frame(model: VarianceModel, recipes: int, seeds: int, items: int, rng) -> pd.DataFrame:
    """A samples frame drawn from the crossed linear model with known components."""
    v = rng.normal(0.5, 0.2, items)
    rows = []
    for r in range(recipes):
        g = rng.normal(0, math.sqrt(model.item_var / 2), items)
        for s in range(seeds):
            y = v + g + rng.normal(0, math.sqrt(model.seed_var)) + rng.normal(0, math.sqrt(model.cell_var), items)
            for i in range(items):
                rows.append({"recipe": f"R{r}", "seed": s, "quant": "none", "task": "t", "index": i,
                             "correct": bool(y[i] > 0.5), "score": float(y[i]), "model": f"R{r}-{s}",
                             "source_model": None})
    return pd.DataFrame(rows)


def test_measured_variance_recovers_the_components_of_a_known_model():
    from ftlab.study.plan import measured_variance

    truth = VarianceModel(seed_var=0.04**2, item_var=0.05, cell_var=0.1)
    frame = linear_frame(truth, recipes=4, seeds=4, items=1500, rng=np.random.default_rng(3))
    got = measured_variance(frame, "t", "a simulated study")
    assert got.model.cell_var == pytest.approx(truth.cell_var, rel=0.05)
    assert got.model.item_var == pytest.approx(truth.item_var, rel=0.2)
    assert math.sqrt(got.model.seed_var) == pytest.approx(0.04, rel=0.5)  # 4 recipes x 4 seeds: a rough estimate
    assert "4 recipe(s) with 4, 4, 4, 4 seeds on 1500 items (6 pair(s) of recipes)" in got.source
    # One seed per recipe: nothing to measure the seed spread from.
    assert measured_variance(frame[frame["seed"] == 0], "t", "x") is None


def test_assumed_variance_is_conservative_by_default():
    from ftlab.study.plan import assumed_variance
    from ftlab.study.spec import StudyAnalysisSettings

    assert assumed_variance(StudyAnalysisSettings(expected_score=0.3)) is None
    v = assumed_variance(StudyAnalysisSettings(expected_score=0.3, expected_seed_std=0.02))
    assert v.model == VarianceModel(seed_var=0.02**2, item_var=2 * 0.3 * 0.7, cell_var=0.0)
    v = assumed_variance(StudyAnalysisSettings(expected_score=0.3, expected_seed_std=0.02, expected_discordance=0.1))
    assert v.model.item_var == 0.1


def test_plan_prints_power_items_per_seed_count_and_the_planned_row(tmp_path):
    from ftlab.study.plan import comparisons_per_task, plan_text

    path = study_file(tmp_path, {"min_difference": 0.05, "expected_score": 0.3, "expected_seed_std": 0.02,
                                 "expected_discordance": 0.15})
    study = open_(path)
    # Per task: base + 2 recipes unquantized (2 comparisons with the best), 2 HQQ recipes (1).
    assert comparisons_per_task(study.spec, study.recipes) == 3
    text = plan_text(study)
    lines = text.splitlines()
    assert lines[0].startswith("Plan for study planned") and "2 recipe(s) x 3 seed(s), 200 items per task" in lines[0]
    assert "alpha 0.05 over 3 comparison(s) with the best per task: 0.0167 each" in lines[1]
    assert "job times: none measured yet for planned" in text
    design = VarianceModel(0.02**2, 0.15, 0.0).design(3, 200)
    power, mdd = design.power(0.05, 0.05 / 3), design.mdd(0.05 / 3, 0.8)
    assert f"planned design (3 seeds x 200 items): power {power:.2f} for a difference of 0.05; " \
           f"minimum detectable difference {mdd:.4f}" in text
    rows = {int(ln.split()[0]): ln for ln in lines if ln.strip() and ln.split()[0].isdigit()}
    assert sorted(rows) == [2, 3, 5, 8, 10, 20] and rows[3].endswith("<- planned")
    from ftlab.compare.crossed import items_for_power

    model = VarianceModel(0.02**2, 0.15, 0.0)
    assert items_for_power(model, 0.05, 5, alpha=0.05 / 3, power=0.8, max_items=100_000) is None
    assert "not reachable" in rows[5]
    need = items_for_power(model, 0.05, 8, alpha=0.05 / 3, power=0.8, max_items=100_000)
    assert f"{need:,}" in rows[8] and model.design(8, need).power(0.05, 0.05 / 3) >= 0.8
    # A seed spread as large as the difference: even 20 seeds do not reach the power, whatever the items.
    text = plan_text(open_(study_file(tmp_path, {"min_difference": 0.05, "expected_score": 0.3,
                                                 "expected_seed_std": 0.08})))
    assert "not reachable: the seed spread alone keeps the power below 0.8 with 20 seeds" in text


def test_a_pooled_seed_spread_plans_with_the_recipes_degrees_of_freedom(tmp_path):
    from ftlab.compare.crossed import items_for_power
    from ftlab.study.plan import plan_text

    path = study_file(tmp_path, {"min_difference": 0.05, "expected_score": 0.3, "expected_seed_std": 0.02,
                                 "expected_discordance": 0.15, "seed_spread": "pooled"})
    text = plan_text(open_(path))
    assert "with one seed spread pooled over 2 recipes (analysis.seed_spread)" in text.splitlines()[1]
    model = VarianceModel(0.02**2, 0.15, 0.0)
    design = model.design(3, 200, pooled=2)
    assert f"power {design.power(0.05, 0.05 / 3):.2f} for a difference of 0.05" in text
    # 2 recipes x 8 seeds pool 14 degrees of freedom in one term: fewer items than paired (7) or than
    # two unpaired terms of 7 each (1,288 against 1,753 and 1,543).
    need = {how: items_for_power(model, 0.05, 8, alpha=0.05 / 3, power=0.8, max_items=100_000, **kw)
            for how, kw in {"pooled": {"pooled": 2}, "paired": {}, "unpaired": {"paired": False}}.items()}
    assert need["pooled"] < need["unpaired"] < need["paired"], need


def test_plan_compute_comes_from_measured_job_times(tmp_path):
    from ftlab.study.plan import job_times, plan_text

    path = study_file(tmp_path, {"min_difference": 0.05, "expected_score": 0.3, "expected_seed_std": 0.02,
                                 "expected_discordance": 0.15})
    study = open_(path)
    ledger = study.engine().ledger
    seconds = {"snapshot": 10.0, "train": 100.0, "quantize": 30.0, "evaluate": 40.0}
    for job in study.graph.jobs:
        ledger.path(job.id).parent.mkdir(parents=True, exist_ok=True)
        ledger.path(job.id).write_text(json.dumps({"id": job.id, "state": "done", "runtime_s": seconds[job.kind]}))
    times = job_times(study)
    assert (times.train_s, times.quantize_s) == (100.0, 30.0) and times.eval_item_s == pytest.approx(40 / 200)
    # 2 recipes x 3 seeds: 6 trainings, 6 quantizations, 13 evaluations of 200 items.
    assert times.compute_s(study.spec, 2, 3, 200) == pytest.approx(6 * 100 + 6 * 30 + 13 * 200 * 0.2)
    text = plan_text(study)
    assert "measured on 26 finished job(s) of planned: training 100 s, quantization 30 s" in text
    assert f"compute of the planned design: {(6 * 100 + 6 * 30 + 13 * 40) / 60:.0f} min" in text


def test_plan_errors_are_one_line(tmp_path):
    from ftlab.study.plan import plan_text

    with pytest.raises(FtlabError, match="analysis.min_difference is not set"):
        plan_text(open_(study_file(tmp_path)))
    with pytest.raises(FtlabError, match="no variance to plan from: set analysis.expected_score"):
        plan_text(open_(study_file(tmp_path, {"min_difference": 0.05})))
    one = open_(study_file(tmp_path, {"min_difference": 0.05, "expected_score": 0.3, "expected_seed_std": 0.02},
                           seeds=(0,)))
    assert "warning: one seed per recipe can only compare trained models" in plan_text(one)
    path = study_file(tmp_path, {"min_difference": 2, "expected_seed_std": -1})
    r = subprocess.run([sys.executable, "-m", "ftlab", "--workdir", str(tmp_path), "study", "plan", str(path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "analysis.min_difference=2.0 must lie in (0, 1]" in r.stderr
    assert "analysis.expected_seed_std=-1" in r.stderr
