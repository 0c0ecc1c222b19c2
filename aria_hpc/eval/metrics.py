"""Evaluation metrics, pure NumPy: grouped means with standard errors, Frechet distance.

Shapes: per-sample values (n,); group labels (n,) ints; features (n, d).
"""

from __future__ import annotations

import numpy as np


def mean_se(values: np.ndarray) -> dict[str, float]:
    """Mean and its standard error (0 for a single value); NaN mean for an empty array."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    se = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return {"mean": float(values.mean()), "se": se, "n": int(n)}


def grouped(values: np.ndarray, labels: np.ndarray, num_groups: int) -> list[dict[str, float]]:
    """mean_se of the values of every label 0..num_groups-1."""
    return [mean_se(values[labels == g]) for g in range(num_groups)]


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) between Gaussians fitted to the
    feature sets (rows are samples). Symmetric, 0 for identical sets, >= 0 up to rounding."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError("frechet_distance needs two (n >= 2, d) feature arrays of the same width")
    mu = a.mean(0) - b.mean(0)
    if min(len(a), len(b)) < a.shape[1]:  # fewer samples than features (FID's 2048): the same value, exactly,
        # from the samples: tr((S_a^1/2 S_b S_a^1/2)^1/2) = sum sqrt(eig(S_a S_b)), and with S = X^T X / (n - 1)
        # for centred X the nonzero eigenvalues of S_a S_b are the squared singular values of
        # A B^T / sqrt((n_a - 1)(n_b - 1)): an n_a x n_b problem instead of two d x d eigendecompositions
        ca, cb = a - a.mean(0), b - b.mean(0)
        scale = np.sqrt((len(a) - 1) * (len(b) - 1))
        cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / scale
        traces = (ca * ca).sum() / (len(a) - 1) + (cb * cb).sum() / (len(b) - 1)
        return float(max(mu @ mu + traces - 2 * cross, 0.0))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = _psd_sqrt(sa)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)).sum()
    return float(max(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * cross, 0.0))


def frechet_with_se(a: np.ndarray, b: np.ndarray, *, resamples: int = 50, seed: int = 0) -> dict[str, float]:
    """Frechet distance of paired feature sets (row i of a and b belong to the same prompt) and its
    bootstrap standard error over prompts."""
    value = frechet_distance(a, b)
    rng = np.random.default_rng([seed, 0xFD])
    boot = [frechet_distance(a[idx], b[idx]) for idx in rng.integers(0, len(a), (resamples, len(a)))]
    return {"mean": value, "se": float(np.std(boot, ddof=1)), "n": int(len(a))}


def stratified_timesteps(rng: np.random.Generator, n: int, num_timesteps: int) -> np.ndarray:
    """n timesteps covering [0, T) evenly (one uniform draw per stratum, shuffled)."""
    t = ((np.arange(n) + rng.random(n)) / n * num_timesteps).astype(np.int64)
    return rng.permutation(np.clip(t, 0, num_timesteps - 1))
