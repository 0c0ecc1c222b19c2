"""Cross-rank sync of region tables: all-reduce raw sums (never the EMA), then fold on every rank."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from aria_hpc import distributed
from aria_hpc.regions.table import RegionTable


def sync_and_fold(tables: Iterable[RegionTable], beta: float,
                  all_reduce: Callable[[np.ndarray], None] = distributed.all_reduce_sum_) -> None:
    """All-reduce each table's accumulator block in place, then apply the same deterministic fold.

    Every rank starts from the same state and folds the same summed block, so every rank ends in
    the same state, equal to one process that recorded the union of all ranks' samples.
    """
    for table in tables:
        all_reduce(table.accumulators)
        table.fold(beta)
