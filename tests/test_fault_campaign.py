"""The CI-sized fault campaign (scripts/fault_campaign.py): every stage killed with SIGKILL at seeded
random moments, then run again with the same command, ends with the uninterrupted run's outputs and
never leaves a reader something half-written."""

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

# moments per stage: enough to land before, inside and after each stage's writes, small enough for CI
MOMENTS = {"embed": 5, "regions": 5, "bank": 5, "train": 3, "eval": 3}


@pytest.fixture(scope="module")
def base(tiny_world, tmp_path_factory):
    """Every stage's inputs, built once by running the stages in order."""
    from fault_campaign import build_base

    path, _ = tiny_world
    root = tmp_path_factory.mktemp("campaign_base")
    build_base(root, str(path), [], log=print)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(MOMENTS))
def test_a_killed_stage_resumes_to_the_uninterrupted_outputs(stage, base, tiny_world, tmp_path):
    from fault_campaign import campaign

    path, _ = tiny_world
    [row] = campaign(str(path), [], [stage], MOMENTS[stage], seed=0, root=tmp_path, log=print, base=base)
    assert row["lost"] == 0 and row["differ"] == 0 and row["visible"] == 0, row["notes"]
    assert row["identical"] == MOMENTS[stage] and row["killed"] >= 1, row
