"""The C++ region table against its NumPy reference, plus its thread-safety and error paths."""

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aria_hpc import _C
from aria_hpc.regions import RegionTable
from aria_hpc.regions.reference import ReferenceRegionTable
from aria_hpc.regions.rng import uniforms

K_VALUES = st.integers(min_value=1, max_value=300)


def _batch(rng, k, n):
    return rng.integers(0, k, n), rng.normal(1.0, 2.0, n)


def test_counter_uniform_matches_numpy():
    for key in (0, 1, 2**63 + 12345, 2**64 - 1):
        np.testing.assert_array_equal(_C.counter_uniform(key, 1000), uniforms(key, 1000))


@settings(max_examples=60, deadline=None)
@given(k=K_VALUES, seed=st.integers(0, 2**32 - 1), batches=st.integers(1, 4),
       n=st.integers(0, 2000), beta=st.floats(0.01, 1.0), alpha=st.floats(0.0, 3.0),
       eps=st.floats(0.0, 1.0), skew=st.booleans(), gamma=st.sampled_from([0.0, 0.5, 1.0]))
def test_table_matches_reference(k, seed, batches, n, beta, alpha, eps, skew, gamma):
    rng = np.random.default_rng(seed)
    base = rng.random(k) + (0.0 if skew else 1.0)
    base[0] += 0.1  # a positive sum
    native, ref = RegionTable(k, base), ReferenceRegionTable(k, base)
    np.testing.assert_array_equal(native.base, ref.base)
    for _ in range(batches):
        ids, values = _batch(rng, k, n)
        native.record(ids, values)
        ref.record(ids, values)
        np.testing.assert_allclose(native.accumulators, ref.accumulators, rtol=1e-12, atol=1e-9)
        native.accumulators[...] = ref.accumulators  # same summation order from here on
        native.fold(beta)
        ref.fold(beta)
        assert not native.accumulators.any()
        for name, value in ref.stats().items():
            np.testing.assert_array_equal(native.stats()[name], value, err_msg=name)
        np.testing.assert_array_equal(native.estimate(), ref.estimate())
        np.testing.assert_array_equal(native.variance(), ref.variance())
        q_native, q_ref = native.probabilities(alpha, eps, gamma), ref.probabilities(alpha, eps, gamma)
        np.testing.assert_allclose(q_native, q_ref, rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(q_native.sum(), 1.0, rtol=1e-12)
        # Same q in, same alias table and the same draws out, bit for bit.
        native.set_probabilities(q_ref)
        for a, b in zip(native.alias_table(), ref.alias_table()):
            np.testing.assert_array_equal(a, b)
        key = int(rng.integers(0, 2**63))
        np.testing.assert_array_equal(native.sample(500, key), ref.sample(500, key))


@pytest.mark.parametrize("k", [1, 7, 64])
def test_sample_frequencies_follow_q(k):
    rng = np.random.default_rng(k)
    table = RegionTable(k)
    q = rng.random(k) ** 3 + 1e-3
    q /= q.sum()
    table.set_probabilities(q)
    n = 400_000
    counts = np.bincount(table.sample(n, key=99), minlength=k)
    expected = q * n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # chi-square with k-1 degrees of freedom: mean k-1, sd sqrt(2(k-1)); 6 sd is far in the tail.
    assert chi2 < (k - 1) + 6 * np.sqrt(2 * max(k - 1, 1)) + 1


def test_sample_is_deterministic_for_a_key():
    table = RegionTable(10, base=np.arange(1, 11))
    np.testing.assert_array_equal(table.sample(1000, 5), table.sample(1000, 5))
    assert not np.array_equal(table.sample(1000, 5), table.sample(1000, 6))


def test_known_values_of_one_fold():
    table = RegionTable(3)
    table.record(np.array([0, 0, 2]), np.array([1.0, 3.0, 4.0]))
    np.testing.assert_array_equal(table.accumulators, [[4, 0, 4], [10, 0, 16], [2, 0, 1]])
    table.fold(0.5)
    # Bias correction: after one observed fold the estimate is the fold's mean, whatever beta.
    np.testing.assert_allclose(table.estimate(), [2.0, 1.0, 4.0])  # region 1 keeps init_estimate
    np.testing.assert_allclose(table.variance(), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(table.stats()["age"], [0, 1, 0])
    table.record(np.array([0]), np.array([6.0]))
    table.fold(0.5)
    # Uncorrected EMA: 0.5*(0.5*2)+0.5*6 = 3.5, weight 0.75 -> 4.667
    np.testing.assert_allclose(table.estimate()[0], 3.5 / 0.75)
    np.testing.assert_array_equal(table.stats()["age"], [0, 2, 1])


def test_accumulators_are_zero_copy_and_all_reducible_through_torch():
    table = RegionTable(4)
    view = np.asarray(table.accumulators)
    assert view.shape == (3, 4) and view.dtype == np.float64
    assert np.shares_memory(view, table.accumulators)
    tensor = torch.from_numpy(table.accumulators)
    table.record(np.array([1]), np.array([2.0]))
    table.settle()  # per-thread stripes merge into the block (reading .accumulators also does)
    assert tensor[0, 1].item() == 2.0  # the tensor sees the C++ write
    table.record(np.array([1]), np.array([1.0]))
    assert table.accumulators[2, 1] == 2.0 and tensor[2, 1].item() == 2.0
    tensor.mul_(3)  # what an all-reduce does in place
    table.fold(1.0)
    assert table.estimate()[1] == 1.5  # sum 9 / count 6
    del table
    assert tensor.shape == (3, 4)  # the view keeps the table alive


@pytest.mark.parametrize("ids, values, match", [
    ([0, 5], [1.0, 1.0], "outside"),
    ([0, -1], [1.0, 1.0], "outside"),
    ([0, 1], [1.0, float("nan")], "not finite"),
    ([0, 1], [float("inf"), 1.0], "not finite"),
])
@pytest.mark.parametrize("repeat", [1, 100])  # sparse and dense record paths
@pytest.mark.parametrize("settled", [True, False])  # into a clean stripe, or one holding samples
@pytest.mark.parametrize("bad_last", [False, True])  # first, or after every good sample
def test_bad_samples_raise_and_record_nothing(ids, values, match, repeat, settled, bad_last):
    table, twin = RegionTable(5), RegionTable(5)
    for t in (table, twin):
        t.record(np.array([2, 3]), np.array([1.0, 0.1]))
    if settled:
        _ = table.accumulators  # reading the block settles the pending samples
    # One bad sample, before or after 2 * repeat - 1 good ones (all added by then on the fast paths).
    bad = next(i for i, (r, v) in enumerate(zip(ids, values)) if not (0 <= r < 5 and np.isfinite(v)))
    bad_ids, bad_values = [ids[1 - bad]] * (2 * repeat - 1), [values[1 - bad]] * (2 * repeat - 1)
    at = len(bad_ids) if bad_last else 0
    bad_ids.insert(at, ids[bad])
    bad_values.insert(at, values[bad])
    with pytest.raises(ValueError, match=match):
        table.record(np.array(bad_ids), np.array(bad_values))
    np.testing.assert_array_equal(table.accumulators, twin.accumulators)
    table.record(np.array([1]), np.array([0.5]))  # still usable
    twin.record(np.array([1]), np.array([0.5]))
    np.testing.assert_array_equal(table.accumulators, twin.accumulators)


def test_bad_construction_and_arguments():
    with pytest.raises(ValueError):
        RegionTable(0)
    with pytest.raises(ValueError, match="shape"):
        RegionTable(3, base=np.ones(4))
    with pytest.raises(ValueError, match="positive sum"):
        RegionTable(3, base=np.zeros(3))
    table = RegionTable(3)
    with pytest.raises(ValueError, match="beta"):
        table.fold(0.0)
    with pytest.raises(ValueError, match="eps"):
        table.probabilities(1.0, 1.5)
    with pytest.raises(ValueError, match="gamma"):
        table.probabilities(1.0, 0.1, 1.5)
    with pytest.raises(ValueError, match="equal length"):
        table.record(np.array([0, 1]), np.array([1.0]))


def test_state_dict_round_trip_resumes_exactly():
    rng = np.random.default_rng(0)
    a, b = RegionTable(20, rng.random(20) + 0.1), None
    for _ in range(5):
        a.record(*_batch(rng, 20, 100))
        a.fold(0.2)
    a.probabilities(1.5, 0.1)
    a.record(*_batch(rng, 20, 10))  # un-folded accumulators travel too
    state = a.state_dict()
    b = RegionTable(20, state["base"])
    b.load_state_dict(state)
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(np.asarray(b.state_dict()[name]), np.asarray(value), err_msg=name)
    np.testing.assert_array_equal(a.sample(100, 1), b.sample(100, 1))
    with pytest.raises(ValueError, match="K=20"):
        RegionTable(21).load_state_dict(state)
    with pytest.raises(ValueError, match="base distribution"):
        RegionTable(20).load_state_dict(state)


def _record_concurrently(table, num_threads, n, k):
    rng = np.random.default_rng(1234)
    batches = [_batch(rng, k, n) for _ in range(num_threads)]
    start = threading.Barrier(num_threads)

    def worker(ids, values):
        start.wait()
        table.record(ids, values)

    threads = [threading.Thread(target=worker, args=b) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return batches


@pytest.mark.parametrize("k", [16, 65536])
def test_eight_threads_record_one_table(k, request):
    n = int(request.config.getoption("--tsan-n", default=None) or 1_000_000)
    table = RegionTable(k)
    batches = _record_concurrently(table, 8, n, k)
    ids = np.concatenate([b[0] for b in batches])
    values = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(table.accumulators[2], np.bincount(ids, minlength=k))
    np.testing.assert_allclose(table.accumulators[0], np.bincount(ids, values, minlength=k), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(table.accumulators[1], np.bincount(ids, values**2, minlength=k), rtol=1e-9)


def test_gather_rows_copies_rows_and_rejects_bad_input():
    from aria_hpc.native import gather_rows

    src = np.arange(5 * 2 * 3, dtype=np.float16).reshape(5, 2, 3)
    out = np.empty((4, 2, 3), np.float16)
    gather_rows(src, np.array([4, 0, 0, 2]), out)
    assert np.array_equal(out, src[[4, 0, 0, 2]])
    with pytest.raises(IndexError, match="index 5 out of range"):
        gather_rows(src, np.array([1, 5, 0, 0]), out)
    with pytest.raises(ValueError, match="one row per index"):
        gather_rows(src, np.array([1]), out)
    with pytest.raises(ValueError, match="C-contiguous"):
        gather_rows(src[:, :, ::2], np.array([0, 1, 2, 3]), np.empty((4, 2, 2), np.float16))
