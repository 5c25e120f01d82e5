"""Fidelity of a quantized model to its source: answer-token KL, top-1 agreement, answer perplexity.

The statistics are checked against independent computations (torch's kl_div, scipy's rel_entr,
numpy's percentile) on the same log-probabilities; the pipeline figures are ~0 for an identity
"quantization" and grow as HQQ gets fewer bits on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftlab.paths import Workspace
from ftlab.quant import fidelity
from ftlab.quant.calibration import task_texts
from ftlab.quant.pipeline import QuantRequest, quantize
from ftlab.kinds.quant import QuantizationSpec
from tiny_models import build_peaked_quant_tiny_model

SOURCE = "tiny-fid"


@pytest.fixture(scope="module")
def quant_ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("fid")
    build_peaked_quant_tiny_model(root / "Models" / SOURCE)
    return Workspace(root)


def _logprobs(seed: int, n: int = 300, v: int = 50, scale: float = 3.0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(n, v, generator=g), dim=-1)


def test_token_stats_match_independent_references():
    import torch
    from scipy.special import rel_entr

    ref = _logprobs(0)
    # A perturbed copy: close on most rows, far on a few (a heavy tail for the percentiles).
    cand = torch.log_softmax(ref + 0.3 * _logprobs(1) + 4.0 * (torch.arange(300) % 50 == 0)[:, None] * _logprobs(2),
                             dim=-1)
    targets = torch.randint(0, 50, (300,), generator=torch.Generator().manual_seed(3))
    got = fidelity.token_stats(ref, cand, targets)

    kl_torch = torch.nn.functional.kl_div(cand.double(), ref.double(), log_target=True, reduction="none").sum(-1).numpy()
    p, q = ref.double().exp().numpy(), cand.double().exp().numpy()
    kl_scipy = rel_entr(p, q).sum(-1)
    np.testing.assert_allclose(kl_torch, kl_scipy, rtol=1e-9, atol=1e-12)
    assert got["tokens"] == 300
    assert got["kl_mean"] == pytest.approx(kl_scipy.mean(), rel=1e-9)
    assert got["kl_p99"] == pytest.approx(np.percentile(kl_scipy, 99, method="linear"), rel=1e-9)
    assert got["kl_median"] == pytest.approx(np.median(kl_scipy), rel=1e-9)
    assert got["kl_max"] == pytest.approx(kl_scipy.max(), rel=1e-9)
    assert got["kl_mean_se"] == pytest.approx(kl_scipy.std() / math.sqrt(299), rel=1e-6)
    top1 = float((p.argmax(-1) == q.argmax(-1)).mean())
    assert got["top1_agreement"] == pytest.approx(top1) and 0 < top1 < 1
    nll_ref = -np.log(p[np.arange(300), targets.numpy()])
    nll_q = -np.log(q[np.arange(300), targets.numpy()])
    assert got["answer_perplexity_before"] == pytest.approx(math.exp(nll_ref.mean()), rel=1e-9)
    assert got["answer_perplexity_after"] == pytest.approx(math.exp(nll_q.mean()), rel=1e-9)
    dp = np.exp(-nll_q) - np.exp(-nll_ref)
    assert got["delta_p_rms"] == pytest.approx(math.sqrt((dp ** 2).mean()), rel=1e-9)


def test_identical_distributions_give_zero():
    ref = _logprobs(5)
    import torch

    got = fidelity.token_stats(ref, ref.clone(), torch.zeros(300, dtype=torch.long))
    assert got["kl_mean"] == pytest.approx(0, abs=1e-12) and got["kl_p99"] == pytest.approx(0, abs=1e-12)
    assert got["top1_agreement"] == 1.0 and got["delta_p_rms"] == 0


def test_percentile_is_llama_cpp_linear_interpolation():
    values = [0.0, 1.0, 2.0, 10.0]
    # fraction * (n - 1) = 0.99 * 3 = 2.97 -> 2 + 0.97 * (10 - 2)
    assert fidelity.percentile(values, 0.99) == pytest.approx(9.76)
    assert fidelity.percentile(values, 0.5) == pytest.approx(1.5)


def test_answer_tokens_are_the_answer_and_end_of_turn(quant_ws):
    from ftlab.models.sources import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(str(quant_ws.models_dir / SOURCE)), quant_ws)
    texts = task_texts("synthetic-arith", "test", 3, tok, workspace=quant_ws)
    enc = fidelity.encode(tok, texts, max_length=512)
    for ids, start, answer in zip(enc.ids, enc.answer_start, texts.answers):
        assert answer.startswith("The answer is \\boxed{") and answer.endswith("<|im_end|>\n")
        assert tok.decode(ids[start:]) == answer
    # Truncation drops the oldest prompt tokens and keeps every answer token.
    short = fidelity.encode(tok, texts, max_length=40)
    for ids, start, full_ids, full_start in zip(short.ids, short.answer_start, enc.ids, enc.answer_start):
        assert len(ids) == 40 and ids[start:] == full_ids[full_start:]


def test_identity_quantization_measures_zero(quant_ws):
    from ftlab.models.sources import load_model

    model, tok, _ = load_model(str(quant_ws.models_dir / SOURCE), dtype="fp32")
    texts = task_texts("synthetic-arith", "test", 6, tok, workspace=quant_ws)
    got = fidelity.measure(model, model, tok, texts, max_length=128)
    assert got["kl_mean"] == pytest.approx(0, abs=1e-9) and got["kl_max"] == pytest.approx(0, abs=1e-9)
    assert got["top1_agreement"] == 1.0
    assert got["answer_perplexity_after"] == got["answer_perplexity_before"] > 1
    assert got["whole_text_perplexity_after"] == got["whole_text_perplexity_before"]
    assert got["samples"] == 6 and got["tokens"] > 6 * 5


def test_pipeline_fidelity_grows_with_fewer_bits(quant_ws):
    """HQQ at 8, 4 and 2 bits on the same tiny model: KL up, top-1 agreement down, recorded in
    training_metadata.json and the model card."""
    from ftlab.schema import load_training_metadata

    measured = {}
    for bits in (8, 4, 2):
        req = QuantRequest(model=str(quant_ws.models_dir / SOURCE), spec=QuantizationSpec("HQQ", bits=bits, group_size=32),
                           calib_dataset="synthetic-arith", fidelity_samples=8, max_length=128)
        folder = quantize(req, quant_ws)
        ptq = load_training_metadata(folder)["results"]["ptq"]
        measured[bits] = ptq["fidelity"]
        assert ptq["fidelity_of_cast"] is None  # HQQ computes in fp32 by default: nothing to separate
        assert "answer-token perplexity" in (folder / "README.md").read_text()
    f8, f4, f2 = measured[8], measured[4], measured[2]
    assert 0 <= f8["kl_mean"] < f4["kl_mean"] < f2["kl_mean"], measured
    assert f8["kl_p99"] < f2["kl_p99"]
    assert f8["top1_agreement"] > f4["top1_agreement"] > f2["top1_agreement"]
    assert f8["kl_mean"] < 0.01 and f8["top1_agreement"] > 0.9
    assert f8["samples"] == 8 and f8["dataset"] == "synthetic-arith" and f8["split"] == "test"
    assert f8["answer_perplexity_before"] == pytest.approx(f2["answer_perplexity_before"])
