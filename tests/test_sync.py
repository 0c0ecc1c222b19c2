"""Cross-rank sync on 2 real processes (gloo): every rank ends identical to a single-process union."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, cli_env, free_port
from dist_worker import BETA, ROUNDS, K, rank_batch

from aria_hpc.regions import RegionTable


@pytest.mark.multiproc
def test_two_ranks_sync_to_the_union_of_their_samples(tmp_path):
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = cli_env() | {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        env["PYTHONPATH"] = str(ROOT / "tests") + os.pathsep + env["PYTHONPATH"]
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "dist_worker.py"),
                                       str(tmp_path / f"rank{rank}.npz")], env=env))
    for p in procs:
        assert p.wait(timeout=180) == 0

    union = RegionTable(K, np.arange(1, K + 1))
    for round_ in range(ROUNDS):
        for rank in range(2):
            union.record(*rank_batch(rank, round_))
        union.fold(BETA)
    union.probabilities(1.0, 0.1)
    expected = union.state_dict()

    states = [np.load(tmp_path / f"rank{rank}.npz") for rank in range(2)]
    for name in states[0].files:
        np.testing.assert_array_equal(states[0][name], states[1][name], err_msg=f"ranks differ in {name}")
        np.testing.assert_allclose(states[0][name], np.asarray(expected[name]), rtol=1e-12, atol=0,
                                   err_msg=name)
    assert states[0]["observations"].sum() == ROUNDS * (1000 + 1500)
