"""Pure NumPy reference of RegionTable, with the same API and semantics; tests compare the two."""

from __future__ import annotations

from typing import Any

import numpy as np

from aria_hpc.regions import allocation as A


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
        self.base = base / A._sequential_sum(base)
        self.accumulators = np.zeros((3, num_regions))
        self._stats = A.RegionStats.zeros(num_regions)
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
        np.add.at(self.accumulators[A.SUM], ids, v)
        np.add.at(self.accumulators[A.SQUARES], ids, v * v)
        np.add.at(self.accumulators[A.COUNT], ids, 1.0)

    def fold(self, beta: float) -> None:
        self._stats = A.fold_statistics(self._stats, self.accumulators, beta)
        self.accumulators[...] = 0.0
        self.folds += 1

    def estimate(self) -> np.ndarray:
        return A.estimate(self._stats, self.init_estimate)

    def variance(self) -> np.ndarray:
        return A.variance(self._stats)

    def stats(self) -> dict[str, np.ndarray]:
        return {name: getattr(self._stats, name).copy() for name in
                ("ema_mean", "ema_sq", "ema_weight", "age", "observations")}

    def probabilities(self, alpha: float, eps: float) -> np.ndarray:
        q = A.allocate(self.estimate(), self.base, alpha, eps)
        self.set_probabilities(q)
        return q

    def set_probabilities(self, q: np.ndarray) -> None:
        self.q = np.asarray(q, dtype=np.float64).copy()
        self._prob, self._alias = A.build_alias(self.q)

    def alias_table(self) -> tuple[np.ndarray, np.ndarray]:
        return self._prob, self._alias

    def sample(self, n: int, key: int) -> np.ndarray:
        return A.alias_draw(self._prob, self._alias, n, key)

    def state_dict(self) -> dict[str, Any]:
        return {**self.stats(), "q": self.q.copy(), "folds": self.folds,
                "num_regions": self.num_regions, "init_estimate": self.init_estimate,
                "base": self.base.copy(), "accumulators": self.accumulators.copy()}
