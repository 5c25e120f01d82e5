"""Paired significance tests for two models scored on the same samples.

Both tests work on per-sample outcomes aligned by (dataset, index): unpaired tests would ignore
that the two models saw identical questions, and so waste most of the statistical power.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

from ftlab.errors import FtlabError
from ftlab.resampling import bootstrap_means, percentile_interval, resample_indices


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


def _check_bootstrap(size: int, resamples: int, confidence: float, what: str = "answered by both models") -> None:
    if size == 0:
        raise FtlabError(f"bootstrap needs at least one sample {what}")
    if not 0 < confidence < 1:
        raise FtlabError(f"confidence={confidence} must be between 0 and 1 (e.g. 0.95)")
    if resamples < 1:
        raise FtlabError(f"bootstrap resamples={resamples} must be >= 1")


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
    ratio_low: float = float("nan")  # percentile interval of the resampled ratios (see _ratio_interval);
    ratio_high: float = float("nan")  # +inf when enough resamples have A at 0 and B above it
    ratio_undefined: int = 0  # resamples with both means 0 (no ratio), left out of the interval


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
    _check_bootstrap(a.size, resamples, confidence)
    d = b - a
    diffs = np.empty(resamples)
    means_a = np.empty(resamples)
    means_b = np.empty(resamples)
    for rows, idx in resample_indices(d.size, resamples, seed):
        diffs[rows] = d[idx].mean(axis=1)
        means_a[rows] = a[idx].mean(axis=1)
        means_b[rows] = b[idx].mean(axis=1)
    alpha = 1 - confidence
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    ratio = r_lo = r_hi = float("nan")
    undefined = 0
    if a.mean() > 0:
        ratio = float(b.mean() / a.mean())
        r_lo, r_hi, undefined = _ratio_interval(means_a, means_b, alpha)
    return BootstrapResult(
        n=int(d.size), mean_a=float(a.mean()), mean_b=float(b.mean()), diff=float(d.mean()),
        ci_low=float(lo), ci_high=float(hi), p_value=p, resamples=resamples, confidence=confidence,
        ratio=ratio, ratio_low=r_lo, ratio_high=r_hi, ratio_undefined=undefined,
    )


def _ratio_interval(means_a: np.ndarray, means_b: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """Percentile interval of the resampled ratios B / A, taken as order statistics
    ("inverted_cdf"), so a resample whose A mean is 0 counts as +inf (B > 0) instead of breaking
    an interpolation; a resample with both means 0 has no ratio and is left out (the count is
    returned). Agrees with scipy.stats.bootstrap(paired=True, method="percentile") when no
    resample has A at 0 (tests/compare/test_compare_recovery.py)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = means_b / means_a
    defined = ratios[~np.isnan(ratios)]
    if defined.size == 0:
        return float("nan"), float("nan"), int(ratios.size)
    lo, hi = np.quantile(defined, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return float(lo), float(hi), int(ratios.size - defined.size)


def bootstrap_mean_interval(scores, *, resamples: int = 10_000, confidence: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item scores (items resampled with replacement)."""
    x = np.asarray(scores, dtype=float)
    _check_bootstrap(x.size, resamples, confidence, what="to resample")
    return percentile_interval(bootstrap_means(x, resamples, seed), confidence)


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979, step-down), in the input order.

    Sorted ascending, the i-th smallest of m p-values (i from 0) is multiplied by (m - i); a running
    maximum keeps the adjusted values in the order of the raw ones, and they are capped at 1.
    Rejecting every hypothesis whose adjusted p <= alpha is exactly Holm's procedure at level alpha
    (family-wise error <= alpha under any dependence). NaN entries are not tests: they stay NaN and
    do not count in m.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise FtlabError(f"Holm correction needs a flat list of p-values, got shape {p.shape}")
    if np.any((p < 0) | (p > 1)):
        raise FtlabError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)][:3].tolist()}")
    out = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    m = int(tested.sum())
    if m:
        raw = p[tested]
        order = np.argsort(raw, kind="stable")
        stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * raw[order]))
        adjusted = np.empty(m)
        adjusted[order] = stepped
        out[tested] = adjusted
    return out


def mcnemar_mdd(n_pairs: int, discordant_rate: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable difference |p10 - p01| of a two-sided McNemar test on n paired outcomes.

    Connor (1987, Biometrics 43:207) gives the pairs needed to detect a difference delta between
    the two discordant probabilities when their sum is psi (the discordance rate):
        n = (z_a * sqrt(psi) + z_b * sqrt(psi - delta^2))^2 / delta^2,
    z_a = Phi^-1(1 - alpha/2), z_b = Phi^-1(power). Solved for delta (squaring, the root with
    sqrt(n) * delta - z_a * sqrt(psi) of the sign of z_b):
        delta = (z_a * sqrt(psi * n) + z_b * sqrt(psi * (n + z_b^2 - z_a^2))) / (n + z_b^2).
    delta is a difference in accuracy (the share of pairs). Returns +inf when delta > psi: no
    difference is possible that large (|p10 - p01| <= psi), so at this discordance nothing is
    detectable with the asked power. Returns NaN when psi is 0: the models never disagreed, so
    the sample says nothing about how often they would.
    The relation is the normal approximation: at this delta, the power computed exactly (binomial
    sums) is 0.80-0.85 for the z-test and 0.76-0.78 for the exact McNemar test, which is
    conservative (measured for n = 60..3000 in tests/study/test_study_analysis.py).
    """
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise FtlabError(f"alpha={alpha} and power={power} must both lie strictly between 0 and 1")
    if not 0 <= discordant_rate <= 1:
        raise FtlabError(f"discordant_rate={discordant_rate} must lie in [0, 1]")
    if n_pairs < 1:
        raise FtlabError(f"minimum detectable difference needs at least one pair, got n={n_pairs}")
    psi = float(discordant_rate)
    if psi == 0:
        return math.nan
    z_a = float(_sps.norm.ppf(1 - alpha / 2))
    z_b = float(_sps.norm.ppf(power))
    n = float(n_pairs)
    root = psi * (n + z_b**2 - z_a**2)
    if root < 0:  # only for n < z_a^2 - z_b^2 (about 3 pairs): far too few to detect anything
        return math.inf
    delta = (z_a * math.sqrt(psi * n) + z_b * math.sqrt(root)) / (n + z_b**2)
    return math.inf if delta > psi else delta


def format_p(p: float, *, resamples: int | None = None) -> str:
    """A p-value for people, never "0". A bootstrap p (`resamples` = B given) below 2/B prints as
    "< 2/B": the two-sided p is twice the smaller tail share, so it moves in steps of 2/B and the
    resampling cannot tell smaller values apart (when no resample crossed zero the one-sided share is
    below 1/B, the two-sided p below 2/B). An exact p below 0.001 prints in scientific notation; one
    that underflowed to 0 as below the smallest normal double."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    p = float(p)
    if resamples and p < 2 / resamples:
        return f"< {2 / resamples:.2g}"
    if p <= 0:
        return f"< {sys.float_info.min:.1e}"
    if p < 1e-3:
        return f"{p:.2e}"
    return f"{p:.3g}"
