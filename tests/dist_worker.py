"""A rank of the 2-process sync test: records its own samples, syncs, saves its state."""

import sys

import numpy as np

from aria_hpc import distributed
from aria_hpc.regions import RegionTable, sync_and_fold

K, BETA, ROUNDS = 50, 0.2, 3


def rank_batch(rank: int, round_: int):
    rng = np.random.default_rng([rank, round_])
    n = 1000 + 500 * rank  # unequal shares per rank
    return rng.integers(0, K, n), rng.gamma(2.0, 1.0 + rank, n)


def main(out: str) -> None:
    info = distributed.init("gloo")
    table = RegionTable(K, np.arange(1, K + 1))
    for round_ in range(ROUNDS):
        table.record(*rank_batch(info.rank, round_))
        sync_and_fold([table], BETA)
    table.probabilities(1.0, 0.1)
    np.savez(out, **{k: np.asarray(v) for k, v in table.state_dict().items()})
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
