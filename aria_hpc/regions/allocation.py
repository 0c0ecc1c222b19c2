"""ARIA's pure math around the region table (docs/design.md section 4): importance weights, RC's
replacement schedule, timestep bins and the per-timestep baseline, the split-group view of q.

Functions take arrays and numbers and return arrays: no I/O, no torch.distributed, no config.
Notation follows the design: pi_k is the share of the prompt pool in region k (what RC samples
implicitly), m_k the tracked discrepancy estimate, q_k the allocation ARIA samples regions from.
The statistics fold, the allocation q and the alias draws have one implementation, the C++ table
(regions/table.py); regions/reference.py mirrors them in NumPy for the tests only.
"""

from __future__ import annotations

import numpy as np


def importance_weights(regions: np.ndarray, base: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Self-normalised pi_k / q_k per random-conditioned sample (mean 1 over the batch).

    Multiplying each random sample's loss by this keeps the expected objective equal to RC's.
    """
    if len(regions) == 0:
        return np.ones(0)
    w = base[regions] / q[regions]
    return w / w.mean()


def sample_weights(regions: np.ndarray, random: np.ndarray, base: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per sample of a batch: pi_k / q_k, self-normalised over the random-conditioned samples (mask
    `random`), and 1 for the rest (paired and null-text samples)."""
    w = np.ones(len(regions))
    if random.any():
        w[random] = importance_weights(regions[random], base, q)
    return w


def rc_replace_probability(t: np.ndarray, num_train_timesteps: int, lam: float) -> np.ndarray:
    """RC's schedule p_rc(t) = exp(-lambda (1 - t / T)) of replacing a caption by a pool prompt."""
    return np.exp(-lam * (1.0 - np.asarray(t, dtype=np.float64) / num_train_timesteps))


def timestep_bins(t: np.ndarray, num_train_timesteps: int, num_bins: int) -> np.ndarray:
    """Equal-width timestep bins 0..num_bins-1 for the per-timestep loss baseline b(t)."""
    t = np.asarray(t, dtype=np.int64)
    return np.minimum(t * num_bins // num_train_timesteps, num_bins - 1)


def normalise_by_baseline(losses: np.ndarray, bins: np.ndarray, baseline: np.ndarray,
                          baseline_seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d_i = l_i / b(t_i), and the mask of samples whose bin has a baseline yet.

    Raw loss depends strongly on t and random conditions concentrate at high t, so regions are
    compared on d, not on l. Samples in bins never observed are not tracked (mask False).
    """
    mask = baseline_seen[bins] & (baseline[bins] > 0)
    safe = np.where(mask, baseline[bins], 1.0)
    return losses / safe, mask


def group_view(q: np.ndarray, estimate: np.ndarray, composition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per split group (a column of `composition`, (K, G) prompt counts): the share of random-condition
    draws the allocation q gives it, sum_k q_k n_kg / n_k (a prompt is drawn uniformly inside its
    region), and its tracked discrepancy, the region estimates averaged over the group's prompts,
    sum_k n_kg m_k / n_g. Under RC (q = pi) a group's share is its share of the pool."""
    comp = np.asarray(composition, dtype=np.float64)
    sizes = comp.sum(axis=1)
    within = np.divide(comp, sizes[:, None], out=np.zeros_like(comp), where=sizes[:, None] > 0)
    share = np.asarray(q, dtype=np.float64) @ within
    totals = comp.sum(axis=0)
    tracked = np.divide(np.asarray(estimate, dtype=np.float64) @ comp, totals, out=np.full(comp.shape[1], np.nan),
                        where=totals > 0)
    return share, tracked
