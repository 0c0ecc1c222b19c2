"""Which random-conditioned bank entries a run may still serve, and how often each has served.

Pure NumPy. The random-conditioned rows of a bank are grouped by region; within region k's segment
of ``order``, the first ``avail[k]`` positions are the entries that may still serve a draw. A draw
(region k, u ~ U[0, 1)) takes position ``bounds[k] + floor(u * avail[k])``. With a reuse limit, an
entry that has served ``max_reuse`` draws is swapped to the end of the available part, so it is never
drawn again, and a region with nothing left answers "fresh" (-1): the caller computes a new tuple
with the live teacher. Without a limit nothing is ever swapped, so the draws are exactly the cached
bank's: ``region_rows[lo + floor(u * (hi - lo))]``.

With several ranks and a limit, rank r owns the entries at positions p of each region's segment with
p % world == r, so "served fewer than max_reuse times in this run" holds across the whole run with no
communication.
"""

from __future__ import annotations

import numpy as np

FRESH = -1  # what serve() answers for a draw whose region has nothing left


class ReuseLedger:
    def __init__(self, region_rows: np.ndarray, region_bounds: np.ndarray, max_reuse: int | None = None,
                 rank: int = 0, world: int = 1) -> None:
        num_regions = len(region_bounds) - 1
        region = np.repeat(np.arange(num_regions), np.diff(region_bounds))
        position = np.arange(len(region_rows)) - region_bounds[region]
        self.max_reuse = max_reuse
        mine = np.ones(len(region_rows), bool) if self.unlimited else position % world == rank
        self.rows = np.asarray(region_rows, np.int64)[mine]  # bank row of each local entry
        self.region = region[mine]  # (sorted) region of each local entry
        self.bounds = np.searchsorted(self.region, np.arange(num_regions + 1))
        self.order = np.arange(len(self.rows))  # positions -> local entries; [lo, lo + avail) can serve
        self.avail = np.diff(self.bounds)
        self.uses = np.zeros(len(self.rows), np.int64)  # draws each local entry served
        self.fresh = np.zeros(num_regions, np.int64)  # fresh tuples computed per region

    @property
    def unlimited(self) -> bool:
        """No reuse limit (the cached bank): every entry serves any number of draws, nothing runs out."""
        return self.max_reuse is None

    @property
    def num_regions(self) -> int:
        return len(self.bounds) - 1

    def serve(self, regions: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Bank rows for draws of `regions` with uniforms `u`; FRESH where a region has nothing left
        (counted in `fresh`: the caller computes those)."""
        regions = np.asarray(regions, np.int64)
        if self.unlimited:  # the cached bank: vectorised, nothing ever runs out
            local = self.bounds[regions] + (u * self.avail[regions]).astype(np.int64)
            np.add.at(self.uses, local, 1)
            return self.rows[local]
        out = np.full(len(regions), FRESH, np.int64)
        for i, (k, ui) in enumerate(zip(regions.tolist(), np.asarray(u).tolist())):
            a = int(self.avail[k])
            if a == 0:
                self.fresh[k] += 1
                continue
            pos = int(self.bounds[k]) + int(ui * a)
            local = self.order[pos]
            out[i] = self.rows[local]
            self.uses[local] += 1
            if self.uses[local] >= self.max_reuse:  # retire it: swap to the end of the available part
                last = int(self.bounds[k]) + a - 1
                self.order[pos], self.order[last] = self.order[last], local
                self.avail[k] = a - 1
        return out

    def region_usage(self) -> dict[str, np.ndarray]:
        """Per region: draws served (bank + fresh), distinct entries used (a fresh tuple is one) and
        the largest number of draws one entry served (1 where only fresh tuples were used)."""
        k = self.num_regions
        draws = np.bincount(self.region, weights=self.uses, minlength=k).astype(np.int64) + self.fresh
        distinct = np.bincount(self.region, weights=self.uses > 0, minlength=k).astype(np.int64) + self.fresh
        largest = np.zeros(k, np.int64)
        np.maximum.at(largest, self.region, self.uses)
        largest = np.maximum(largest, (self.fresh > 0).astype(np.int64))
        return {"draws": draws, "distinct": distinct, "max_reuse": largest}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"order": self.order.copy(), "avail": self.avail.copy(), "uses": self.uses.copy(),
                "fresh": self.fresh.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if len(state["uses"]) != len(self.uses) or len(state["fresh"]) != len(self.fresh):
            raise ValueError("ledger state is for another bank layout")
        for key in ("order", "avail", "uses", "fresh"):
            getattr(self, key)[:] = state[key]
