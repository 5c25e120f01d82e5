"""Recovery in compare: each quantized model against its own unquantized source (from metadata),
ratio of scores with a paired-bootstrap interval, McNemar on lost/gained answers, fidelity columns."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from ftlab.compare.recovery import recovery_table
from ftlab.compare.stats import paired_bootstrap
from ftlab.io import append_jsonl, atomic_write_json
from ftlab.paths import Workspace
from ftlab.schema import write_training_metadata
from tests.compare.test_compare import metrics_doc, nf

SRC = "tiny-arith_SFT_LoRa16_NoQuant"
QNT = "tiny-arith_SFT_LoRa16_GPTQ_w4_g64"
ORPHAN = "tiny-arith_SFT_LoRa8_HQQ_w4_g64"
FIDELITY = {"kl_mean": 0.0123, "kl_p99": 0.31, "top1_agreement": 0.97, "answer_perplexity_before": 1.21,
            "answer_perplexity_after": 1.27, "samples": 64, "tokens": 900, "dataset": "synthetic-arith"}


def test_ratio_interval_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(7)
    a = (rng.random(120) < 0.4).astype(float)
    b = np.where(rng.random(120) < 0.85, a, 1 - a)
    ours = paired_bootstrap(a, b, resamples=20_000, seed=3)
    ref = sps.bootstrap((a, b), lambda x, y, axis=-1: y.mean(axis=axis) / x.mean(axis=axis), paired=True,
                        vectorized=True, n_resamples=20_000, method="percentile", confidence_level=0.95,
                        random_state=np.random.default_rng(11))
    assert ours.ratio == pytest.approx(b.mean() / a.mean())
    # Independent resamples: the endpoints agree to Monte-Carlo error.
    assert ours.ratio_low == pytest.approx(ref.confidence_interval.low, abs=0.03)
    assert ours.ratio_high == pytest.approx(ref.confidence_interval.high, abs=0.03)
    assert ours.ratio_low < ours.ratio < ours.ratio_high
    assert np.isnan(paired_bootstrap([0, 0, 0], [1, 0, 1]).ratio)  # a source at 0: undefined, not inf


def _samples(metrics_ws: Workspace, model: str, correct: list[bool]) -> None:
    for i, c in enumerate(correct):
        append_jsonl(metrics_ws.metrics_dir / f"{model}.samples.jsonl",
                     {"dataset": "synthetic-arith", "index": i, "correct": c, "eval_config_hash": "cfg-hash-1"})


@pytest.fixture
def metrics_ws(tmp_path) -> Workspace:
    w = Workspace(tmp_path)
    # Source right on 40 of 100; the quantized model loses 12 of those and gains 2 elsewhere.
    src = [i < 40 for i in range(100)]
    qnt = [(i < 40 and i >= 12) or i in (50, 51) for i in range(100)]
    for name, correct, quant in ((SRC, src, "NoQuant"), (QNT, qnt, "GPTQ_w4_g64"), (ORPHAN, qnt, "HQQ_w4_g64")):
        doc = metrics_doc(name, {"synthetic-arith": float(np.mean(correct))},
                          fields=nf("tiny", "arith", "SFT", "LoRa16", quant), path=str(w.models_dir / name))
        doc["datasets"]["synthetic-arith"]["n"] = len(correct)  # the document counts the rows written below
        atomic_write_json(w.metrics_dir / f"{name}.json", doc)
        _samples(w, name, correct)
    write_training_metadata(w.models_dir / QNT, {"run_name": QNT, "source": {"name": SRC},
                                                "results": {"ptq": {"fidelity": FIDELITY}}})
    write_training_metadata(w.models_dir / ORPHAN, {"run_name": ORPHAN, "source": {"name": "tiny-arith_SFT_LoRa8_NoQuant"},
                                                   "results": {"ptq": {}}})
    return w


def test_recovery_table_pairs_each_quantized_model_with_its_source(metrics_ws):
    from ftlab.compare import load_metrics

    table = recovery_table(metrics_ws, load_metrics(metrics_ws), resamples=5000)
    row = table[table["quantized"] == QNT].iloc[0]
    assert row["source"] == SRC and row["task"] == "synthetic-arith" and row["n"] == 100
    assert row["source_score"] == 0.40 and row["quantized_score"] == 0.30
    assert row["recovery"] == pytest.approx(0.75) and row["recovery_low"] < 0.75 < row["recovery_high"] <= 1.0
    assert (row["lost"], row["gained"]) == (12, 2)
    assert row["mcnemar_p"] == pytest.approx(sps.binomtest(2, 14, 0.5).pvalue)
    assert row["kl_mean"] == 0.0123 and row["top1_agreement"] == 0.97 and row["answer_ppl_quantized"] == 1.27
    orphan = table[table["quantized"] == ORPHAN].iloc[0]
    assert "source not evaluated" in orphan["note"] and np.isnan(orphan["recovery"])
    assert SRC not in set(table["quantized"])  # unquantized models have no recovery row


def test_compare_cli_prints_recovery_and_plots_it(metrics_ws, capsys):
    from ftlab.cli import main

    assert main(["--workdir", str(metrics_ws.root), "compare", "--plot", str(metrics_ws.root / "plots"), "--no-summary",
                 "--bootstrap", "2000"]) == 0
    out = capsys.readouterr().out
    assert "recovery of each quantized model vs its unquantized source" in out
    section = out.split("recovery of each quantized model")[1]
    line = next(x for x in section.splitlines() if x.startswith(QNT))
    assert "0.750 [" in line and "1.210 -> 1.270" in line
    assert (metrics_ws.root / "plots" / "recovery.png").stat().st_size > 1000
