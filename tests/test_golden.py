"""Golden files: what users read and what SLURM runs, pinned (submitit pins its sbatch text the same
way). A change to any of them is deliberate: regenerate with `ARIA_UPDATE_GOLDEN=1 pytest
tests/test_golden.py` and review the diff."""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, cli_env

GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("ARIA_UPDATE_GOLDEN") == "1"


def _subcommands() -> list[str]:
    from aria_hpc.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"no golden file {path}: run ARIA_UPDATE_GOLDEN=1 pytest tests/test_golden.py"
    assert text == path.read_text(), f"{name} changed: if on purpose, regenerate (ARIA_UPDATE_GOLDEN=1) and review"


@pytest.mark.parametrize("command", [None, *_subcommands()])
def test_help_text_is_pinned(command):
    env = {**cli_env(), "COLUMNS": "100"}
    args = [sys.executable, "-m", "aria_hpc.cli", *([command] if command else []), "--help"]
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    _check(f"help/{command or 'aria-hpc'}.txt", res.stdout)


def test_train_module_help_is_pinned():
    res = subprocess.run([sys.executable, "-m", "aria_hpc.train", "--help"], cwd=ROOT,
                         env={**cli_env(), "COLUMNS": "100"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    _check("help/python-m-aria_hpc.train.txt", res.stdout)


def test_member_sbatch_script_is_pinned(tmp_path):
    """The sbatch script submitit writes for a 2-node sweep member (paths replaced by placeholders),
    through the pure function jobs.sbatch_text: on any machine, SLURM or not."""
    from aria_hpc.config import LaunchConfig
    from aria_hpc.jobs import sbatch_text

    launch = LaunchConfig(partition="debug", nodes=2, tasks_per_node=1, cpus_per_task=4, mem_gb=8,
                          timeout_min=90, array_parallelism=4)
    text = sbatch_text(launch, tmp_path / "submitit", "aria-000-alpha=1.0,seed=0")
    text = text.replace(str(tmp_path), "TMP").replace(sys.executable, "PYTHON")
    _check("member.sbatch", text)


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("srun") is None,
                    reason="submitit's SLURM executor needs srun on PATH (scripts/slurm_local.sh install)")
def test_the_executor_writes_what_sbatch_text_says(tmp_path):
    """Where SLURM is installed: the executor the sweep submits with writes the same script."""
    from aria_hpc.config import LaunchConfig
    from aria_hpc.jobs import make_executor, sbatch_text

    launch = LaunchConfig(partition="debug", nodes=2, tasks_per_node=1, cpus_per_task=4, mem_gb=8,
                          timeout_min=90, array_parallelism=4)
    name = "aria-000-alpha=1.0,seed=0"
    ex = make_executor(launch, "slurm", tmp_path / "submitit", name)._executor
    assert ex._make_submission_file_text(ex._submitit_command_str, "uid") == sbatch_text(launch, tmp_path / "submitit",
                                                                                           name)
