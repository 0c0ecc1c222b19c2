"""ARIA's pure math with known values, the RC equivalence, and tracking on a simulated landscape."""

import math

import numpy as np
import pytest

from aria_hpc.config import AriaConfig, load_config
from aria_hpc.regions import RegionIndex, RegionTable, draw_conditions, update_allocation
from aria_hpc.regions import allocation as A
from aria_hpc.regions import reference as R
from aria_hpc.regions.simulate import make_landscape, predicted_tracking_error, run_simulation


def test_allocate_known_values():
    base = np.array([0.5, 0.25, 0.25])
    m = np.array([1.0, 2.0, 4.0])
    # mean_m = 0.5 + 0.5 + 1 = 2; tilt = [0.5, 1, 2]; Z = 0.25 + 0.25 + 0.5 = 1
    q = R.allocate(m, base, alpha=1.0, eps=0.0)
    np.testing.assert_allclose(q, [0.25, 0.25, 0.5])
    q = R.allocate(m, base, alpha=1.0, eps=0.2)
    np.testing.assert_allclose(q, 0.8 * np.array([0.25, 0.25, 0.5]) + 0.2 * base)
    np.testing.assert_allclose(R.allocate(m, base, alpha=2.0, eps=0.0), base * np.array([0.25, 1, 4]) / 1.375)


def test_alpha_zero_is_exactly_the_base():
    rng = np.random.default_rng(0)
    for _ in range(50):
        base = rng.random(37)
        base /= base.sum()
        q = R.allocate(rng.random(37) * 5, base, alpha=0.0, eps=float(rng.random()))
        np.testing.assert_array_equal(q, base)


def test_eps_floor_bounds_every_region():
    base = np.array([0.7, 0.2, 0.1])
    q = R.allocate(np.array([1e-9, 1e-9, 1e6]), base, alpha=2.0, eps=0.1)
    assert (q >= 0.1 * base - 1e-15).all()
    assert q.sum() == pytest.approx(1.0)


def test_fold_statistics_known_values():
    stats = R.RegionStats.zeros(2)
    acc = np.array([[6.0, 0.0], [20.0, 0.0], [2.0, 0.0]])
    stats = R.fold_statistics(stats, acc, beta=0.25)
    np.testing.assert_allclose(stats.ema_mean, [0.75, 0.0])
    np.testing.assert_allclose(stats.ema_weight, [0.25, 0.0])
    np.testing.assert_allclose(R.estimate(stats, init_estimate=1.0), [3.0, 1.0])
    np.testing.assert_allclose(R.variance(stats), [1.0, 0.0])  # E[d^2]=10, mean 3
    np.testing.assert_array_equal(stats.age, [0, 1])
    np.testing.assert_array_equal(stats.observations, [2, 0])


def test_importance_weights_undo_the_tilt_on_average():
    base = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.3, 0.5])
    regions = np.array([0, 1, 2, 2])
    w = A.importance_weights(regions, base, q)
    raw = np.array([2.5, 1.0, 0.4, 0.4])
    np.testing.assert_allclose(w, raw / raw.mean())
    assert w.mean() == pytest.approx(1.0)
    # In expectation under q, pi/q reweights to pi: sum_k q_k * f_k * pi_k/q_k = E_pi[f].
    f = np.array([1.0, 2.0, 3.0])
    assert (q * f * base / q).sum() == pytest.approx((base * f).sum())


def test_rc_schedule_and_timestep_bins():
    np.testing.assert_allclose(A.rc_replace_probability([1000, 0], 1000, 5.0), [1.0, math.exp(-5)])
    # About 20% of samples overall under uniform t with lambda = 5 (the RC paper's figure).
    assert A.rc_replace_probability(np.arange(1000), 1000, 5.0).mean() == pytest.approx(0.2, abs=0.01)
    np.testing.assert_array_equal(A.timestep_bins(np.array([0, 99, 100, 999]), 1000, 10), [0, 0, 1, 9])


def test_normalise_by_baseline_skips_unseen_bins():
    d, mask = A.normalise_by_baseline(np.array([2.0, 3.0, 4.0]), np.array([0, 1, 0]),
                                      baseline=np.array([2.0, 1.0]), baseline_seen=np.array([True, False]))
    np.testing.assert_array_equal(mask, [True, False, True])
    np.testing.assert_allclose(d[mask], [1.0, 2.0])


def _uniform_pool_draws(region_of_prompt, k, n, seed, steps):
    index = RegionIndex(region_of_prompt, k)
    out = {}
    for policy, alpha in (("rc", 0.0), ("aria", 0.0)):
        table = RegionTable(k, index.base)
        rng = np.random.default_rng(1)
        draws = []
        for step in range(steps):
            update_allocation(table, AriaConfig(alpha=alpha, eps=0.1, warmup_steps=0), step=step, policy=policy)
            regions, prompts = draw_conditions(table, index, n, seed=seed, rank=0, step=step)
            draws.append(prompts)
            # ARIA's estimates move (rc ignores them): alpha = 0 must still draw as RC does.
            table.record(regions, rng.random(n) * (1 + regions))
            table.fold(0.3)
        out[policy] = np.concatenate(draws)
    return index, out


def test_alpha_zero_makes_exactly_the_rc_draws_and_rc_is_uniform_over_the_pool():
    k, n_prompts = 12, 3000
    rng = np.random.default_rng(0)
    region_of_prompt = rng.choice(k, size=n_prompts, p=np.arange(1, k + 1) / np.arange(1, k + 1).sum())
    index, draws = _uniform_pool_draws(region_of_prompt, k, n=256, seed=3, steps=200)
    np.testing.assert_array_equal(draws["rc"], draws["aria"])
    counts = np.bincount(draws["rc"], minlength=n_prompts)
    expected = len(draws["rc"]) / n_prompts
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = n_prompts - 1
    assert abs(chi2 - dof) < 6 * math.sqrt(2 * dof)


def test_prompt_draws_stay_inside_their_region():
    index = RegionIndex(np.array([2, 0, 2, 1, 2, 0]), 4)
    np.testing.assert_array_equal(index.sizes, [2, 1, 3, 0])
    regions = np.array([0, 1, 2] * 100)
    prompts = index.prompts_in(regions, key=7)
    np.testing.assert_array_equal(index.region_of_prompt[prompts], regions)
    with pytest.raises(ValueError, match="empty region"):
        index.prompts_in(np.array([3]), key=7)
    with pytest.raises(ValueError, match="outside"):
        RegionIndex(np.array([0, 5]), 4)


def _sim_config(*overrides):
    return load_config(None, ["train.steps=1500", "train.micro_batch_per_gpu=64", "train.log_every=50",
                              "aria.warmup_steps=50", "aria.sync_every=10", "aria.beta=0.1",
                              "simulate.num_regions=32", "simulate.planted_regions=3", *overrides])


def test_allocation_moves_to_a_planted_high_discrepancy_region():
    cfg = _sim_config()
    records = list(run_simulation(cfg))
    final = records[-1]
    land = make_landscape(cfg)
    q, pi = np.array(final["allocation"]), land.index.base
    ratio = q[land.planted] / pi[land.planted]
    # Truth is 3x elsewhere: with alpha = 1, eps = 0.1 the target ratio is about 0.9*3/Z + 0.1 > 2.
    assert (ratio > 2.0).all(), ratio
    others = np.setdiff1d(np.arange(cfg.simulate.num_regions), land.planted)
    other_ratio = q[others] / pi[others]
    assert np.average(other_ratio, weights=pi[others]) < 1.0  # effort taken from the rest
    assert other_ratio.max() < ratio.min()  # estimation noise never rivals the planted gap
    # RC keeps pi.
    rc = list(run_simulation(_sim_config("train.policy=rc")))[-1]
    np.testing.assert_allclose(rc["allocation"], pi)


def test_estimate_tracks_a_drifting_discrepancy_within_the_ema_error():
    cfg = _sim_config("simulate.drift_per_step=-0.001", "simulate.noise=0.5")
    land = make_landscape(cfg)
    records = [r for r in run_simulation(cfg)]
    after_burn_in = [r for r in records if r["step"] >= 500]
    assert after_burn_in[-1]["planted_truth"] < after_burn_in[0]["planted_truth"] - 0.9  # it did drift
    within_3, within_5, checks = 0, 0, 0
    for r in after_burn_in:
        for k in land.planted:
            error = abs(r["estimate"][k] - r["planted_truth"])
            q_k = r["allocation"][k]
            within_3 += error <= predicted_tracking_error(r["planted_truth"], q_k, cfg, sigmas=3.0)
            within_5 += error <= predicted_tracking_error(r["planted_truth"], q_k, cfg, sigmas=5.0)
            checks += 1
    assert within_3 >= 0.95 * checks and within_5 == checks, (within_3, within_5, checks)
    # And the bound is not vacuous: a frozen estimate would be far outside it by the end.
    frozen_error = abs(records[0]["planted_estimate"] - records[-1]["planted_truth"])
    assert frozen_error > 2 * records[-1]["predicted_error"]


def test_region_purity_of_a_split_group():
    from aria_hpc.conditioning.kmeans import purity

    comp = np.array([[0, 0, 10, 0], [5, 0, 5, 0], [9, 0, 1, 0], [4, 0, 0, 0]])  # seen, under, unseen, -1
    p = purity(comp, 2)
    assert p[0] == {"threshold": 0.5, "regions": 1, "held": 10 / 16} and p[1]["regions"] == 1
    assert purity(comp, 0, (0.8,))[0] == {"threshold": 0.8, "regions": 2, "held": 13 / 18}


def test_group_view_of_the_allocation_and_the_tracker():
    from aria_hpc.regions.allocation import group_view

    comp = np.array([[8, 2], [10, 0], [0, 0], [5, 5]])  # regions x (seen, unseen) prompt counts
    pi = comp.sum(1) / comp.sum()
    share, tracked = group_view(pi, np.array([1.0, 1.0, 9.0, 3.0]), comp)
    assert np.allclose(share, comp.sum(0) / comp.sum())  # RC: each group's share of the pool
    assert np.allclose(tracked, [(8 + 10 + 15) / 23, (2 + 15) / 7])
    share, _ = group_view(np.array([0.0, 0.0, 0.0, 1.0]), np.ones(4), comp)
    assert np.allclose(share, [0.5, 0.5]) and np.isclose(share.sum(), 1)


def test_flattened_base_of_the_allocation():
    from aria_hpc.regions.reference import allocate, flattened_base

    pi = np.array([0.6, 0.3, 0.1, 0.0])
    assert np.array_equal(flattened_base(pi, 0.0), pi)
    assert np.allclose(flattened_base(pi, 1.0), [1 / 3, 1 / 3, 1 / 3, 0])  # uniform over non-empty regions
    half = flattened_base(pi, 0.5)
    assert np.isclose(half.sum(), 1) and half[2] > pi[2] and half[0] < pi[0] and half[3] == 0
    # equal estimates: q is the base itself; a worse region gains over it
    assert np.allclose(allocate(np.ones(4), flattened_base(pi, 1.0), 1.0, 0.1), [1 / 3, 1 / 3, 1 / 3, 0])
    q = allocate(np.array([1.0, 1.0, 3.0, 1.0]), flattened_base(pi, 1.0), 1.0, 0.1)
    assert q[2] > 1 / 3 and np.isclose(q.sum(), 1)
    with pytest.raises(ValueError):
        flattened_base(pi, 1.5)


def test_simulate_honours_every_allocation_field():
    """aria-hpc simulate allocates as training does, from the whole aria section: base_gamma flattens
    its base (it was ignored), warmup_steps holds q = pi, and alpha / eps tilt it."""
    from aria_hpc.regions.reference import allocate, flattened_base

    over = ["train.steps=40", "train.log_every=20", "aria.warmup_steps=20", "aria.sync_every=7"]
    runs = {g: list(run_simulation(load_config(None, [*over, f"aria.base_gamma={g}"]))) for g in (0.0, 1.0)}
    cfg = load_config(None, over)
    base = make_landscape(cfg).index.base
    for g, records in runs.items():
        np.testing.assert_allclose(records[0]["allocation"], base)  # step 20: still warming up (q = pi)
        last = records[-1]
        want = allocate(np.array(last["estimate"]), flattened_base(base, g), cfg.aria.alpha, cfg.aria.eps)
        # the last step's allocation, from the estimates it logs (no fold since: 40 is not a multiple of 7)
        np.testing.assert_allclose(last["allocation"], want, atol=1e-12)
    assert runs[1.0][-1]["planted_share_q"] > runs[0.0][-1]["planted_share_q"]  # planted regions are the rarest
