"""Adaptive studies: the study file's `adaptive:` section, the look's decisions, and whole adaptive
studies on scratch:tiny through the CLI (rounds recorded, kill -9 between rounds, dry run, report)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from ftlab.errors import ConfigError, FtlabError
from ftlab.study.analysis import Config
from ftlab.study.sequential import DIFFERENT, EQUIVALENT, OPEN, STOP_CEILING, Costs, Limits, decide, look, next_items
from ftlab.study.spending import SPENDING, hwang_shih_decani, spending
from ftlab.study.spec import load_study

sys.path.insert(0, str(Path(__file__).parent))
from test_study import TINY_TRAIN, ftlab_cmd, journal, run_cli  # noqa: E402


def _config(y: np.ndarray, seeded: bool = True) -> Config:
    s, n = y.shape
    return Config(seeded, [f"m{k}" for k in range(s)], list(range(s)) if seeded else [None], np.arange(n), y,
                  y.astype(bool))


def adaptive_file(tmp_path: Path, shared: Path, **adaptive) -> Path:
    spec = {
        "name": "adaptive-tiny", "bases": ["scratch:tiny"], "datasets": ["synthetic-arith"], "data_dir": str(shared),
        "train": {"fixed": {**TINY_TRAIN, "train.learning_rate": 0.05}, "grid": {"peft.method": ["LoRa", "rsLoRa"]},
                  "seeds": [0, 1, 2]},
        "evaluate": {"datasets": ["arc:ll"]},
        "adaptive": {"min_difference": 0.05, "seeds": 2, "items": 5, "max_items": 10, **adaptive},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_every_problem_of_an_adaptive_section_is_reported_at_once(tmp_path, shared_datasets):
    path = adaptive_file(tmp_path, shared_datasets, seeds=1, max_seeds=5, items=None, item_growth=1.0,
                         spending="linear", budget_hours=0, futility=1.5)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    text = "\n".join(err.value.problems)
    for needle in ("adaptive.seeds=1", "train.seeds lists 3 seed(s); adaptive.max_seeds=5", "adaptive.items=None",
                   "adaptive.item_growth=1.0", "adaptive.budget_hours=0", "adaptive.futility=1.5 must lie in [0, 1)",
                   "adaptive.spending='linear': unknown alpha spending function 'linear'; valid: hwang-shih-decani, "
                   "obrien-fleming, pocock, or hwang-shih-decani:GAMMA (e.g. hwang-shih-decani:-16)"):
        assert needle in text, text


def test_a_study_file_may_name_another_hwang_shih_decani_gamma(tmp_path, shared_datasets):
    spec, _ = load_study(adaptive_file(tmp_path, shared_datasets, spending="hwang-shih-decani:-16"))
    assert spec.adaptive.spending == "hwang-shih-decani:-16"
    with pytest.raises(ConfigError) as err:
        load_study(adaptive_file(tmp_path, shared_datasets, spending="pocock:2"))
    assert any("adaptive.spending='pocock:2': only hwang-shih-decani:GAMMA takes a parameter" in p
               for p in err.value.problems), err.value.problems


def test_an_adaptive_study_needs_a_difference_that_matters_and_a_ceiling(tmp_path, shared_datasets):
    path = adaptive_file(tmp_path, shared_datasets, min_difference=None, max_items=None)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert any("adaptive.min_difference: give" in p for p in err.value.problems)
    assert any("adaptive.max_items: give" in p for p in err.value.problems)


def test_spending_functions_spend_alpha_by_the_end_and_nothing_at_the_start():
    for name in SPENDING.names():
        f = SPENDING.get(name).spent
        values = [f(t, 0.05) for t in np.linspace(0, 1, 21)]
        assert values[0] == 0 and values[-1] == pytest.approx(0.05)
        assert all(b >= a for a, b in zip(values, values[1:]))
    # O'Brien-Fleming type at half the information: 2 - 2 Phi(z_0.975 / sqrt(0.5)) (Lan & DeMets 1983),
    # with Phi and its inverse from scipy rather than the standard library the module uses.
    from scipy.stats import norm

    assert SPENDING.get("obrien-fleming").spent(0.5, 0.05) == pytest.approx(2 * norm.sf(norm.isf(0.025) / 0.5 ** 0.5))
    # Hwang-Shih-DeCani (1990) with gamma -8, written out with exp rather than the module's expm1: at
    # three quarters of the information it has spent 0.0068 of 0.05, O'Brien-Fleming 0.0236.
    hsd = SPENDING.get("hwang-shih-decani").spent
    assert hsd(0.75, 0.05) == pytest.approx(0.05 * (1 - np.exp(8 * 0.75)) / (1 - np.exp(8)))
    assert hsd(0.75, 0.05) == pytest.approx(0.00675, abs=5e-5)
    assert hsd(0.75, 0.05) < SPENDING.get("obrien-fleming").spent(0.75, 0.05) / 3
    # Gamma 0 is the family's limit, alpha t (the formula itself divides 0 by 0 there).
    assert hwang_shih_decani(0)(0.3, 0.05) == pytest.approx(0.015)
    assert hwang_shih_decani(1e-6)(0.3, 0.05) == pytest.approx(0.015, rel=1e-5)
    # A study file may name another member of the family: hwang-shih-decani:GAMMA.
    steep = spending("hwang-shih-decani:-16")
    assert steep.name == "hwang-shih-decani:-16" and steep.spent(1, 0.05) == pytest.approx(0.05)
    assert steep.spent(0.75, 0.05) == pytest.approx(0.05 * (1 - np.exp(16 * 0.75)) / (1 - np.exp(16)))
    assert spending("hwang-shih-decani").spent(0.75, 0.05) == hsd(0.75, 0.05)
    for bad, needle in (("pocock:2", "only hwang-shih-decani:GAMMA takes a parameter"),
                        ("hwang-shih-decani:steep", "GAMMA must be a number")):
        with pytest.raises(FtlabError, match=needle):
            spending(bad)


def test_item_rounds_never_leave_a_last_step_smaller_than_the_growth():
    def ladder(items, growth, ceiling):
        out = [items]
        while out[-1] < ceiling:
            out.append(next_items(out[-1], growth, ceiling))
        return out

    assert ladder(100, 2, 1000) == [100, 200, 400, 1000]  # not 400 -> 800 -> 1000
    assert ladder(30, 2, 120) == [30, 60, 120]
    assert ladder(100, 2, 150) == [100, 150]
    assert ladder(100, 1.5, 500) == [100, 150, 225, 500]
    assert ladder(3, 1.1, 5) == [3, 4, 5]  # at least one item more per round


def test_a_look_decides_far_apart_recipes_different_and_identical_ones_equivalent():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.2, 0.8, 400)
    same = [(rng.random((5, 400)) < p).astype(float) for _ in range(2)]
    far = (rng.random((5, 400)) < p - 0.18).astype(float)
    arms = {"t": {"a": _config(same[0]), "b": _config(same[1]), "far": _config(far)}}
    rows = {(r.kind, r.recipe): r for r in look(arms, baseline="a", alpha=0.05, margin=0.1, pair_seeds=True, round_no=3)}
    assert rows[("best", "far")].state == DIFFERENT and rows[("best", "far")].decided_round == 3
    assert rows[("baseline", "far")].state == DIFFERENT
    equal = rows[("baseline", "b")]
    assert equal.state == EQUIVALENT, equal  # 5 seeds x 400 items pin +-0.1
    # The same data at a look with no alpha to spend decides nothing different.
    rows0 = look(arms, baseline="a", alpha=0.0, margin=0.1, pair_seeds=True, round_no=1)
    assert not any(r.state == DIFFERENT for r in rows0)


def test_a_design_tested_once_reads_each_configurations_own_first_seeds_and_items():
    # adaptive_sim.tested_once: the fixed designs of the simulations and the designs an oracle fixes in
    # hindsight (benchmarks/adaptive_study.py --oracle), which give configurations different sizes.
    from ftlab.compare.simulate import StudyModel
    from ftlab.study.adaptive_sim import BASE, TASK, tested_once

    model = StudyModel(level=0.4, item_sd=1.5, seed_sd=0.1, interaction_sd=0.3)
    recipes, base = model.draw_recipes(np.random.default_rng(3), [0.0, -0.4, -2.0], 4, 300)
    limits = Limits(alpha=0.05, margin=0.03, max_seeds=4, max_items=300)
    designs = {BASE: (1, 300), "r0": (4, 300), "r1": (3, 200), "r2": (2, 100)}
    rows = tested_once(recipes, base, designs, limits=limits)
    by = {(r.kind, r.recipe): r for r in rows}
    assert (by[("baseline", "r0")].seeds, by[("baseline", "r0")].items) == (4, 300)
    assert (by[("baseline", "r1")].seeds, by[("baseline", "r1")].items) == (3, 200)
    assert (by[("baseline", "r2")].seeds, by[("baseline", "r2")].items) == (2, 100)  # a pair: the items both answered
    arms = {TASK: {BASE: _config(base[:, :300], seeded=False), "r0": _config(recipes[0]),
                   "r1": _config(recipes[1, :3, :200]), "r2": _config(recipes[2, :2, :100])}}
    assert rows == look(arms, baseline=BASE, alpha=0.05, margin=0.03, pair_seeds=True, round_no=1)
    # Other sizes for the same draws are other data: r2 on all its seeds and items is another test.
    whole = tested_once(recipes, base, {**designs, "r2": (4, 300)}, limits=limits)
    assert {(r.kind, r.recipe): r for r in whole}[("baseline", "r2")].p_value != by[("baseline", "r2")].p_value


def test_the_best_is_ranked_by_item_adjusted_means_not_by_means_over_different_items():
    from sklearn.linear_model import LinearRegression

    from ftlab.study.sequential import adjusted_means, family

    rng = np.random.default_rng(3)
    logit = np.sort(rng.normal(0, 1.5, 1000))[::-1]  # the first items easiest, as when items grew past easy ones
    def draw(seeds, items, effect):
        return _config((rng.random((seeds, items)) < 1 / (1 + np.exp(-(logit[:items] + effect)))).astype(float))
    # "early" stopped at the first 200 (easy) items; "top" went on to 1000 and is truly better.
    configs = {"top": draw(5, 1000, 0.5), "early": draw(3, 200, 0.0), "low": draw(5, 1000, -1.0),
               "base": _config(draw(1, 1000, -0.5).score, seeded=False)}
    assert configs["early"].score.mean() > configs["top"].score.mean()  # plain means would rank "early" first
    means = adjusted_means(configs)
    # The reference: the additive model configuration + item fitted by scikit-learn's least squares on
    # one-hot columns, each configuration's per-item mean (over its models) one observation.
    names = list(configs)
    x, y = [], []
    for k, name in enumerate(names):
        for item, value in zip(configs[name].items, configs[name].score.mean(axis=0)):
            row = np.zeros(len(names) + 1000)
            row[k], row[len(names) + item] = 1, 1
            x.append(row)
            y.append(value)
    coef = LinearRegression(fit_intercept=False).fit(np.array(x), np.array(y)).coef_[:len(names)]
    # Only differences between configurations are identified.
    assert np.allclose([means[n] - means["low"] for n in names], coef - coef[names.index("low")], atol=1e-9)
    assert max(means, key=means.get) == "top"
    assert {other for _, kind, _, other in family({"t": configs}, "base") if kind == "best"} == {"top"}
    # With the same items for all, the ranking is the plain means'.
    same = {n: c.on(np.arange(200)) for n, c in configs.items()}
    plain = {n: c.score.mean() for n, c in same.items()}
    adjusted = adjusted_means(same)
    assert np.allclose([adjusted[n] - adjusted["low"] for n in names], [plain[n] - plain["low"] for n in names])


def test_predictive_power_is_the_chance_of_a_decision_at_the_ceiling_over_what_the_truth_may_be():
    # The reference is the quantity sampled step by step (flat prior: the truth ~ N(estimate, se^2);
    # the data still to come estimate it with variance se_c^2 / (1 - w); the ceiling's estimate
    # weighs the two by information), not the closed form the module uses.
    from scipy.stats import norm

    from ftlab.compare.crossed import VarianceModel
    from ftlab.study.sequential import Row, predictive_power

    model = VarianceModel(seed_var=4e-4, item_var=0.05, cell_var=0.1)
    limits = Limits(alpha=0.05, margin=0.03, max_seeds=5, max_items=1000, futility=0.1)
    pairs = 55
    w = model.design(5, 1000).variance() / model.design(3, 200).variance()
    rng = np.random.default_rng(3)
    for estimate, se in ((0.0, 0.02), (0.01, 0.015), (-0.04, 0.02), (0.002, 0.004)):
        row = Row("t", "best", "x", "y", estimate, 0.5, 0.5, 3, 3, 200, OPEN, None, se)
        got = predictive_power(row, model, limits=limits, pairs=pairs, pooled=None)
        se_c = se * np.sqrt(w)
        truth = rng.normal(estimate, se, 400_000)
        new = rng.normal(truth, se_c / np.sqrt(1 - w))
        final = w * estimate + (1 - w) * new
        different = np.abs(final) > norm.isf(limits.alpha / 2) * se_c
        equivalent = np.abs(final) < limits.margin - norm.isf(limits.alpha / pairs) * se_c
        assert got == pytest.approx(np.mean(different | equivalent), abs=3e-3), (estimate, se)
    # A comparison at the ceiling, or without a measured spread, is never judged futile.
    at_top = Row("t", "best", "x", "y", 0.0, 0.5, 0.5, 5, 5, 1000, OPEN, None, 0.01)
    assert predictive_power(at_top, model, limits=limits, pairs=pairs, pooled=None) == 1.0
    flat = Row("t", "best", "x", "y", 0.0, 0.5, 0.5, 3, 3, 200, OPEN, None, 0.0)
    assert predictive_power(flat, model, limits=limits, pairs=pairs, pooled=None) == 1.0


def test_a_tie_no_ceiling_can_decide_stops_for_futility_and_the_last_look_spends_what_is_left():
    from ftlab.study.sequential import FUTILE, STOP_FUTILE

    rng = np.random.default_rng(4)
    p = rng.uniform(0.2, 0.8, 400)
    same = [(rng.random((4, 400)) < p).astype(float) for _ in range(2)]
    arms = {"t": {"base": _config((rng.random((1, 400)) < p).astype(float), seeded=False),
                  "a": _config(same[0]), "b": _config(same[1])}}
    designs = {"base": (1, 400), "a": (4, 400), "b": (4, 400)}
    costs = Costs(train_s=100, quantize_s=0, eval_item_s=0.1, tasks=1)
    # +-0.001 is out of reach of 5 seeds x 500 items: "equivalent" cannot be decided, and "different"
    # is unlikely for identical recipes.
    kwargs = dict(alpha=0.05, margin=0.001, max_seeds=5, max_items=500)
    d = decide(arms, baseline="base", limits=Limits(**kwargs, futility=0.3), round_no=2, frontier=(4, 400),
               designs=designs, earlier=None, costs=costs)
    assert all(r.state == FUTILE and r.predictive_power < 0.3 and r.decided_round == 2 for r in d.rows), d.rows
    assert d.stop == STOP_FUTILE and d.spent == pytest.approx(0.05) and not d.open and d.action is None
    assert "3 comparison(s) found futile" in d.why
    # A futile comparison is still tested at later looks: carried into the next look, it keeps its
    # state (and the round that found it futile) unless that look decides it.
    again = look(arms, baseline="base", alpha=0.05, margin=0.001, pair_seeds=True, round_no=3,
                 earlier={r.key: r for r in d.rows})
    assert [(r.state, r.decided_round) for r in again] == [(FUTILE, 2)] * 3
    # Without a threshold the same look keeps them open and adds to them.
    plain = decide(arms, baseline="base", limits=Limits(**kwargs), round_no=2, frontier=(4, 400), designs=designs,
                   earlier=None, costs=costs)
    assert not any(r.state == FUTILE for r in plain.rows) and plain.stop is None and plain.open


def test_a_decision_picks_the_cheaper_precision_and_stops_at_the_ceiling():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.3, 0.7, 40)
    arms = {"t": {"base": _config((rng.random((1, 40)) < p).astype(float), seeded=False),
                  **{r: _config((rng.random((2, 40)) < p).astype(float)) for r in ("x", "y")}}}
    designs = {"base": (1, 40), "x": (2, 40), "y": (2, 40)}
    limits = Limits(alpha=0.05, margin=0.02, max_seeds=4, max_items=160)
    cheap_items = Costs(train_s=1000, quantize_s=0, eval_item_s=0.01, tasks=1)
    d = decide(arms, baseline="base", limits=limits, round_no=1, frontier=(2, 40), designs=designs, earlier=None,
               costs=cheap_items)
    assert d.stop is None and d.open and d.alpha < 1e-3
    assert set(d.options) == {"items", "seeds"}
    best = max(d.options, key=lambda a: d.options[a]["width_cut"] / d.options[a]["seconds"])
    assert d.action == best and d.next_frontier == tuple(d.options[best]["next"])
    # At the ceiling the look spends all that is left and the study stops.
    top = decide(arms, baseline="base", limits=Limits(alpha=0.05, margin=0.02, max_seeds=2, max_items=40),
                 round_no=2, frontier=(2, 40), designs=designs, earlier=d, costs=cheap_items)
    assert top.stop in (STOP_CEILING, "decided") and top.spent == pytest.approx(0.05)
    assert top.information == 1.0


@pytest.mark.slow
def test_adaptive_study_runs_rounds_survives_kill9_between_rounds_and_reports(tmp_path, shared_datasets):
    ws = tmp_path
    path = adaptive_file(tmp_path, shared_datasets)
    rounds_file = ws / "Testing" / "studies" / "adaptive-tiny" / "rounds.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(ftlab_cmd(ws, "study", "run", str(path), "--threads", "1", "--no-report"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ws)
    deadline = time.time() + 600
    while time.time() < deadline and not rounds_file.exists():  # round 1's look is recorded
        assert proc.poll() is None, "the study ended before its first look was recorded"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # between rounds (or just into round 2)
    proc.wait()
    first = json.loads(rounds_file.read_text())
    assert first["rounds"][0]["decision"]["round"] == 1

    plan = run_cli(ws, "study", "run", str(path), "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "round 1 look:" in plan.stdout and "round 2:" in plan.stdout, plan.stdout

    r = run_cli(ws, "study", "run", str(path), "--threads", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(rounds_file.read_text())
    decisions = [x["decision"] for x in doc["rounds"]]
    assert decisions[0] == first["rounds"][0]["decision"]  # a recorded look is never made again
    assert all(d is not None for d in decisions) and decisions[-1]["stop"]
    assert len(decisions) >= 2, decisions
    assert "Adaptive study (" in r.stdout and "report:" in r.stdout
    # Each job once: no job finished twice across the killed driver and the rerun.
    done = Counter(e["id"] for e in journal(ws) if e["event"] == "done")
    assert max(done.values()) == 1, done
    # Rounds only add: the last design holds every earlier one, and a recipe's models are trained once.
    designs = [x["designs"] for x in doc["rounds"]]
    for a, b in zip(designs, designs[1:]):
        assert all(b[k][0] >= a[k][0] and b[k][1] >= a[k][1] for k in a)
    report = (ws / "Testing" / "studies" / "adaptive-tiny" / "report.md").read_text()
    assert "## Adaptive rounds" in report and "Decisions at the last look" in report
    again = run_cli(ws, "study", "run", str(path), "--threads", "1", "--no-report")
    assert "0 failed" in again.stdout and json.loads(rounds_file.read_text()) == doc  # a no-op rerun


@pytest.mark.slow
@pytest.mark.ray
def test_ray_backend_runs_an_adaptive_study(tmp_path, shared_datasets):
    pytest.importorskip("ray", reason="the optional ray extra is not installed (uv sync --extra ray)")
    path = adaptive_file(tmp_path, shared_datasets, items=4, max_items=6)
    r = run_cli(tmp_path, "study", "run", str(path), "--backend", "ray", "--threads", "1", "--no-report")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((tmp_path / "Testing" / "studies" / "adaptive-tiny" / "rounds.json").read_text())
    assert doc["rounds"][-1]["decision"]["stop"]
    assert OPEN in {row["state"] for row in doc["rounds"][0]["decision"]["rows"]}


def test_rounds_file_pins_the_study_and_refuses_a_changed_or_damaged_one(tmp_path, shared_datasets):
    from ftlab.study.rounds import current_design, read_rounds, write_rounds
    from ftlab.study.sequential import Decision, Row

    path = adaptive_file(tmp_path, shared_datasets)
    spec, recipes = load_study(path)
    folder = tmp_path / "study"
    assert current_design(folder, spec, recipes) == {"base": (1, 5), "peft.method=LoRa": (2, 5),
                                                     "peft.method=rsLoRa": (2, 5)}
    row = Row("arc:ll", "best", "peft.method=LoRa", "base", -0.1, float("nan"), 0.5, 2, 1, 5, OPEN, None)
    decision = Decision(1, (2, 5), 0.2, 0.0, 0.0, [row], ["base", "peft.method=LoRa"], "items", (2, 10), None, "why")
    rounds = read_rounds(folder, spec, recipes)
    rounds[-1]["decision"] = decision.to_dict()
    rounds.append({"designs": {**rounds[0]["designs"], "peft.method=LoRa": (2, 10), "base": (1, 10)}, "decision": None})
    write_rounds(folder, spec, recipes, rounds)
    back = read_rounds(folder, spec, recipes)
    assert back[-1]["designs"]["peft.method=LoRa"] == (2, 10) and len(back) == 2
    again = Decision.from_dict(back[0]["decision"])
    assert again.next_frontier == (2, 10) and again.rows[0].p_value is None  # NaN is stored as null
    # Another min_difference: the recorded decisions were made under the old one.
    changed, _ = load_study(path, ["adaptive.min_difference=0.1"])
    with pytest.raises(FtlabError, match="the study's settings changed since round 1") as err:
        read_rounds(folder, changed, recipes)
    assert "adaptive.min_difference: 0.05 -> 0.1" in str(err.value), err.value  # it names what changed
    # A default that changed between versions reads the same way, naming what to pin in the file:
    # a study begun when O'Brien-Fleming was the default spending.
    doc = json.loads((folder / "rounds.json").read_text())
    doc["settings"]["adaptive"]["spending"] = "obrien-fleming"
    (folder / "rounds.json").write_text(json.dumps(doc))
    with pytest.raises(FtlabError, match='adaptive.spending: "obrien-fleming" -> "hwang-shih-decani"'):
        read_rounds(folder, spec, recipes)
    doc["settings"]["adaptive"]["spending"] = "hwang-shih-decani"
    (folder / "rounds.json").write_text(json.dumps(doc))
    # A pooled seed spread is part of what a decision depends on; the per-recipe default is not
    # written, so rounds recorded before the setting existed read unchanged.
    assert "seed_spread" not in doc["settings"]["analysis"]
    pooled, _ = load_study(path, ["analysis.seed_spread=pooled"])
    with pytest.raises(FtlabError, match='analysis.seed_spread: null -> "pooled"'):
        read_rounds(folder, pooled, recipes)
    from types import SimpleNamespace

    from ftlab.study.adaptive import limits

    assert limits(SimpleNamespace(spec=pooled)).pooled and not limits(SimpleNamespace(spec=spec)).pooled
    # Likewise a futility threshold: written only when set.
    assert "futility" not in doc["settings"]["adaptive"]
    stopping, _ = load_study(path, ["adaptive.futility=0.1"])
    with pytest.raises(FtlabError, match='adaptive.futility: null -> 0.1'):
        read_rounds(folder, stopping, recipes)
    assert limits(SimpleNamespace(spec=stopping)).futility == 0.1
    (folder / "rounds.json").write_text("{\"schema\": 99}")
    with pytest.raises(FtlabError, match="not an ftlab rounds file"):
        read_rounds(folder, spec, recipes)
