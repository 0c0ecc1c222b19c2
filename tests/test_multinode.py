"""Two real nodes: the cluster of scripts/slurm_local.sh start, two slurmd in their own network (and
UTS) namespaces on a private bridge. Training across them with srun and with the deepspeed launcher
(pdsh over ssh), exact resume after a SIGUSR2 preemption of both nodes, a submitit sweep member on
two nodes, and the sweep's pre-flight refusals and pending reasons (those need SLURM, not 2 nodes).

Each test skips with the reason when the cluster has fewer than 2 nodes (no root or no `ip` to make
namespaces: the script then starts the one-node cluster) or no SLURM at all."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT, cli_env
from test_bank import slurm_up
from test_train import FAST, metrics


def idle_nodes() -> list[str]:
    if not shutil.which("sinfo"):
        return []
    res = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T"], capture_output=True, text=True)
    return sorted({line.split()[0] for line in res.stdout.splitlines()
                   if len(line.split()) == 2 and line.split()[1] in ("idle", "mixed", "allocated")})


NODES = idle_nodes()
needs_slurm = pytest.mark.skipif(not slurm_up(), reason="no SLURM cluster answering (scripts/slurm_local.sh start)")
needs_two_nodes = pytest.mark.skipif(
    len(NODES) < 2, reason=f"the SLURM cluster has {len(NODES)} node(s): scripts/slurm_local.sh start makes two "
    "where network namespaces can be made (root, `ip`)")


def job_env() -> dict:
    env = cli_env()
    env.update(ARIA_PYTHON=sys.executable, DS_ACCELERATOR="cpu",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return env


def sbatch(*args: str, env=None) -> str:
    res = subprocess.run(["sbatch", "--parsable", f"--chdir={ROOT}", *args], env=env or job_env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def wait_gone(job_id: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
        if not out.strip():
            return
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} still queued or running after {timeout} s")


def read_logs(tmp_path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("slurm-*.out")))


@pytest.mark.slurm
@pytest.mark.multinode
@needs_two_nodes
def test_two_nodes_are_two_hosts_on_the_private_link(tmp_path):
    """srun on 2 nodes: two hostnames, two network namespaces (neither this one), addresses on the
    script's bridge only."""
    out = tmp_path / "slurm-%j.out"
    job = sbatch("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=1G", f"--output={out}",
                 "--wrap", "srun --label sh -c 'hostname; readlink /proc/self/ns/net; ip -4 -o addr show scope global'")
    wait_gone(job, 120)
    lines = read_logs(tmp_path).splitlines()
    by_task = {t: [ln.split(": ", 1)[1] for ln in lines if ln.startswith(f"{t}: ")] for t in ("0", "1")}
    hosts = {v[0] for v in by_task.values()}
    netns = {v[1] for v in by_task.values()}
    assert hosts == set(NODES[:2]), lines
    assert len(netns) == 2 and os.readlink("/proc/self/ns/net") not in netns
    addrs = [ln for v in by_task.values() for ln in v[2:]]
    assert len(addrs) == 2 and all(" 10.77.0." in a and " eth0 " in a for a in addrs), addrs


def _train_args(tiny_world, tiny_bank, run_dir, steps):
    path, _ = tiny_world
    return [str(path), f"bank.dir={tiny_bank}", f"run.dir={run_dir}", f"train.steps={steps}",
            "train.checkpoint_every=1000", "launch.cpus_per_task=1", *FAST]


def _two_node_train(tmp_path, args, name):
    return sbatch("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=3G", "--open-mode=append",
                  f"--output={tmp_path}/slurm-{name}-%j.out", str(ROOT / "slurm" / "train.sbatch"), *args)


@pytest.mark.slurm
@pytest.mark.multinode
@pytest.mark.multiproc
@needs_two_nodes
def test_srun_trains_on_two_nodes_and_resumes_exactly_after_preemption(tiny_world, tiny_bank, tmp_path):
    """slurm/train.sbatch on 2 nodes x 1 task: MASTER_ADDR from the node list, gloo between the hosts,
    the region table identical on both ranks after every sync; SIGUSR2 to every task checkpoints both
    ranks, the job requeues itself and resumes to the same final state as an uninterrupted job."""
    steps = 40
    whole = _two_node_train(tmp_path, _train_args(tiny_world, tiny_bank, tmp_path / "whole", steps), "whole")
    wait_gone(whole, 600)
    logs = read_logs(tmp_path)
    m_whole = metrics(tmp_path / "whole")
    assert m_whole[-1]["step"] == steps, logs[-3000:]
    assert f"2 ranks on {NODES[0]}, {NODES[1]} (MASTER_ADDR {NODES[0]}:" in logs, logs[-3000:]
    assert m_whole[0]["bank_hits"] == 8 * 2  # step 1: one micro-batch of 8 on each of the two ranks
    digests = [r["table_digests"] for r in m_whole if "table_digests" in r]
    assert len(digests) >= steps // 2 - 1 and all(len(d) == 2 and d[0] == d[1] for d in digests)

    run = tmp_path / "preempted"
    job = _two_node_train(tmp_path, _train_args(tiny_world, tiny_bank, run, steps), "preempted")
    deadline = time.time() + 300
    while time.time() < deadline and not ((run / "metrics.jsonl").is_file() and len(metrics(run)) >= 5):
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # every task of every step
    wait_gone(job, 900)
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("slurm-preempted-*.out"))
    assert "preempted at step" in logs and "resumed from" in logs, logs[-4000:]
    final, expected = metrics(run)[-1], m_whole[-1]
    assert final["step"] == steps
    assert final["loss"] == expected["loss"] and final["table_digests"] == expected["table_digests"]  # exact


@pytest.mark.slurm
@pytest.mark.multinode
@pytest.mark.multiproc
@needs_two_nodes
def test_deepspeed_launcher_starts_ranks_on_both_nodes_over_ssh(tiny_world, tiny_bank, tmp_path):
    """slurm/train_deepspeed.sbatch on 2 nodes: a hostfile from the node list, then one `deepspeed`
    command whose pdsh reaches both hosts through sshd in their namespaces."""
    if not (shutil.which("pdsh") and os.path.isfile("/etc/ssh/ssh_config.d/aria-slurm.conf")):
        pytest.skip("no pdsh or no ssh between the nodes (scripts/slurm_local.sh install, then start)")
    env = job_env()
    env.update(ARIA_SLOTS_PER_NODE="1", ARIA_DEEPSPEED=os.path.join(os.path.dirname(sys.executable), "deepspeed"),
               ARIA_HOSTFILE=str(tmp_path / "hostfile"))
    job = sbatch("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=3G",
                 f"--output={tmp_path}/slurm-%j.out", str(ROOT / "slurm" / "train_deepspeed.sbatch"),
                 *_train_args(tiny_world, tiny_bank, tmp_path / "run", 4), env=env)
    wait_gone(job, 600)
    logs = read_logs(tmp_path)
    assert (tmp_path / "hostfile").read_text().split() == [NODES[0], "slots=1", NODES[1], "slots=1"]
    m = metrics(tmp_path / "run")
    assert m[-1]["step"] == 4, logs[-4000:]
    assert f"2 ranks on {NODES[0]}, {NODES[1]}" in logs, logs[-4000:]
    assert m[0]["bank_hits"] == 8 * 2 and all(d[0] == d[1] for r in m if (d := r.get("table_digests")))


# ---- sweeps: a member on two nodes; refusals before submitting; pending reasons -----------------

TINY = ["train.steps=3", "train.micro_batch_per_gpu=8", "train.log_every=1", "train.region_log_every=1",
        "aria.warmup_steps=1", "aria.sync_every=1", "eval.per_region=4", "eval.per_group=2", "eval.sample_steps=2",
        "eval.grid=1", "launch.cpus_per_task=1", "launch.mem_gb=3", "launch.timeout_min=15", "launch.partition=debug"]


def _sweep(tmp_path, base, overrides, name="sweep.yaml", **fields):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": str(base), "dir": str(tmp_path / "sweep"),
                                    "overrides": [*TINY, *overrides], **fields}))
    return path


def _cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "aria_hpc.cli", *args], cwd=ROOT, env=job_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slurm
@pytest.mark.multinode
@pytest.mark.multiproc
@needs_two_nodes
def test_sweep_member_on_two_nodes_finishes(tiny_world, tiny_bank, tmp_path):
    base, _ = tiny_world
    spec = _sweep(tmp_path, base, [f"bank.dir={tiny_bank}", "launch.nodes=2", "launch.tasks_per_node=1"])
    proc = _cli("sweep", str(spec), "--executor", "slurm")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    member = next((tmp_path / "sweep" / "members").iterdir())
    m = metrics(member)
    assert m[-1]["step"] == 3 and m[-1]["bank_hits"] == 3 * 8 * 2  # two ranks
    assert all(len(r["table_digests"]) == 2 and len(set(r["table_digests"])) == 1 for r in m)
    assert (member / "eval.json").is_file()
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "sweep" / "submitit").glob("*_0_log.out"))
    assert f"2 ranks on {NODES[0]}, {NODES[1]}" in logs, logs[-3000:]


@pytest.mark.slurm
@needs_slurm
def test_sweep_refuses_members_the_partition_cannot_run_before_submitting(tiny_world, tiny_bank, tmp_path):
    """What a new user tried: members asking for more CPUs (or nodes, memory, GPUs) than any node of the
    partition has, or a partition that does not exist, or a bank that was never built: exit 2 with one
    line naming the member, its request and what the partition has; nothing is submitted."""
    base, _ = tiny_world
    jobs_before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    nodes = len(idle_nodes())
    cases = {
        "cpus": (["launch.cpus_per_task=64"], "asks for 1 node(s) x 1 task(s) x 64 CPU(s) = 64 CPUs"),
        "nodes": ([f"launch.nodes={nodes + 1}"], f"partition debug has {nodes} node(s)"),
        "memory": (["launch.mem_gb=4096"], "lower launch.mem_gb"),
        "gpus": (["launch.gpus_per_node=1"], "lower launch.gpus_per_node"),
        "partition": (["launch.partition=nosuch"], "launch.partition=nosuch is not a partition of this cluster"),
        "bank": ([f"bank.dir={tmp_path / 'never_built'}"], "no bank at"),
    }
    for case, (overrides, message) in cases.items():
        d = tmp_path / case
        d.mkdir()
        extra = [] if case == "bank" else [f"bank.dir={tiny_bank}"]
        proc = _cli("sweep", str(_sweep(d, base, [*extra, *overrides], grid={"train.policy": ["rc", "aria"]})),
                    "--executor", "slurm", timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (case, proc.stdout, proc.stderr)
        assert "sweep member 000-policy=rc,seed=0" in lines[0] and message in lines[0], (case, lines)
        assert not (d / "sweep").exists(), case
    jobs_after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert set(jobs_after) <= set(jobs_before)  # nothing was submitted


@pytest.mark.slurm
@needs_slurm
def test_status_shows_why_a_member_waits(tiny_world, tiny_bank, tmp_path):
    """A member queued behind a job that holds every node: `sweep --status` says pending, with SLURM's
    reason."""
    base, _ = tiny_world
    blocker = sbatch(f"--nodes={len(idle_nodes())}", "--exclusive", "--mem=1G", f"--output={tmp_path}/slurm-block-%j.out",
                     "--wrap", "sleep 600")
    spec = _sweep(tmp_path, base, [f"bank.dir={tiny_bank}"])
    proc = subprocess.Popen([sys.executable, "-m", "aria_hpc.cli", "sweep", str(spec), "--executor", "slurm"],
                            cwd=ROOT, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    member_job = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and member_job is None:
            jobs_file = tmp_path / "sweep" / "jobs.json"
            if jobs_file.is_file():
                member_job = next(iter(json.loads(jobs_file.read_text()).values()))["job_id"]
            time.sleep(0.5)
        assert member_job, "the sweep did not submit its member"
        time.sleep(3)  # let the scheduler give the pending job a reason
        status = _cli("sweep", str(spec), "--status", timeout=60)
        assert status.returncode == 0, status.stderr
        row = next(ln for ln in status.stdout.splitlines() if ln.startswith("000-"))
        assert " pending " in row and "SLURM pending reason: " in row, status.stdout
        assert any(r in row for r in ("Resources", "Priority", "Nodes_required")), row
    finally:
        subprocess.run(["scancel", blocker, *([member_job] if member_job else [])])
        proc.kill()
        proc.communicate()
