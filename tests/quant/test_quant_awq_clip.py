"""ftlab's AWQ clip search (batched matmul) against gptqmodel's own (broadcast multiply-and-sum)."""

from __future__ import annotations

import types

import pytest


def _processor(sym: bool):
    from ftlab.quant.engines.gptq import import_gptqmodel

    import_gptqmodel()
    from gptqmodel.looper.awq_processor import AWQProcessor

    fake = types.SimpleNamespace(qcfg=types.SimpleNamespace(group_size=64, sym=sym, bits=4))
    fake._pseudo_quantize_tensor_into = types.MethodType(AWQProcessor._pseudo_quantize_tensor_into, fake)
    return AWQProcessor, fake


@pytest.mark.parametrize("sym", [True, False])
def test_matmul_clip_search_picks_what_gptqmodel_picks(sym):
    import torch

    from ftlab.quant.engines.gptq import compute_best_clip_by_matmul

    cls, fake = _processor(sym)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(128, 576, generator=g) * 0.05
    x = torch.randn(2, 600, 576, generator=g)  # 1200 tokens: both sample every 2nd
    ours = compute_best_clip_by_matmul(fake, w, x)
    theirs = cls._compute_best_clip(fake, w, x)
    assert ours.shape == theirs.shape == (128, 9, 1)
    # fp32: the same candidate everywhere (the sums differ only in rounding order).
    assert torch.equal(ours, theirs)
    # bf16 (what AWQ runs in): the broadcast path rounds every product to bf16, the matmul
    # accumulates in fp32, so near-ties may flip; measured 98% identical.
    ours16 = compute_best_clip_by_matmul(fake, w.bfloat16(), x.bfloat16())
    theirs16 = cls._compute_best_clip(fake, w.bfloat16(), x.bfloat16())
    assert (ours16 == theirs16).float().mean() > 0.9


def test_patch_applies_only_to_the_method_it_replicates(monkeypatch):
    from ftlab.quant.engines.gptq import _fast_awq_clip, compute_best_clip_by_matmul

    cls, _ = _processor(True)
    original = cls._compute_best_clip
    with _fast_awq_clip():
        assert cls._compute_best_clip is compute_best_clip_by_matmul
    assert cls._compute_best_clip is original

    def changed(self, w, input_feat, n_grid=20, max_shrink=0.5):  # a different signature: left alone
        return None

    monkeypatch.setattr(cls, "_compute_best_clip", changed)
    with _fast_awq_clip():
        assert cls._compute_best_clip is changed
