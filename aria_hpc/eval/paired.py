"""Paired comparisons over seeds (pure): an arm against the baseline, seed by seed.

A seed is a block: the same seed gives every arm the same student initialisation, bank draws' seed and
evaluation set, so the per-seed difference arm - baseline removes what the seeds share. The verdict is
the 95% Student-t interval of the mean difference: "better" / "worse" when it excludes 0, else
"within noise". Ratios (arm / baseline) are of the means over the seeds both arms have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (beyond: the normal 1.96 is within 2%)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t_quantile(df: int) -> float:
    """t_{0.975, df}: the half-width multiplier of a two-sided 95% interval."""
    if df < 1:
        raise ValueError("a t interval needs at least 2 paired seeds")
    return T975[df - 1] if df <= len(T975) else 1.96


@dataclass
class Paired:
    seeds: list[int]
    diff_mean: float  # mean over seeds of arm - baseline
    lo: float  # 95% t interval of the mean difference
    hi: float
    ratio: float  # mean(arm) / mean(baseline) over the paired seeds

    def verdict(self, higher_better: bool) -> str:
        if len(self.seeds) < 2 or not (self.lo > 0 or self.hi < 0):
            return "within noise"
        return "better" if (self.lo > 0) == higher_better else "worse"


def paired(arm: dict[int, float], baseline: dict[int, float]) -> Paired | None:
    """The paired comparison of two {seed: value} maps over the seeds both have (None with fewer than 2)."""
    seeds = sorted(set(arm) & set(baseline))
    if len(seeds) < 2:
        return None
    d = [arm[s] - baseline[s] for s in seeds]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    base = sum(baseline[s] for s in seeds) / n
    return Paired(seeds, mean, mean - half, mean + half, (sum(arm[s] for s in seeds) / n) / base if base else math.nan)


def gap_closure(arm_gap: float, baseline_gap: float) -> float:
    """(baseline's gap - arm's gap) / baseline's gap: the share of the baseline's held-out gap the arm closes."""
    return (baseline_gap - arm_gap) / baseline_gap if baseline_gap else math.nan
