"""Paired significance tests for two models scored on the same samples.

Both tests work on per-sample outcomes aligned by (dataset, index): unpaired tests would ignore
that the two models saw identical questions, and so waste most of the statistical power.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

from ftlab.errors import FtlabError


@dataclass(frozen=True)
class McNemarResult:
    n: int
    both_correct: int
    a_only: int  # A correct, B wrong
    b_only: int  # A wrong, B correct
    both_wrong: int
    p_value: float


def mcnemar_exact(a_correct, b_correct) -> McNemarResult:
    """Exact (binomial) McNemar test on paired correct/incorrect outcomes.

    Only discordant pairs carry information; under H0 each is equally likely to favour A or B,
    so the count favouring A is Binomial(b + c, 1/2). Two-sided p = min(1, 2 * P(X <= min(b, c))),
    the same as `scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue` for p = 1/2.
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise FtlabError(f"McNemar needs two equally long outcome vectors, got shapes {a.shape} and {b.shape}")
    n10 = int(np.sum(a & ~b))
    n01 = int(np.sum(~a & b))
    discordant = n10 + n01
    p = 1.0 if discordant == 0 else min(1.0, 2.0 * float(_sps.binom.cdf(min(n10, n01), discordant, 0.5)))
    return McNemarResult(
        n=int(a.size), both_correct=int(np.sum(a & b)), a_only=n10, b_only=n01,
        both_wrong=int(np.sum(~a & ~b)), p_value=p,
    )


@dataclass(frozen=True)
class BootstrapResult:
    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean_b - mean_a
    ci_low: float
    ci_high: float
    p_value: float
    resamples: int
    confidence: float
    ratio: float = float("nan")  # mean_b / mean_a (B's score as a share of A's); NaN when mean_a is 0
    ratio_low: float = float("nan")  # percentile interval of the resampled ratios; NaN when A scores 0
    ratio_high: float = float("nan")  # in some resample (the ratio is undefined there)


def paired_bootstrap(a_scores, b_scores, *, resamples: int = 10_000, confidence: float = 0.95,
                     seed: int = 0) -> BootstrapResult:
    """Paired bootstrap of the difference in mean score (B - A); per-sample scores are 0/1 or F1.

    Rows are resampled jointly so each resample keeps the pairing. The interval is the percentile
    interval of the resampled differences; the two-sided p-value is twice the smaller share of
    resampled differences on either side of zero (the percentile-interval inversion, so p < alpha
    exactly when the (1 - alpha) interval excludes 0). The same resamples give the ratio of means
    B / A (how much of A's score B keeps) and its percentile interval.
    """
    a = np.asarray(a_scores, dtype=float)
    b = np.asarray(b_scores, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise FtlabError(f"paired bootstrap needs two equally long score vectors, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise FtlabError("paired bootstrap needs at least one sample answered by both models")
    if not 0 < confidence < 1:
        raise FtlabError(f"confidence={confidence} must be between 0 and 1 (e.g. 0.95)")
    if resamples < 1:
        raise FtlabError(f"bootstrap resamples={resamples} must be >= 1")
    d = b - a
    rng = np.random.default_rng(seed)
    # Chunked so 10k resamples of a 10k-sample task stay a few MB instead of an 800 MB matrix.
    diffs = np.empty(resamples)
    means_a = np.empty(resamples)
    means_b = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(1, d.size))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        diffs[start:stop] = d[idx].mean(axis=1)
        means_a[start:stop] = a[idx].mean(axis=1)
        means_b[start:stop] = b[idx].mean(axis=1)
    alpha = 1 - confidence
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    ratio = r_lo = r_hi = float("nan")
    if a.mean() > 0:
        ratio = float(b.mean() / a.mean())
        if np.all(means_a > 0):
            r_lo, r_hi = (float(x) for x in np.quantile(means_b / means_a, [alpha / 2, 1 - alpha / 2]))
    return BootstrapResult(
        n=int(d.size), mean_a=float(a.mean()), mean_b=float(b.mean()), diff=float(d.mean()),
        ci_low=float(lo), ci_high=float(hi), p_value=p, resamples=resamples, confidence=confidence,
        ratio=ratio, ratio_low=r_lo, ratio_high=r_hi,
    )


def format_bootstrap_p(p_value: float, resamples: int) -> str:
    """A bootstrap p-value as printed: never `0`. With B resamples the two-sided p (twice the smaller
    tail share) moves in steps of 2/B, so when no resample crossed zero it prints `< 2/B`: the
    resampling cannot tell smaller values apart. NaN (no test) prints as empty."""
    if p_value != p_value:
        return ""
    floor = 2.0 / resamples
    return f"< {floor:.2g}" if p_value < floor else f"{p_value:.4g}"
