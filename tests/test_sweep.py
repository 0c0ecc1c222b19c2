"""Sweeps: planning and bad input without a cluster; submitit members on the local executor; on the
real SLURM cluster: a sweep with a crashing member and a 2-rank member, and preemption + requeue."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, cli_env
from test_bank import slurm_up

from aria_hpc.config import load_config

TINY = {"train.steps": 3, "train.micro_batch_per_gpu": 8, "train.log_every": 1, "train.region_log_every": 1,
        "aria.warmup_steps": 1, "aria.sync_every": 1, "eval.per_region": 4, "eval.per_group": 2,
        "eval.sample_steps": 2, "eval.grid": 1, "launch.cpus_per_task": 1, "launch.mem_gb": 3,
        "launch.timeout_min": 15}
needs_slurm = pytest.mark.skipif(not slurm_up(), reason="no SLURM cluster answering (scripts/slurm_local.sh start)")


@pytest.fixture
def sweep_bank(tiny_bank):
    return tiny_bank  # the session's shared bank (conftest.py); sweeps only read it


def write_sweep(tmp_path, base, name="sweep.yaml", tiny=True, **fields):
    data = {"base": str(base), "dir": str(tmp_path / "sweep"),
            "overrides": [f"{k}={v}" for k, v in (TINY if tiny else {}).items()] + fields.pop("overrides", []),
            **fields}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_sweep_plan_status_and_bad_input(tiny_world, tmp_path, aria_cli):
    from aria_hpc.launch.sweep import load_sweep, members

    base, _ = tiny_world
    spec = write_sweep(tmp_path, base, grid={"aria.alpha": [0.5, 1.0]},
                       zip={"train.lr": [1e-3, 2e-3], "train.warmup_steps": [0, 1]}, seeds=[0, 1])
    planned = members(load_sweep(spec))
    assert len(planned) == 8 and len({m.name for m in planned}) == 8
    assert planned[0].name == "000-alpha=0.5,lr=0.001,warmup_steps=0,seed=0"
    assert any(o.startswith("run.dir=") and o.endswith(planned[0].name) for o in planned[0].overrides)
    proc = aria_cli("sweep", str(spec), "--status")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("not submitted") == 8

    cases = {
        "unknown key": ({"overrides": ["train.lrr=1"]}, "unknown config key 'train.lrr'"),
        "unknown grid key": ({"grid": {"aria.alfa": [1]}}, "unknown config key 'aria.alfa'"),
        "empty grid": ({"grid": {}}, "'grid' is empty"),
        "empty axis": ({"grid": {"aria.alpha": []}}, "grid.aria.alpha must be a non-empty list"),
        "zip lengths": ({"zip": {"train.lr": [1, 2], "aria.alpha": [1]}}, "same length"),
        "bad value": ({"grid": {"train.policy": ["best"]}}, "train.policy' must be one of"),
        "missing bank": ({"overrides": [f"bank.dir={tmp_path / 'nobank'}"]}, "sweep member 000-seed=0: no bank at"),
        "nodes here": ({"overrides": ["launch.nodes=2"]}, "launch.nodes=2 needs --executor slurm"),
    }
    for case, (fields, message) in cases.items():
        bad = write_sweep(tmp_path / case.replace(" ", "_"), base, **fields)
        proc = aria_cli("sweep", str(bad), "--executor", "local")
        assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
        assert message in proc.stderr, (case, proc.stderr)
        assert not (tmp_path / case.replace(" ", "_") / "sweep").exists(), case  # nothing submitted
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"base": "nowhere.yaml", "dir": str(tmp_path / "m")}))
    proc = aria_cli("sweep", str(missing))
    assert proc.returncode == 2 and "base config nowhere.yaml does not exist" in proc.stderr
    proc = aria_cli("sweep", str(tmp_path / "absent.yaml"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@pytest.mark.slow
def test_local_sweep_finishes_collects_and_skips_finished(tiny_world, sweep_bank, tmp_path, aria_cli, monkeypatch):
    base, _ = tiny_world
    spec = write_sweep(tmp_path, base, overrides=[f"bank.dir={sweep_bank}", "launch.array_parallelism=2"],
                       grid={"train.policy": ["rc", "aria"]})
    monkeypatch.setenv("ARIA_PROGRESS_EVERY", "1")
    proc = aria_cli("sweep", str(spec), "--executor", "local", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # while members run: a plain progress line per running member (stdout is a pipe here, as a log file)
    progress = re.findall(r"^(\S+): (starting|step \d+/\d+, loss \S+, (\d+ samples/s, ETA \S+|evaluating))$",
                          proc.stdout, re.M)
    assert {p[0] for p in progress} <= {"000-policy=rc,seed=0", "001-policy=aria,seed=0"} and progress, proc.stdout[-3000:]
    assert any("samples/s, ETA" in p[1] or "evaluating" in p[1] for p in progress), proc.stdout[-3000:]
    results = (tmp_path / "sweep" / "results.md").read_text()
    rows = [line for line in results.splitlines() if line.startswith("| 00")]
    assert len(rows) == 2 and all("| finished |" in r for r in rows)
    csv_text = (tmp_path / "sweep" / "results.csv").read_text()
    assert "acc_unseen" in csv_text and "mse_unseen" in csv_text
    again = aria_cli("sweep", str(spec), "--executor", "local", timeout=600)
    assert again.returncode == 0 and "2 finished or still queued, submitting 0" in again.stdout


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slurm
@needs_slurm
def test_slurm_sweep_two_ranks_and_a_crashing_member(tiny_world, sweep_bank, tmp_path, aria_cli):
    base, _ = tiny_world
    # the third member crashes at run time (a missing input would be refused before submitting)
    spec = write_sweep(tmp_path, base, overrides=[f"bank.dir={sweep_bank}"],
                       zip={"train.policy": ["rc", "aria", "aria"], "train.lr": [1e-3, 1e-3, 1e30],
                            "launch.tasks_per_node": [1, 2, 1]})
    proc = aria_cli("sweep", str(spec), "--executor", "slurm", timeout=1200)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # not every member finished
    sweep_dir = tmp_path / "sweep"
    rows = [line for line in (sweep_dir / "results.md").read_text().splitlines() if line.startswith("| 00")]
    assert len(rows) == 3
    assert "| finished |" in rows[0] and "| finished |" in rows[1]
    assert "| failed |" in rows[2] and ".err" in rows[2] and "non-finite loss" in rows[2], rows[2]
    two_rank = next(p for p in (sweep_dir / "members").iterdir() if p.name.startswith("001"))
    metrics = [json.loads(line) for line in (two_rank / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["bank_hits"] == 3 * 8 * 2  # two ranks under srun, each drawing its own batch
    status = aria_cli("sweep", str(spec), "--status")
    assert status.stdout.count("finished") == 2 and "failed" in status.stdout


@pytest.mark.slurm
@needs_slurm
def test_slurm_preempted_member_requeues_and_matches_an_uninterrupted_one(tiny_world, sweep_bank, tmp_path):
    base, _ = tiny_world
    # identical training; only the checkpoint cadence (bookkeeping) differs between the two members
    spec = write_sweep(tmp_path, base, overrides=[f"bank.dir={sweep_bank}", "train.steps=40"],
                       zip={"train.checkpoint_every": [1000, 999]})
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "aria_hpc.cli", "sweep", str(spec), "--executor", "slurm"],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = next((sweep_dir / "members").glob("000-*"), None) if (sweep_dir / "members").exists() else None

        def started():
            nonlocal first
            first = first or next(iter(sorted((sweep_dir / "members").glob("000-*"))), None) \
                if (sweep_dir / "members").exists() else None
            m = first / "metrics.jsonl" if first else None
            return m is not None and m.is_file() and len(m.read_text().splitlines()) >= 5
        _wait_for(started, 600, "the first member to reach step 5")
        job_id = json.loads((sweep_dir / "jobs.json").read_text())[first.name]["job_id"]
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        out, err = proc.communicate(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    members = sorted((sweep_dir / "members").iterdir())
    logs = (sweep_dir / "submitit")
    log_text = "".join(p.read_text(errors="replace") for p in logs.glob(f"{job_id}_*log.out"))
    assert "preempted at step" in log_text and "resumed from" in log_text, log_text[-3000:]
    finals = [[json.loads(line) for line in (m / "metrics.jsonl").read_text().splitlines()][-1] for m in members]
    assert finals[0]["step"] == finals[1]["step"] == 40
    assert finals[0]["loss"] == finals[1]["loss"]  # exact resume
    evals = [json.loads((m / "eval.json").read_text())["groups"]["all"]["mse"] for m in members]
    assert evals[0] == evals[1]


def test_sbatch_scripts_parse_and_stay_thin():
    scripts = sorted((ROOT / "slurm").glob("*.sbatch"))
    assert {p.name for p in scripts} >= {"train.sbatch", "train_deepspeed.sbatch", "bank_array.sbatch"}
    for script in scripts:
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, (script, res.stderr)
        body = [ln for ln in script.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        assert len(body) <= 16, script  # header, environment, one command


def test_train_deepspeed_sbatch_builds_a_hostfile_from_the_node_list(tmp_path):
    """Run the script with SLURM's variables and stand-ins for scontrol and deepspeed on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\n[ \"$1 $2\" = 'show hostnames' ] && printf 'node1\\nnode2\\n'\n")
    (bin_dir / "deepspeed").write_text("#!/bin/bash\necho \"$@\" > \"$ARGS_OUT\"\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "node[1-2]",
           "SLURM_GPUS_ON_NODE": "4", "ARGS_OUT": str(tmp_path / "args"), "ARIA_HOSTFILE": str(tmp_path / "hostfile")}
    res = subprocess.run(["bash", str(ROOT / "slurm" / "train_deepspeed.sbatch"), "cfg.yaml", "train.lr=1e-4"],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "hostfile").read_text() == "node1 slots=4\nnode2 slots=4\n"
    args = (tmp_path / "args").read_text().split()
    assert args == ["--hostfile", str(tmp_path / "hostfile"), "--master_addr", "node1", "--master_port", "21234",
                    "--module", "aria_hpc.train", "cfg.yaml", "train.lr=1e-4"]


def test_preflight_reads_partitions_and_inputs_without_a_cluster(tiny_world, sweep_bank, tmp_path):
    """The pre-flight's parts on their own: sinfo's per-node lines (default partition, GPUs from GRES,
    the largest node) and the inputs check, for the shipped teacher (teacher.dir unset) too."""
    from aria_hpc.config import LaunchConfig
    from aria_hpc.launch.preflight import input_problem, read_partitions, resource_problem

    parts = read_partitions("gpu|g1|64|512000|gpu:a100:8(S:0-1)\ngpu|g2|32|256000|gpu:4\n"
                            "cpu*|c1|2|9600|(null)\ncpu*|c2|2|9600|(null)\n")
    assert parts["gpu"].nodes == 2 and parts["gpu"].cpus == 64 and parts["gpu"].gpus == 8 and not parts["gpu"].default
    assert parts["cpu"].default and parts["cpu"].gpus == 0 and parts["cpu"].mem_mb == 9600
    assert resource_problem(LaunchConfig(cpus_per_task=2, mem_gb=8), parts) is None  # the default partition
    problem = resource_problem(LaunchConfig(cpus_per_task=8), parts)
    assert "8 CPUs" in problem and "partition cpu has 2 node(s), at most 2 CPUs" in problem
    assert resource_problem(LaunchConfig(partition="gpu", gpus_per_node=8, cpus_per_task=8, nodes=2), parts) is None
    assert "lower launch.nodes" in resource_problem(LaunchConfig(partition="gpu", nodes=3), parts)
    base, _ = tiny_world
    assert input_problem(load_config(base, [f"bank.dir={sweep_bank}"])) is None
    assert input_problem(load_config(base, [f"bank.dir={sweep_bank}", "teacher.dir=null"])) is None  # shipped
    assert "lacks" in input_problem(load_config(base, [f"bank.dir={sweep_bank}", f"teacher.dir={tmp_path}"]))
    assert "does not exist" in input_problem(load_config(base, [f"bank.dir={sweep_bank}",
                                                                f"regions.path={tmp_path / 'r.h5'}"]))


def test_a_member_whose_process_is_dead_but_unreaped_is_not_running():
    """A member job killed with its controller is reparented to PID 1, which in a container may never
    reap it: kill(pid, 0) still answers, but the member is not running (the fault campaign found a
    rerun sweep skipping such a member forever)."""
    from aria_hpc.launch.sweep import _queue_state

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen(["true"])
    try:
        _wait_for(lambda: Path(f"/proc/{dead.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z", 30,
                  "the child to exit unreaped")
        assert _queue_state({"executor": "local", "job_id": str(dead.pid)}, {"pid": dead.pid}) == (False, None)
        assert _queue_state({"executor": "local", "job_id": str(live.pid)}, {"pid": live.pid}) == (True, None)
    finally:
        live.kill()
        live.wait()
        dead.wait()
