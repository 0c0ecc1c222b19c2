"""The NumPy mirror of the C++ region table (regions/table.py): the same statistics fold, allocation q
and alias draws, in the same summation order, with the same API. Tests hold the C++ core to it; no
production code runs it (the C++ table is the one implementation of each rule)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    """Left-to-right float64 sum, the order the C++ table sums in (np.sum is pairwise)."""
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


class ReferenceRegionTable:
    def __init__(self, num_regions: int, base: np.ndarray | None = None,
                 init_estimate: float = 1.0) -> None:
        if num_regions < 1:
            raise ValueError("num_regions must be >= 1")
        base = np.ones(num_regions) if base is None else np.asarray(base, dtype=np.float64)
        if base.shape != (num_regions,) or (base < 0).any() or not np.isfinite(base).all():
            raise ValueError("base must be K finite values >= 0")
        self.num_regions = num_regions
        self.init_estimate = float(init_estimate)
        self.base = base / _sequential_sum(base)
        self.accumulators = np.zeros((3, num_regions))
        self._stats = RegionStats.zeros(num_regions)
        self.folds = 0
        self.set_probabilities(self.base)

    def record(self, region_ids: np.ndarray, values: np.ndarray) -> None:
        ids = np.asarray(region_ids, dtype=np.int64)
        v = np.asarray(values, dtype=np.float64)
        if ids.shape != v.shape or ids.ndim != 1:
            raise ValueError("region_ids and values must be 1-D of equal length")
        if ((ids < 0) | (ids >= self.num_regions)).any():
            raise ValueError("region id outside [0, K)")
        if not np.isfinite(v).all():
            raise ValueError("value is not finite")
        np.add.at(self.accumulators[SUM], ids, v)
        np.add.at(self.accumulators[SQUARES], ids, v * v)
        np.add.at(self.accumulators[COUNT], ids, 1.0)

    def fold(self, beta: float) -> None:
        self._stats = fold_statistics(self._stats, self.accumulators, beta)
        self.accumulators[...] = 0.0
        self.folds += 1

    def estimate(self) -> np.ndarray:
        return estimate(self._stats, self.init_estimate)

    def variance(self) -> np.ndarray:
        return variance(self._stats)

    def stats(self) -> dict[str, np.ndarray]:
        return {name: getattr(self._stats, name).copy() for name in
                ("ema_mean", "ema_sq", "ema_weight", "age", "observations")}

    def probabilities(self, alpha: float, eps: float, gamma: float = 0.0) -> np.ndarray:
        q = allocate(self.estimate(), flattened_base(self.base, gamma), alpha, eps)
        self.set_probabilities(q)
        return q

    def set_probabilities(self, q: np.ndarray) -> None:
        self.q = np.asarray(q, dtype=np.float64).copy()
        self._prob, self._alias = build_alias(self.q)

    def alias_table(self) -> tuple[np.ndarray, np.ndarray]:
        return self._prob, self._alias

    def sample(self, n: int, key: int) -> np.ndarray:
        return alias_draw(self._prob, self._alias, n, key)

    def state_dict(self) -> dict[str, Any]:
        return {**self.stats(), "q": self.q.copy(), "folds": self.folds,
                "num_regions": self.num_regions, "init_estimate": self.init_estimate,
                "base": self.base.copy(), "accumulators": self.accumulators.copy()}
