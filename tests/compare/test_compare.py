"""Comparison: the tidy frame from metrics documents, deltas, paired tests, CLI and plots."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ftlab.compare import add_deltas, filter_frame, load_metrics, wide_table
from ftlab.compare.pair import compare_pair
from ftlab.compare.plots import pareto_front, write_plots
from ftlab.compare.stats import mcnemar_exact, paired_bootstrap
from ftlab.errors import FtlabError
from ftlab.io import append_jsonl, atomic_write_json
from ftlab.paths import Workspace

HASH = "cfg-hash-1"


def metrics_doc(name: str, scores: dict, *, fields=None, size=None, latency=0.5, peft=None, version=1,
                status="complete", path=None) -> dict:
    """A metrics document shaped like docs/ARCHITECTURE.md (schema kind "metrics", v1)."""
    meta = {"run_name": name, "peft": peft, "quantization": {"method": "NoQuant"}}
    if fields is not None:
        meta["name_fields"] = fields
    if size is not None:
        meta["size_on_disk_bytes"] = size
    datasets = {}
    for task, acc in scores.items():
        datasets[task] = {
            "n": 20, "metrics": {"accuracy": acc}, "intervals": {"accuracy": [acc - 0.1, acc + 0.1]},
            "format_success_rate": 0.9, "flexible_accuracy": acc + 0.05,
            "latency_s": {"mean": latency, "median": latency, "p90": latency * 1.5, "std": 0.1},
            "new_tokens": {"mean": 12.0, "median": 11.0, "p90": 20.0, "std": 3.0},
            "samples_per_s": 1 / latency, "runtime_s": 20 * latency,
        }
    return {
        "schema_version": version, "kind": "metrics", "status": status,
        "model": {"name": name, "path": path or f"/nonexistent/Models/{name}", "metadata": meta},
        "eval_config": {"datasets": sorted(scores)}, "eval_config_hash": HASH,
        "datasets": datasets,
        "summary": {"mean_accuracy": float(np.mean(list(scores.values()))), "total_samples": 20 * len(scores),
                    "runtime_s": 1.0, "peak_memory": {}},
        "quantization": None, "environment": {}, "started_at": "t0", "finished_at": "t1",
    }


def nf(base, dataset, method=None, peft=None, quant="NoQuant"):
    return {"base": base, "dataset": dataset, "method": method, "peft": peft, "quant_tag": quant}


@pytest.fixture
def metrics_ws(tmp_path) -> Workspace:
    w = Workspace(tmp_path)
    docs = [
        metrics_doc("tiny-base", {"arc": 0.5, "boolq": 0.6}, fields=nf("tiny", "base"), size=4_000_000, latency=0.4),
        metrics_doc("tiny-arc_SFT_LoRa16_NoQuant", {"arc": 0.7, "boolq": 0.55},
                    fields=nf("tiny", "arc", "SFT", "LoRa16"), peft={"method": "LoRa", "r": 16},
                    size=4_100_000, latency=0.5),
        metrics_doc("tiny-base_HQQ_w4_g64", {"arc": 0.45, "boolq": 0.6},
                    fields=nf("tiny", "base", quant="HQQ_w4_g64"), size=1_000_000, latency=0.3),
        metrics_doc("other-base", {"arc": 0.3}, fields=nf("other", "base"), size=8_000_000, latency=0.9),
    ]
    for d in docs:
        atomic_write_json(w.metrics_dir / f"{d['model']['name']}.json", d)
    # Files in the metrics folder that are not metrics documents must be ignored.
    atomic_write_json(w.metrics_dir / "tiny-broken.error.json", {"error": "boom"})
    append_jsonl(w.metrics_dir / "tiny-base.samples.jsonl", {"dataset": "arc", "index": 0, "correct": True})
    return w


def value(df, model, task, metric="accuracy", col="value"):
    sel = df[(df.model == model) & (df.task == task) & (df.metric == metric)]
    assert len(sel) == 1, sel
    return sel[col].iloc[0]


# ---------------------------------------------------------------------------------------------
# statistics


def test_mcnemar_matches_hand_computation_and_scipy_binomtest():
    # 6 both right, A-only 2, B-only 8, 4 both wrong: p = 2 * P(X<=2 | n=10, 1/2) = 2*(1+10+45)/1024.
    a = [1] * 6 + [1] * 2 + [0] * 8 + [0] * 4
    b = [1] * 6 + [0] * 2 + [1] * 8 + [0] * 4
    r = mcnemar_exact(a, b)
    assert (r.both_correct, r.a_only, r.b_only, r.both_wrong, r.n) == (6, 2, 8, 4, 20)
    assert r.p_value == pytest.approx(112 / 1024, abs=1e-12)
    assert r.p_value == pytest.approx(sps.binomtest(2, 10, 0.5).pvalue, abs=1e-12)
    # Symmetric in A and B; no discordant pairs -> no evidence at all (p = 1).
    assert mcnemar_exact(b, a).p_value == pytest.approx(r.p_value)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]).p_value == 1.0
    # An odd discordant count never doubles past 1: b=c -> 2*P(X<=c) > 1 is capped.
    assert mcnemar_exact([1, 0, 1, 0, 1], [0, 1, 0, 1, 1]).p_value == 1.0
    for n10, n01 in [(0, 7), (3, 12), (15, 15), (1, 30)]:
        a = [1] * n10 + [0] * n01
        b = [0] * n10 + [1] * n01
        assert mcnemar_exact(a, b).p_value == pytest.approx(sps.binomtest(min(n10, n01), n10 + n01, 0.5).pvalue)


def test_mcnemar_rejects_mismatched_lengths():
    with pytest.raises(FtlabError, match="equally long"):
        mcnemar_exact([1, 0], [1])


def test_paired_bootstrap_two_point_distribution_by_hand():
    # Differences [0, 1]: a resample mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4.
    r = paired_bootstrap([0, 0], [0, 1], resamples=20_000, seed=1)
    assert r.diff == 0.5 and r.mean_a == 0.0 and r.mean_b == 0.5
    assert (r.ci_low, r.ci_high) == (0.0, 1.0)
    # P(d* <= 0) = 1/4 -> p = 0.5 (Monte-Carlo error ~ 0.006).
    assert r.p_value == pytest.approx(0.5, abs=0.02)


def test_paired_bootstrap_matches_independent_resampling_and_normal_theory():
    rng = np.random.default_rng(3)
    a = rng.random(400) < 0.55
    b = np.where(rng.random(400) < 0.8, a, ~a)  # B agrees with A on ~80% of samples
    r = paired_bootstrap(a, b, resamples=4000, seed=7)
    # Same seed, same generator calls -> an independent one-shot implementation gives identical numbers.
    d = b.astype(float) - a.astype(float)
    idx = np.random.default_rng(7).integers(0, d.size, size=(4000, d.size))
    diffs = d[idx].mean(axis=1)
    assert r.ci_low == pytest.approx(np.quantile(diffs, 0.025))
    assert r.ci_high == pytest.approx(np.quantile(diffs, 0.975))
    # And the interval agrees with the paired normal approximation mean +- 1.96 * sd / sqrt(n).
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert r.ci_low == pytest.approx(d.mean() - half, abs=0.01)
    assert r.ci_high == pytest.approx(d.mean() + half, abs=0.01)
    same = paired_bootstrap(a, a, resamples=500)
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_bad_input():
    with pytest.raises(FtlabError, match="at least one"):
        paired_bootstrap([], [])
    with pytest.raises(FtlabError, match="confidence"):
        paired_bootstrap([1], [0], confidence=95)


# ---------------------------------------------------------------------------------------------
# the frame


def test_frame_contents(metrics_ws):
    df = load_metrics(metrics_ws)
    assert set(df.model) == {"tiny-base", "tiny-arc_SFT_LoRa16_NoQuant", "tiny-base_HQQ_w4_g64", "other-base"}
    for col in ("model", "base", "dataset", "method", "peft", "rank", "quant", "task", "metric", "value", "ci_low", "ci_high"):
        assert col in df.columns
    lora = df[df.model == "tiny-arc_SFT_LoRa16_NoQuant"].iloc[0]
    assert (lora.base, lora.dataset, lora.method, lora.peft, lora["rank"], lora.quant) == ("tiny", "arc", "SFT", "LoRa16", 16.0, "NoQuant")
    assert value(df, "tiny-arc_SFT_LoRa16_NoQuant", "arc") == 0.7
    assert value(df, "tiny-arc_SFT_LoRa16_NoQuant", "arc", col="ci_low") == pytest.approx(0.6)
    assert value(df, "tiny-arc_SFT_LoRa16_NoQuant", "arc", col="ci_high") == pytest.approx(0.8)
    assert value(df, "tiny-base_HQQ_w4_g64", "boolq", "latency_mean_s") == 0.3
    assert value(df, "tiny-base", "arc", "flexible_accuracy") == pytest.approx(0.55)
    assert value(df, "tiny-base", "overall", "mean_accuracy") == pytest.approx(0.55)
    assert math.isnan(df[df.model == "tiny-base"]["rank"].iloc[0])
    assert df[df.model == "tiny-base_HQQ_w4_g64"]["size_on_disk_bytes"].iloc[0] == 1_000_000
    # The same frame from the workspace root and from the metrics folder itself.
    pd.testing.assert_frame_equal(df, load_metrics(metrics_ws.root))
    pd.testing.assert_frame_equal(df, load_metrics(metrics_ws.metrics_dir))


def test_frame_parses_run_name_when_metadata_lacks_name_fields(tmp_path):
    metrics_ws = Workspace(tmp_path)
    doc = metrics_doc("tiny-boolq_SFT_DoRa8_NoQuant", {"boolq": 0.5})
    atomic_write_json(metrics_ws.metrics_dir / "tiny-boolq_SFT_DoRa8_NoQuant.json", doc)
    row = load_metrics(metrics_ws).iloc[0]
    assert (row.base, row.dataset, row.method, row.peft, row["rank"], row.quant) == ("tiny", "boolq", "SFT", "DoRa8", 8.0, "NoQuant")


def test_frame_upgrades_old_documents(tmp_path):
    # A v0 document of the prototype evaluator: model as a string, flat per-task results.
    metrics_ws = Workspace(tmp_path)
    atomic_write_json(metrics_ws.metrics_dir / "tiny-boolq_SFT_LoRa8_NoQuant.json", {
        "schema_version": 0, "model": "tiny-boolq_SFT_LoRa8_NoQuant", "eval_config_hash": "old",
        "results": {"boolq": {"n": 10, "accuracy": 0.4}, "arc": {"n": 10, "accuracy": 0.6}},
    })
    df = load_metrics(metrics_ws)
    assert value(df, "tiny-boolq_SFT_LoRa8_NoQuant", "boolq") == 0.4
    assert value(df, "tiny-boolq_SFT_LoRa8_NoQuant", "overall", "mean_accuracy") == pytest.approx(0.5)
    assert df["rank"].iloc[0] == 8.0 and df["dataset"].iloc[0] == "boolq"


def test_frame_rejects_damaged_documents_and_shows_finished_tasks_of_running_ones(tmp_path):
    metrics_ws = Workspace(tmp_path)
    # A run on another task is in progress (or was killed): the tasks it already holds are finished
    # results and stay visible (results accumulate; they never disappear from compare).
    atomic_write_json(metrics_ws.metrics_dir / "a-base.json", metrics_doc("a-base", {"arc": 0.5}, status="running"))
    assert value(load_metrics(metrics_ws), "a-base", "arc") == 0.5
    (metrics_ws.metrics_dir / "b-base.json").write_text("{not json")
    with pytest.raises(FtlabError, match="b-base.json"):
        load_metrics(metrics_ws)
    (metrics_ws.metrics_dir / "b-base.json").write_text(json.dumps({"kind": "metrics"}))
    with pytest.raises(FtlabError, match="schema_version"):
        load_metrics(metrics_ws)


def test_filters_and_wide_table(metrics_ws):
    df = load_metrics(metrics_ws)
    arc_tiny = filter_frame(df, task=["arc"], base=["tiny"])
    assert set(arc_tiny.task) == {"arc"} and set(arc_tiny.base) == {"tiny"}
    assert set(filter_frame(df, quant=["HQQ_w4_g64"]).model) == {"tiny-base_HQQ_w4_g64"}
    assert set(filter_frame(df, peft=["lora16"]).model) == {"tiny-arc_SFT_LoRa16_NoQuant"}
    assert set(filter_frame(df, quant=["NoQuant,HQQ_w4_g64"]).model) == set(df.model)
    with pytest.raises(FtlabError, match="--peft NoPeft matches no metrics; available: LoRa16"):
        filter_frame(df, peft=["LoRa16,NoPeft"])
    with pytest.raises(FtlabError, match="available: arc, boolq, overall"):
        filter_frame(df, task=["squad"])
    wide = wide_table(df)
    assert list(wide.columns) == ["model", "base", "dataset", "method", "peft", "rank", "quant",
                                  "arc/accuracy", "boolq/accuracy", "overall/mean_accuracy"]
    assert len(wide) == 4
    assert wide.set_index("model").loc["tiny-arc_SFT_LoRa16_NoQuant", "arc/accuracy"] == 0.7
    assert math.isnan(wide.set_index("model").loc["other-base", "boolq/accuracy"])


def test_deltas_against_family_base_and_explicit_baseline(metrics_ws):
    df = add_deltas(load_metrics(metrics_ws))
    assert value(df, "tiny-arc_SFT_LoRa16_NoQuant", "arc", col="delta") == pytest.approx(0.2)
    assert value(df, "tiny-arc_SFT_LoRa16_NoQuant", "arc", col="baseline") == "tiny-base"
    assert value(df, "tiny-base_HQQ_w4_g64", "arc", col="delta") == pytest.approx(-0.05)
    assert value(df, "other-base", "arc", col="delta") == 0.0
    explicit = add_deltas(load_metrics(metrics_ws), baseline="other-base")
    assert value(explicit, "tiny-base", "arc", col="delta") == pytest.approx(0.2)
    assert math.isnan(value(explicit, "tiny-base", "boolq", col="delta"))  # baseline lacks boolq
    with pytest.raises(FtlabError, match="no metrics"):
        add_deltas(load_metrics(metrics_ws), baseline="nope")


# ---------------------------------------------------------------------------------------------
# paired comparison on samples


def write_samples(metrics_ws, model, dataset, correct, *, hash_=HASH, f1=None):
    for i, c in enumerate(correct):
        line = {"dataset": dataset, "index": i, "prompt_hash": f"p{i}", "response": "", "extracted": None,
                "flexible": None, "gold": "x", "correct": bool(c), "latency_s": 0.1, "new_tokens": 3,
                "eval_config_hash": hash_}
        if f1 is not None:
            line["f1"] = f1[i]
        append_jsonl(metrics_ws.metrics_dir / f"{model}.samples.jsonl", line)


def test_pair_joins_on_dataset_and_index(metrics_ws):
    a = [1] * 6 + [1] * 2 + [0] * 8 + [0] * 4
    b = [1] * 6 + [0] * 2 + [1] * 8 + [0] * 4
    (metrics_ws.metrics_dir / "tiny-base.samples.jsonl").unlink()
    write_samples(metrics_ws, "tiny-base", "arc", a)
    # B also answered 5 extra rows A never saw, and one stale line from an old config for row 0;
    # neither may enter the paired test.
    write_samples(metrics_ws, "tiny-arc_SFT_LoRa16_NoQuant", "arc", b + [1] * 5)
    write_samples(metrics_ws, "tiny-arc_SFT_LoRa16_NoQuant", "arc", [0], hash_="old-hash")
    res = compare_pair(metrics_ws, "tiny-base", "tiny-arc_SFT_LoRa16_NoQuant", resamples=2000)
    row = res.set_index("task").loc["arc"]
    assert row.n == 20 and row.a_only == 2 and row.b_only == 8
    assert row.mcnemar_p == pytest.approx(sps.binomtest(2, 10, 0.5).pvalue)
    assert row["diff"] == pytest.approx(0.3) and row.a == pytest.approx(0.4) and row.b == pytest.approx(0.7)
    assert row.ci_low < 0.3 < row.ci_high


def test_pair_uses_per_sample_f1_when_both_have_it(metrics_ws):
    (metrics_ws.metrics_dir / "tiny-base.samples.jsonl").unlink()
    for name, acc in (("tiny-base", 0.5), ("other-base", 0.75)):
        atomic_write_json(metrics_ws.metrics_dir / f"{name}.json", metrics_doc(name, {"squad_v2": acc}))
    write_samples(metrics_ws, "tiny-base", "squad_v2", [0, 1, 0, 1], f1=[0.2, 1.0, 0.5, 1.0])
    write_samples(metrics_ws, "other-base", "squad_v2", [0, 1, 1, 1], f1=[0.4, 1.0, 1.0, 1.0])
    res = compare_pair(metrics_ws, "tiny-base", "other-base", resamples=500).iloc[0]
    assert res.score == "f1" and res["diff"] == pytest.approx((0.2 + 0.5) / 4)


def test_pair_on_a_continuous_lmeval_score_uses_the_bootstrap_and_no_mcnemar(metrics_ws):
    # An lm-eval task whose primary metric is continuous writes `score` per document and no
    # right/wrong (`correct` null, ftlab.eval.lmeval.runner). McNemar on all-False would call every
    # such comparison "not significant"; the bootstrap on the scores decides instead.
    from ftlab.compare.pair import describe_pair

    (metrics_ws.metrics_dir / "tiny-base.samples.jsonl").unlink()
    for name, acc in (("tiny-base", 0.3), ("other-base", 0.8)):
        atomic_write_json(metrics_ws.metrics_dir / f"{name}.json", metrics_doc(name, {"lmeval:squad_f1": acc}))
    for name, scores in (("tiny-base", [0.1, 0.2, 0.3, 0.4] * 10), ("other-base", [0.7, 0.8, 0.9, 0.8] * 10)):
        for i, sc in enumerate(scores):
            append_jsonl(metrics_ws.metrics_dir / f"{name}.samples.jsonl",
                         {"dataset": "lmeval:squad_f1", "index": i, "prompt_hash": f"p{i}", "correct": None,
                          "score": sc, "eval_config_hash": HASH})
    res = compare_pair(metrics_ws, "tiny-base", "other-base", resamples=2000).iloc[0]
    assert res.score == "score" and res["diff"] == pytest.approx(0.55) and res.n == 20  # the block's n rows
    assert res.a_only is None and res.mcnemar_p != res.mcnemar_p  # NaN: not applicable
    text = describe_pair(compare_pair(metrics_ws, "tiny-base", "other-base", resamples=2000), "tiny-base", "other-base")
    assert "McNemar: n/a (scores are not right/wrong; significant by the bootstrap)" in text, text


def test_pair_without_common_samples_is_an_error(metrics_ws):
    with pytest.raises(FtlabError, match="no samples"):
        compare_pair(metrics_ws, "tiny-base", "other-base")


# ---------------------------------------------------------------------------------------------
# plots and CLI


def test_pareto_front():
    size = [1, 2, 3, 4, 2.5]
    acc = [0.3, 0.5, 0.4, 0.6, 0.5]
    assert list(pareto_front(size, acc)) == [0, 1, 3]


def test_plots_written(metrics_ws, tmp_path):
    out = tmp_path / "plots"
    paths = write_plots(load_metrics(metrics_ws), out)
    assert sorted(p.name for p in paths) == ["accuracy_vs_latency.png", "accuracy_vs_size.png", "score_by_task.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def _cli(metrics_ws, *args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ftlab", "--workdir", str(metrics_ws.root), "compare", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_cli_end_to_end(metrics_ws, tmp_path):
    a = [1] * 6 + [1] * 2 + [0] * 8 + [0] * 4
    b = [1] * 6 + [0] * 2 + [1] * 8 + [0] * 4
    (metrics_ws.metrics_dir / "tiny-base.samples.jsonl").unlink()
    write_samples(metrics_ws, "tiny-base", "arc", a)
    write_samples(metrics_ws, "tiny-arc_SFT_LoRa16_NoQuant", "arc", b)
    tidy = tmp_path / "out" / "tidy.csv"
    r = _cli(metrics_ws, "--markdown", "--csv", str(tidy), "--pair", "tiny-base", "tiny-arc_SFT_LoRa16_NoQuant",
             "--bootstrap", "2000", "--plot", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    assert "| model | base |" in r.stdout and "tiny-arc_SFT_LoRa16_NoQuant" in r.stdout
    assert "delta vs each family's <base>-base" in r.stdout
    assert "McNemar: A-only=2 B-only=8 p=0.1094" in r.stdout
    summary = pd.read_csv(metrics_ws.summary_csv)
    assert len(summary) == 4 and "arc/accuracy" in summary.columns
    tidy_df = pd.read_csv(tidy)
    assert {"delta", "baseline"} <= set(tidy_df.columns)
    assert (tmp_path / "plots" / "accuracy_vs_size.png").stat().st_size > 0

    # A filtered call prints the subset but leaves the summary CSV complete.
    r = _cli(metrics_ws, "--task", "boolq", "--quant", "NoQuant")
    assert r.returncode == 0, r.stderr
    assert "arc/accuracy" not in r.stdout and "boolq/accuracy" in r.stdout
    assert len(pd.read_csv(metrics_ws.summary_csv)) == 4

    metrics_ws.summary_csv.unlink()
    r = _cli(metrics_ws, "--task", "squadd")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: --task squadd matches no metrics")
    assert not metrics_ws.summary_csv.exists()  # bad input writes nothing
    assert "Traceback" not in r.stderr


def test_cli_on_empty_workspace(tmp_path):
    r = _cli(Workspace(tmp_path))
    assert r.returncode == 2 and "no metrics documents" in r.stderr
    assert not Workspace(tmp_path).summary_csv.exists()


# ---------------------------------------------------------------------------------------------
# per-task results from the evaluator (schema v2)


def test_bootstrap_p_value_is_never_printed_as_zero(metrics_ws):
    from ftlab.compare.pair import describe_pair
    from ftlab.compare.stats import format_p

    assert format_p(0.0, resamples=10_000) == "< 0.0002" and format_p(0.0312, resamples=10_000) == "0.0312"
    assert format_p(float("nan"), resamples=100) == "n/a"
    (metrics_ws.metrics_dir / "tiny-base.samples.jsonl").unlink()
    write_samples(metrics_ws, "tiny-base", "arc", [0] * 20)
    write_samples(metrics_ws, "tiny-arc_SFT_LoRa16_NoQuant", "arc", [1] * 20)
    res = compare_pair(metrics_ws, "tiny-base", "tiny-arc_SFT_LoRa16_NoQuant", resamples=2000)
    assert res.iloc[0].bootstrap_p == 0.0  # no resample crossed zero
    text = describe_pair(res, "tiny-base", "tiny-arc_SFT_LoRa16_NoQuant")
    assert "bootstrap p < 0.001 " in text and "bootstrap p=0 " not in text


def _evaluate(metrics_ws, name, datasets, responder, *overrides):
    from ftlab.config import EvalRunConfig, load_config
    from ftlab.eval.evaluator import evaluate
    from ftlab.eval.backends.canned import CannedGenerator

    cfg = load_config(EvalRunConfig, overrides=[f"eval.datasets={datasets}", "eval.limit=6", "eval.bootstrap_samples=50",
                                                *overrides])
    return evaluate("scratch:tiny", cfg, metrics_ws, generator=CannedGenerator(responder), model_name=name)


def test_compare_reads_every_current_task_of_every_model(tmp_path):
    import re

    metrics_ws = Workspace(tmp_path)
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"question": f"Capital number {i}?", "answer": "Paris"}) + "\n" for i in range(6)))

    def right(p):
        m = re.search(r"What is (-?\d+) ([-+*]) (-?\d+)\?", p)
        if m:
            a, op, b = int(m[1]), m[2], int(m[3])
            return f"\\boxed{{{a + b if op == '+' else a - b if op == '-' else a * b}}}"
        m = re.search(r"Which number is larger, (\d+) or (\d+)\?", p)
        return f"\\boxed{{{max(int(m[1]), int(m[2]))}}}" if m else "\\boxed{Paris}"

    for name, responder in (("a-base", "\\boxed{1}"), ("a-arith_SFT_LoRa16_NoQuant", right)):
        _evaluate(metrics_ws, name, "synthetic-arith", responder)
        _evaluate(metrics_ws, name, str(data), responder)  # a second task set: the first stays
    df = load_metrics(metrics_ws)
    for name in ("a-base", "a-arith_SFT_LoRa16_NoQuant"):
        assert {"synthetic-arith", str(data)} <= set(df[df.model == name].task)
    assert set(df[df.metric == "accuracy"].scoring_version.dropna()) == {2.0}
    assert value(df, "a-arith_SFT_LoRa16_NoQuant", "synthetic-arith") == 1.0
    res = compare_pair(metrics_ws, "a-base", "a-arith_SFT_LoRa16_NoQuant", resamples=200).set_index("task")
    assert res.loc["synthetic-arith"].n == 6 and res.loc[str(data)].n == 6 and res.loc["all"].n == 12

    # Re-evaluating one task under new settings: the pair uses only the lines behind the new result.
    _evaluate(metrics_ws, "a-base", "synthetic-arith", right, "eval.max_new_tokens=40")
    res = compare_pair(metrics_ws, "a-base", "a-arith_SFT_LoRa16_NoQuant", resamples=200).set_index("task")
    assert res.loc["synthetic-arith"].n == 6 and res.loc["synthetic-arith"].a == 1.0

    # Results scored by an older rule are never paired with current ones.
    doc_path = metrics_ws.metrics_dir / "a-base.json"
    doc = json.loads(doc_path.read_text())
    doc["datasets"]["synthetic-arith"]["scoring_version"] = 1
    atomic_write_json(doc_path, doc)
    with pytest.raises(FtlabError, match="synthetic-arith: a-base was scored by scoring v1, .* by v2; rescore a-base"):
        compare_pair(metrics_ws, "a-base", "a-arith_SFT_LoRa16_NoQuant", resamples=200)
