"""The one bootstrap over items that every interval of a mean uses (the metrics file's and the
comparison stage's), so equal scores, resample counts and seeds give equal intervals everywhere."""

from __future__ import annotations

from typing import Iterator

import numpy as np

# Resample rows drawn per chunk x items: 10k resamples of a 10k-sample task stay a few MB instead of
# an 800 MB index matrix.
_CHUNK_CELLS = 2_000_000


def resample_indices(n: int, resamples: int, seed: int) -> Iterator[tuple[slice, np.ndarray]]:
    """(slice of resample rows, index matrix) chunks of a seeded bootstrap over n items; the generator
    calls are the same for every statistic, so equal seeds resample equal items."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(1, n))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        yield slice(start, stop), rng.integers(0, n, size=(stop - start, n))


def bootstrap_means(values, resamples: int, seed: int) -> np.ndarray:
    """The means of `resamples` resamples (with replacement) of `values`."""
    x = np.asarray(values, dtype=float)
    means = np.empty(resamples)
    for rows, idx in resample_indices(x.size, resamples, seed):
        means[rows] = x[idx].mean(axis=1)
    return means


def percentile_interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` share of bootstrap statistics (the percentile interval)."""
    alpha = 1 - confidence
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
