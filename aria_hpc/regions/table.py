"""The region statistics table: Python facade over the C++ core (aria_hpc/native.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from aria_hpc.native import core as _C  # noqa: F401 - cuda_compiled: tests import it here
from aria_hpc.native import cuda_compiled

_STATS = ("ema_mean", "ema_sq", "ema_weight", "age", "observations")


class RegionTable:
    """K regions' discrepancy statistics (docs/design.md section 4).

    ``record`` is lock-free and thread-safe (the GIL is released); reading ``accumulators``,
    ``settle``, ``fold``, ``probabilities`` and ``load_state_dict`` must not run concurrently with
    ``record``: the training loop calls them between steps. ``accumulators`` is a (3, K) float64 view
    of [sum, sum of squares, count] that shares memory with the table, so
    ``torch.from_numpy(table.accumulators)`` can be all-reduced in place.
    """

    def __init__(self, num_regions: int, base: np.ndarray | None = None,
                 init_estimate: float = 1.0) -> None:
        base_arr = None if base is None else np.ascontiguousarray(base, dtype=np.float64)
        self._table = _C.RegionTable(int(num_regions), base_arr, float(init_estimate))

    @property
    def accumulators(self) -> np.ndarray:
        """(3, K) float64 view of [sum, sum of squares, count] sharing the table's memory.

        Reading it first merges the per-thread stripes (not concurrent with ``record``), so it
        holds every record made so far; a view kept from earlier sees later records after the next
        read of this property, ``settle()`` or ``fold``.
        """
        return self._table.accumulators

    def settle(self) -> None:
        """Merge the per-thread stripes into the accumulator block (not concurrent with record)."""
        self._table.settle()

    @property
    def num_regions(self) -> int:
        return self._table.num_regions

    @property
    def init_estimate(self) -> float:
        return self._table.init_estimate

    @property
    def folds(self) -> int:
        return self._table.folds

    @property
    def base(self) -> np.ndarray:
        """pi_k, the normalised share of the pool in each region."""
        return self._table.base()

    def record(self, region_ids: np.ndarray, values: np.ndarray) -> None:
        """Add per-sample values to their regions' sums. Raises ValueError (recording nothing) on
        an id outside [0, K) or a non-finite value."""
        self._table.record(region_ids, values)

    def fold(self, beta: float) -> None:
        """EMA update from the accumulators, then zero them (after the cross-rank all-reduce)."""
        self._table.fold(float(beta))

    def estimate(self) -> np.ndarray:
        return self._table.estimate()

    def variance(self) -> np.ndarray:
        return self._table.variance()

    def stats(self) -> dict[str, np.ndarray]:
        state = self._table.get_state()
        return {name: state[name] for name in _STATS}

    @property
    def q(self) -> np.ndarray:
        """The current allocation (what ``sample`` draws from)."""
        return self._table.get_state()["q"]

    def probabilities(self, alpha: float, eps: float, gamma: float = 0.0) -> np.ndarray:
        """Compute, store and return the allocation q from the current estimates (the one
        implementation of q, in the C++ core; gamma > 0 flattens its base to pi^(1 - gamma))."""
        return self._table.probabilities(float(alpha), float(eps), float(gamma))

    def set_probabilities(self, q: np.ndarray) -> None:
        self._table.set_probabilities(np.ascontiguousarray(q, dtype=np.float64))

    def alias_table(self) -> tuple[np.ndarray, np.ndarray]:
        return self._table.alias_table()

    def sample(self, n: int, key: int) -> np.ndarray:
        """n region ids drawn from q by the alias method; a pure function of (q, key)."""
        return self._table.sample(int(n), int(key))

    def state_dict(self) -> dict[str, Any]:
        state = self._table.get_state()
        state.update(num_regions=self.num_regions, init_estimate=self.init_estimate,
                     accumulators=self.accumulators.copy())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_regions"]) != self.num_regions:
            raise ValueError(f"region table state has K={state['num_regions']}, this table has "
                             f"K={self.num_regions}: the checkpoint was made with other regions")
        if not np.allclose(np.asarray(state["base"]), self.base, rtol=1e-12, atol=0.0):
            raise ValueError("region table state has a different base distribution pi: the "
                             "checkpoint was made with another region map")
        self._table.set_state({k: np.asarray(state[k], dtype=np.float64) for k in (*_STATS, "q", "base")}
                              | {"folds": int(state["folds"])})
        self.accumulators[...] = np.asarray(state["accumulators"], dtype=np.float64)


def table_digest(*tables: RegionTable) -> str:
    """A short hash of what the fold leaves in the tables (estimates, variances, weights, allocation,
    fold count): equal on every rank after a sync, which the training loop checks."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for t in tables:
        for value in (*t.stats().values(), t.q):
            h.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
        h.update(str(t.folds).encode())
    return h.hexdigest()


class DeviceRegionStats:
    """The (3, K) accumulator block on a CUDA device, filled by our kernel on the current stream.

    A training step whose per-sample losses live on the GPU records them here without any host
    synchronisation; at ``aria.sync_every`` the block is all-reduced on the device and added into
    the host table (``flush_into``), which then folds as usual.
    """

    def __init__(self, num_regions: int, device) -> None:
        import torch

        if not cuda_compiled():
            raise RuntimeError("aria_hpc._C was built without CUDA: rebuild on a machine with nvcc "
                               "(ARIA_CUDA=ON pip install . fails loudly where it is missing)")
        self.num_regions = int(num_regions)
        self.block = torch.zeros(3, self.num_regions, dtype=torch.float64, device=device)
        self.error = torch.zeros(1, dtype=torch.int32, device=device)

    def record(self, region_ids, values) -> None:
        """Asynchronous: ids (n,) integer and values (n,) float32/float64 tensors on the device."""
        import torch

        ids = region_ids.detach().to(device=self.block.device, dtype=torch.int64).contiguous()
        vals = values.detach().to(self.block.device)
        if vals.dtype not in (torch.float32, torch.float64):
            vals = vals.float()
        vals = vals.contiguous()
        if ids.shape != vals.shape or ids.ndim != 1:
            raise ValueError("region_ids and values must be 1-D of equal length")
        stream = torch.cuda.current_stream(self.block.device).cuda_stream
        _C.cuda_region_stats(ids.data_ptr(), vals.data_ptr(), vals.dtype == torch.float64, ids.numel(),
                             self.num_regions, self.block.data_ptr(), self.error.data_ptr(), stream)

    def flush_into(self, table: RegionTable, all_reduce=None) -> None:
        """(All-reduce on the device,) add into the host table's block, and zero; synchronises."""
        if all_reduce is not None:
            all_reduce(self.block)
        if int(self.error.item()):
            self.error.zero_()
            raise ValueError("a recorded region id was outside [0, K) or a value was not finite "
                             "(NaN or inf loss?); those samples were skipped")
        table.accumulators[...] += self.block.cpu().numpy()
        self.block.zero_()
