"""ARIA's pure math (docs/design.md section 4): statistics update, allocation, alias sampling, weights.

Functions take arrays and numbers and return arrays: no I/O, no torch.distributed, no config.
Notation follows the design: pi_k is the share of the prompt pool in region k (what RC samples
implicitly), m_k the tracked discrepancy estimate, q_k the allocation ARIA samples regions from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aria_hpc.regions.rng import GOLDEN, splitmix64

SUM, SQUARES, COUNT = 0, 1, 2  # rows of the (3, K) accumulator block


@dataclass
class RegionStats:
    """Per-region EMA state; every field is a float64 vector of length K."""

    ema_mean: np.ndarray  # uncorrected EMA of the per-fold mean of d
    ema_sq: np.ndarray  # uncorrected EMA of the per-fold mean of d^2
    ema_weight: np.ndarray  # 1 - (1 - beta)^(observed folds): bias correction
    age: np.ndarray  # folds since last observed
    observations: np.ndarray  # samples folded in so far

    @classmethod
    def zeros(cls, num_regions: int) -> "RegionStats":
        return cls(*(np.zeros(num_regions) for _ in range(5)))


def fold_statistics(stats: RegionStats, accumulators: np.ndarray, beta: float) -> RegionStats:
    """m_k <- (1 - beta) m_k + beta * mean_k for observed regions; unobserved ones keep m_k and age.

    `accumulators` is the (3, K) block of [sum d, sum d^2, count] since the last fold (all-reduced
    across ranks). Constant beta is what tracking under bounded variance and drift needs; the
    bias correction only matters while a region has few observed folds.
    """
    if not 0.0 < beta <= 1.0:
        raise ValueError("beta must be in (0, 1]")
    count = accumulators[COUNT]
    seen = count > 0
    safe = np.where(seen, count, 1.0)
    decay = 1.0 - beta
    return RegionStats(
        ema_mean=np.where(seen, decay * stats.ema_mean + beta * (accumulators[SUM] / safe), stats.ema_mean),
        ema_sq=np.where(seen, decay * stats.ema_sq + beta * (accumulators[SQUARES] / safe), stats.ema_sq),
        ema_weight=np.where(seen, decay * stats.ema_weight + beta, stats.ema_weight),
        age=np.where(seen, 0.0, stats.age + 1.0),
        observations=stats.observations + count,
    )


def estimate(stats: RegionStats, init_estimate: float = 1.0) -> np.ndarray:
    """Bias-corrected m_k; `init_estimate` for regions never observed."""
    seen = stats.ema_weight > 0
    return np.where(seen, stats.ema_mean / np.where(seen, stats.ema_weight, 1.0), init_estimate)


def variance(stats: RegionStats) -> np.ndarray:
    """Bias-corrected EMA variance of d per region (0 where never observed)."""
    seen = stats.ema_weight > 0
    w = np.where(seen, stats.ema_weight, 1.0)
    mean = stats.ema_mean / w
    return np.where(seen, np.maximum(0.0, stats.ema_sq / w - mean * mean), 0.0)


def allocate(m: np.ndarray, base: np.ndarray, alpha: float, eps: float) -> np.ndarray:
    """q_k = (1 - eps) pi_k (m_k / mean_m)^alpha / Z + eps pi_k.

    Written as pi_k (1 + (1 - eps)(t_k / Z - 1)) with Z = sum(pi t) / sum(pi): the same number,
    but alpha = 0 (t = 1) then gives q == pi exactly, so ARIA with alpha = 0 makes RC's draws.
    The floor eps keeps every non-empty region observed, so its estimate keeps tracking.
    """
    if not 0.0 <= eps <= 1.0:
        raise ValueError("eps must be in [0, 1]")
    if not (alpha >= 0.0 and np.isfinite(alpha)):
        raise ValueError("alpha must be >= 0")
    m = np.maximum(np.asarray(m, dtype=np.float64), 0.0)  # discrepancies are >= 0
    base = np.asarray(base, dtype=np.float64)
    base_total = _sequential_sum(base)
    mean_m = _sequential_sum(base * m) / base_total
    if mean_m > 0.0 and np.isfinite(mean_m):
        tilt = (m / mean_m) ** alpha
    else:
        tilt = np.ones_like(m)
    z = _sequential_sum(base * tilt) / base_total
    return base * (1.0 + (1.0 - eps) * (tilt / z - 1.0))


def flattened_base(base: np.ndarray, gamma: float) -> np.ndarray:
    """The allocation's base b_k ∝ pi_k^(1 - gamma) over non-empty regions: gamma = 0 is the pool
    share pi (today's ARIA), gamma = 1 uniform over regions (region-level allocation, so a concept
    diluted in the pool is not kept small by its pool share)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError("gamma must be in [0, 1]")
    base = np.asarray(base, dtype=np.float64)
    if gamma == 0.0:
        return base
    flat = np.where(base > 0, np.power(base, 1.0 - gamma, where=base > 0, out=np.zeros_like(base)), 0.0)
    return flat / _sequential_sum(flat)


def _sequential_sum(x: np.ndarray) -> float:
    """Left-to-right float64 sum, the order the C++ table uses (np.sum is pairwise)."""
    return float(np.cumsum(x)[-1]) if len(x) else 0.0


def build_alias(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias table (prob, alias), built in the same deterministic order as the C++ table."""
    q = np.asarray(q, dtype=np.float64)
    k = len(q)
    scaled = list(q * float(k) / _sequential_sum(q))
    prob = np.ones(k)
    alias = np.arange(k, dtype=np.int64)
    small = [r for r in range(k) if scaled[r] < 1.0]
    large = [r for r in range(k) if scaled[r] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias


def alias_draw(prob: np.ndarray, alias: np.ndarray, n: int, key: int) -> np.ndarray:
    """n draws from an alias table, one 64-bit hash x per draw (bit for bit as the C++ table).

    The high word of the 128-bit product x * K is the column; the low word, uniform and
    independent of it, is the coin compared against prob * 2^64.
    """
    k = np.uint64(len(prob))
    x = splitmix64(np.uint64(key) + (np.arange(n, dtype=np.uint64) + np.uint64(1)) * GOLDEN)
    low32 = np.uint64(0xFFFFFFFF)
    with np.errstate(over="ignore"):
        # 128-bit product in 32-bit limbs: K < 2^32, so neither partial product overflows.
        column = ((x >> np.uint64(32)) * k + (((x & low32) * k) >> np.uint64(32))) >> np.uint64(32)
        coin = x * k  # the low 64 bits, wrapping
    column = column.astype(np.int64)
    return np.where(coin < alias_threshold(prob)[column], column, alias[column])


def alias_threshold(prob: np.ndarray) -> np.ndarray:
    """prob in [0, 1] as a 64-bit threshold: P(uniform 64-bit coin < threshold) = prob."""
    below_one = np.where(prob >= 1.0, 0.0, prob)
    return np.where(prob >= 1.0, np.uint64(2**64 - 1), (below_one * 2.0**64).astype(np.uint64))


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
