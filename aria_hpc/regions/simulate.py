"""ARIA's allocation loop on a synthetic discrepancy landscape (no model, seconds on a CPU).

The real table, allocation, sampler and sync run exactly as in training; only the per-sample
discrepancy is simulated: d ~ mu_k * LogNormal(-noise^2/2, noise) (mean mu_k), with a few planted
regions at planted_scale times the rest, optionally drifting. Used to try alpha/eps/beta before
spending accelerator time, and by the tests of tracking and allocation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from aria_hpc.config import Config
from aria_hpc.regions.rng import derive_key
from aria_hpc.regions.sampler import RegionIndex, draw_conditions, update_allocation
from aria_hpc.regions.sync import sync_and_fold
from aria_hpc.regions.table import RegionTable

NOISE_STREAM = 7
PROMPTS_PER_REGION = 50


@dataclass
class Landscape:
    index: RegionIndex
    truth: np.ndarray  # mu_k at step 0
    planted: np.ndarray  # ids of the planted regions


def make_landscape(cfg: Config) -> Landscape:
    s = cfg.simulate
    k = s.num_regions
    share = np.arange(1, k + 1, dtype=np.float64) ** -s.base_skew
    sizes = np.maximum(1, np.round(share / share.sum() * PROMPTS_PER_REGION * k)).astype(np.int64)
    index = RegionIndex(np.repeat(np.arange(k), sizes), k)
    # Plant the high-discrepancy regions among the least represented: where RC looks least.
    planted = np.arange(k - s.planted_regions, k, dtype=np.int64)
    truth = np.ones(k)
    truth[planted] = s.planted_scale
    return Landscape(index, truth, planted)


def predicted_tracking_error(mu: float, q_k: float, cfg: Config, sigmas: float = 3.0) -> float:
    """Lag under drift plus `sigmas` standard deviations of a constant-beta EMA of per-fold means.

    A region drawn with probability q_k gets about q_k * batch * sync_every samples per fold; the
    EMA's stationary variance is beta / (2 - beta) times the per-fold mean's variance, and a linear
    drift of delta per fold leaves a lag of delta (1 - beta) / beta.
    """
    a, s = cfg.aria, cfg.simulate
    per_fold = max(q_k * cfg.train.micro_batch_per_gpu * a.sync_every, 1e-9)
    sample_var = mu * mu * (math.exp(s.noise**2) - 1.0)
    ema_std = math.sqrt(a.beta / (2.0 - a.beta) * sample_var / per_fold)
    lag = abs(s.drift_per_step) * a.sync_every * (1.0 - a.beta) / a.beta
    return lag + sigmas * ema_std


def run_simulation(cfg: Config) -> Iterator[dict]:
    """Yield one metrics record per logged step (and the last step)."""
    a, s = cfg.aria, cfg.simulate
    land = make_landscape(cfg)
    table = RegionTable(s.num_regions, land.index.base, a.init_estimate)
    truth = land.truth.copy()
    batch = cfg.train.micro_batch_per_gpu
    for step in range(cfg.train.steps):
        q = update_allocation(table, a, step=step, policy=cfg.train.policy)
        regions, _prompts = draw_conditions(table, land.index, batch, seed=cfg.seed, rank=0, step=step)
        z = np.random.default_rng(derive_key(cfg.seed, 0, step, NOISE_STREAM)).standard_normal(batch)
        d = truth[regions] * np.exp(s.noise * z - 0.5 * s.noise**2)
        table.record(regions, d)
        if (step + 1) % a.sync_every == 0:
            sync_and_fold([table], a.beta)
        last = step == cfg.train.steps - 1
        if (step + 1) % cfg.train.log_every == 0 or last:
            m = table.estimate()
            p = land.planted
            yield {
                "step": step + 1,
                "planted_share_q": float(q[p].sum()),
                "planted_share_pi": float(land.index.base[p].sum()),
                "planted_truth": float(truth[p].mean()),
                "planted_estimate": float(m[p].mean()),
                "max_tracking_error": float(np.abs(m[p] - truth[p]).max()) if len(p) else 0.0,
                "predicted_error": max((predicted_tracking_error(truth[r], q[r], cfg) for r in p),
                                       default=0.0),
                "estimate": m.tolist(),
                "allocation": q.tolist(),
            }
        truth[land.planted] += s.drift_per_step


TABLE_HEADER = (f"{'step':>6} {'q(planted)':>11} {'pi(planted)':>12} {'truth':>7} {'estimate':>9} "
                f"{'max err':>8} {'predicted':>10}")


def table_row(rec: dict) -> str:
    """One logged step of a simulation as a row under TABLE_HEADER (what `aria-hpc simulate` prints)."""
    return (f"{rec['step']:>6} {rec['planted_share_q']:>11.3f} {rec['planted_share_pi']:>12.3f} "
            f"{rec['planted_truth']:>7.3f} {rec['planted_estimate']:>9.3f} "
            f"{rec['max_tracking_error']:>8.3f} {rec['predicted_error']:>10.3f}")
