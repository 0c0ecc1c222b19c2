"""Training: real DeepSpeed (gloo on CPU), bank and live teacher, exact resume, ZeRO-3, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, cli_env, free_port

from aria_hpc.train import losses

FAST = ["train.micro_batch_per_gpu=8", "train.log_every=1", "train.region_log_every=2", "aria.warmup_steps=2",
        "aria.sync_every=2", "train.lr=1e-3"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_module(args, *, world=1, env_extra=None, timeout=600):
    """python -m aria_hpc.train (one process) or the deepspeed launcher with `world` CPU ranks."""
    env = cli_env()
    env.update(DS_ACCELERATOR="cpu", **(env_extra or {}))
    if world == 1:
        cmd = [sys.executable, "-m", "aria_hpc.train", *args]
    else:
        cmd = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", str(world),
               "--master_port", str(free_port()), "--module", "aria_hpc.train", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_losses_are_per_sample_with_known_values():
    s = torch.zeros(2, 1, 2, 2)
    t = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 2.0)])
    assert torch.equal(losses.output_kd(s, t), torch.tensor([0.0, 4.0]))
    assert torch.equal(losses.task_loss(s, t, torch.tensor([True, False])), torch.tensor([0.0, 0.0]))
    f = losses.feature_kd({"a": s, "b": s}, {"a": t, "b": t})
    assert torch.equal(f, torch.tensor([0.0, 8.0]))
    total = losses.combine(torch.tensor([1.0, 3.0]), {"output_kd": 2.0, "feature_kd": 0.5, "task": 1.0},
                           feature_kd_loss=torch.tensor([2.0, 2.0]), sample_weights=torch.tensor([1.0, 0.0]))
    assert total.item() == pytest.approx((2 * 1 + 0.5 * 2) / 2)


def test_student_presets_from_the_teacher():
    from aria_hpc.errors import UserError
    from aria_hpc.models.students import PRESETS, build_student
    from aria_hpc.models.teacher import load_teacher

    teacher = load_teacher().unet
    small = build_student("bk_small", teacher)
    assert small.mid_block is None and teacher.mid_block is not None
    t_state = teacher.state_dict()
    shared = [k for k, v in small.state_dict().items() if k in t_state]
    assert shared and all(torch.equal(small.state_dict()[k], t_state[k]) for k in shared)
    half = build_student("half_width", teacher)
    assert sum(p.numel() for p in half.parameters()) < 0.5 * sum(p.numel() for p in teacher.parameters())
    assert set(PRESETS) >= {"bk_base", "bk_small", "bk_tiny", "half_width"}
    tiny = build_student("bk_tiny", teacher)  # innermost stage and mid-block gone, the rest the teacher's
    assert len(tiny.down_blocks) == len(teacher.down_blocks) - 1 and tiny.mid_block is None
    t_up = {k.replace("up_blocks.1.", "up_blocks.0.", 1): v for k, v in t_state.items() if k.startswith("up_blocks.1.")}
    tiny_state = tiny.state_dict()
    assert len(t_up) > 10 and all(torch.equal(tiny_state[k], v) for k, v in t_up.items())
    assert torch.equal(tiny_state["down_blocks.0.resnets.0.conv1.weight"], t_state["down_blocks.0.resnets.0.conv1.weight"])
    assert sum(p.numel() for p in tiny.parameters()) < 0.6 * sum(p.numel() for p in teacher.parameters())
    lite = build_student("no_inner_attn", teacher)  # every stage; no mid-block, no attention in the innermost
    assert [type(b).__name__ for b in lite.down_blocks] == ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert [type(b).__name__ for b in lite.up_blocks] == ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    lite_state = lite.state_dict()
    assert lite.mid_block is None and all(torch.equal(v, t_state[k]) for k, v in lite_state.items())  # all copied
    assert 0.6 < sum(v.numel() for v in lite_state.values()) / sum(v.numel() for v in t_state.values()) < 0.7
    with pytest.raises(UserError, match="unknown student preset 'nope'.*bk_small"):
        build_student("nope", teacher)


def test_train_from_bank_and_live_teacher(tiny_world, tiny_bank, tmp_path, aria_cli):
    from diffusers import UNet2DConditionModel

    path, _ = tiny_world
    res = aria_cli("train", str(path), f"run.dir={tmp_path / 'bank_run'}", f"bank.dir={tiny_bank}", "train.steps=4",
                   "train.policy=aria", "loss.feature_kd=0.5", "student.preset=bk_base", *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    m = metrics(tmp_path / "bank_run")
    assert [r["step"] for r in m] == [1, 2, 3, 4] and m[-1]["teacher_forwards"] == 0 and m[-1]["bank_hits"] == 32
    assert len(m[-1]["allocation"]) == 8 and abs(sum(m[-1]["allocation"]) - 1) < 1e-6
    student = UNet2DConditionModel.from_pretrained(tmp_path / "bank_run" / "student")  # plain diffusers
    assert student.mid_block is not None
    res = aria_cli("train", str(path), f"run.dir={tmp_path / 'live_run'}", "bank.dir=null", "train.steps=2",
                   "train.policy=rc", *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    m = metrics(tmp_path / "live_run")
    assert m[-1]["teacher_forwards"] == 16 and m[-1]["bank_hits"] == 0
    ckpt = tmp_path / "live_run" / "checkpoints"
    meta_path = ckpt / (ckpt / "latest").read_text().strip() / "aria_meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["aria.base_gamma"]  # a checkpoint from before that key existed: it had its default
    del meta["meta_sha256"]  # ... and from before the meta carried its own digest
    meta_path.write_text(json.dumps(meta))
    again = aria_cli("train", str(path), f"run.dir={tmp_path / 'live_run'}", "bank.dir=null", "train.steps=3",
                     "train.policy=rc", *FAST)  # resume is the default: one more step
    assert again.returncode == 0 and [r["step"] for r in metrics(tmp_path / "live_run")] == [1, 2, 3]
    # ARIA with alpha = 0 is RC, draw for draw: the same losses at every step
    res = aria_cli("train", str(path), f"run.dir={tmp_path / 'alpha0'}", "bank.dir=null", "train.steps=3",
                   "train.policy=aria", "aria.alpha=0.0", *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["loss"] for r in metrics(tmp_path / "alpha0")] == [r["loss"] for r in metrics(tmp_path / "live_run")]
    assert {r["lr"] for r in metrics(tmp_path / "alpha0")} == {1e-3}  # constant after warm-up (none here)
    res = aria_cli("train", str(path), f"run.dir={tmp_path / 'cosine'}", "bank.dir=null", "train.steps=3",
                   "train.policy=rc", "train.lr_schedule=cosine", *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["lr"] for r in metrics(tmp_path / "cosine")] == pytest.approx([1e-3, 1e-3 * 0.75, 1e-3 * 0.25])


@pytest.mark.multiproc
def test_two_ranks_zero2_killed_and_resumed_match_an_uninterrupted_run(tiny_world, tiny_bank, tmp_path):
    path, _ = tiny_world
    common = [str(path), f"bank.dir={tiny_bank}", "train.steps=8", "train.checkpoint_every=3", "train.zero_stage=2",
              "train.policy=aria", *FAST]
    ref = run_module([*common, f"run.dir={tmp_path / 'ref'}"], world=2)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    killed = run_module([*common, f"run.dir={tmp_path / 'run'}"], world=2,
                        env_extra={"ARIA_FAULT_SIGKILL_AFTER_STEP": "5"})
    assert killed.returncode != 0
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step00000003"
    resumed = run_module([*common, f"run.dir={tmp_path / 'run'}"], world=2)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 3" in resumed.stdout
    a, b = metrics(tmp_path / "ref"), metrics(tmp_path / "run")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6), (x["step"], x["loss"], y["loss"])
    assert a[-1]["region_estimate"] == b[-1]["region_estimate"] and a[-1]["allocation"] == b[-1]["allocation"]
    for r in (0, 1):  # each rank keeps its table in its own checkpoint file
        tables = [torch.load(d / "checkpoints" / "step00000008" / f"aria_rank{r}.pt", weights_only=False)
                  for d in (tmp_path / "ref", tmp_path / "run")]
        for key in ("ema_mean", "ema_weight", "observations"):
            assert np.array_equal(tables[0]["table"][key], tables[1]["table"][key])

    one = run_module([*common, f"run.dir={tmp_path / 'run'}", "train.steps=9"], world=1)
    assert one.returncode == 2 and "written by 2 ranks" in one.stderr


@pytest.mark.multiproc
def test_zero3_saves_resumes_and_exports(tiny_world, tiny_bank, tmp_path):
    from diffusers import UNet2DConditionModel

    path, _ = tiny_world
    common = [str(path), f"bank.dir={tiny_bank}", "train.zero_stage=3", "train.checkpoint_every=2",
              f"run.dir={tmp_path / 'run'}", *FAST]
    first = run_module([*common, "train.steps=2"], world=2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = run_module([*common, "train.steps=4"], world=2)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "at step 2" in second.stdout and [r["step"] for r in metrics(tmp_path / "run")] == [1, 2, 3, 4]
    student = UNet2DConditionModel.from_pretrained(tmp_path / "run" / "student")
    assert all(torch.isfinite(p).all() and p.numel() > 0 for p in student.parameters())


def test_train_bad_input(tiny_world, tiny_bank, tmp_path, aria_cli):
    path, root = tiny_world

    def fails(*overrides, message):
        res = aria_cli("train", str(path), f"run.dir={tmp_path / 'r'}", "train.steps=2", *FAST, *overrides)
        assert res.returncode == 2 and message in res.stderr, res.stderr[-3000:]
        assert res.stderr.count("aria-hpc: error:") == 1
        return res

    fails("bank.dir=null", "student.preset=tiny_unicorn", message="unknown student preset 'tiny_unicorn'")
    fails(f"bank.dir={tmp_path / 'no_bank'}", message="no bank at")
    fails(f"bank.dir={tiny_bank}", "rc.lam=2.0", message="differs in sampling.lam")
    fails("bank.dir=null", f"teacher.dir={tmp_path / 'no_teacher'}", message="lacks unet/config.json")
    fails(f"bank.dir={tiny_bank}", "loss.feature_kd=1.0", "loss.feature_blocks=[down_blocks.0]",
          message="needs teacher features ['down_blocks.0']")
    # A NaN/inf loss: the state before the step is saved, marked, and the run stops with exit 2.
    fails(f"bank.dir={tiny_bank}", "train.lr=1e30", "train.steps=6", message="non-finite loss at step")
    marked = list((tmp_path / "r" / "checkpoints").glob("nonfinite-step*"))
    assert len(marked) == 1 and (marked[0] / "aria_rank0.pt").is_file()
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists() or "nonfinite" not in \
        (tmp_path / "r" / "checkpoints" / "latest").read_text()


def test_sigusr2_checkpoints_and_the_same_command_resumes(tiny_world, tiny_bank, tmp_path):
    import signal
    import time

    path, _ = tiny_world
    args = [str(path), f"bank.dir={tiny_bank}", f"run.dir={tmp_path / 'run'}", "train.steps=400",
            "train.checkpoint_every=1000", *FAST]
    env = cli_env()
    proc = subprocess.Popen([sys.executable, "-m", "aria_hpc.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR2)  # what SLURM sends before a preemption / time limit
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    assert "preempted at step" in err and "run the same command to resume" in err
    step = int((tmp_path / "run" / "checkpoints" / "latest").read_text().strip()[4:])
    assert 3 <= step < 400 and len(metrics(tmp_path / "run")) == step
    resumed = run_module([*args[:-len(FAST)], *FAST, f"train.steps={step + 2}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {step}" in resumed.stdout and metrics(tmp_path / "run")[-1]["step"] == step + 2


@pytest.mark.slurm
@pytest.mark.multiproc
def test_srun_two_tasks_through_slurm_train_sbatch(tiny_world, tiny_bank, tmp_path):
    from test_bank import slurm_up

    if not slurm_up():
        pytest.skip("no SLURM cluster answering (scripts/slurm_local.sh start)")
    path, _ = tiny_world
    env = cli_env()
    env.update(ARIA_PYTHON=sys.executable, DS_ACCELERATOR="cpu")
    res = subprocess.run(["sbatch", "--wait", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=4G", f"--chdir={ROOT}",
                          f"--output={tmp_path}/slurm-%j.out", str(ROOT / "slurm" / "train.sbatch"), str(path),
                          f"bank.dir={tiny_bank}", f"run.dir={tmp_path / 'run'}", "train.steps=3", *FAST],
                         env=env, capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert res.returncode == 0, res.stderr + logs[-4000:]
    m = metrics(tmp_path / "run")
    assert [r["step"] for r in m] == [1, 2, 3] and m[-1]["bank_hits"] == 3 * 8 * 2  # two ranks
    assert (tmp_path / "run" / "student" / "config.json").is_file()


def test_learning_curve_and_group_mechanism_are_logged_and_deterministic(tiny_world, tiny_bank, tmp_path, aria_cli):
    path, _ = tiny_world
    runs = []
    for name in ("a", "b"):
        res = aria_cli("train", str(path), f"run.dir={tmp_path / name}", f"bank.dir={tiny_bank}", "train.steps=4",
                       "train.policy=aria", "train.curve_every=2", "eval.per_split_group=8", *FAST)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(metrics(tmp_path / name))
    a, b = runs
    curves = [(r["step"], r["curve_mse"]) for r in a if "curve_mse" in r]
    assert [s for s, _ in curves] == [2, 4] and set(curves[0][1]) == {"seen", "under", "unseen"}
    assert all(v > 0 for _, c in curves for v in c.values())
    assert curves == [(r["step"], r["curve_mse"]) for r in b if "curve_mse" in r]  # deterministic for a seed
    last = a[-1]
    assert abs(sum(last["group_share"].values()) - 1) < 1e-5 and set(last["group_estimate"]) == set(last["group_share"])


def test_oracle_and_reach_steer_a_share_of_all_samples_and_resume_exactly(tiny_world, tiny_bank, tmp_path, aria_cli):
    """rc.oracle_share / aria.reach: a share of every batch is fresh live-teacher tuples, counted in
    sample_share; a run killed after a checkpoint resumes to the uninterrupted run's losses."""
    path, _ = tiny_world
    common = [str(path), f"bank.dir={tiny_bank}", "train.steps=6", "train.checkpoint_every=3", *FAST]
    rc = aria_cli("train", *common, f"run.dir={tmp_path / 'rc'}", "train.policy=rc")
    oracle_args = [*common, f"run.dir={tmp_path / 'oracle'}", "train.policy=rc", "rc.oracle_share=0.5"]
    oracle = aria_cli("train", *oracle_args)
    reach = aria_cli("train", *common, f"run.dir={tmp_path / 'reach'}", "train.policy=aria", "aria.reach=0.5")
    for res in (rc, oracle, reach):
        assert res.returncode == 0, res.stderr[-3000:]
    rc_m, oracle_m, reach_m = (metrics(tmp_path / n) for n in ("rc", "oracle", "reach"))
    assert rc_m[-1]["teacher_forwards"] == 0 and oracle_m[-1]["teacher_forwards"] > 0 < reach_m[-1]["teacher_forwards"]
    assert abs(sum(oracle_m[-1]["sample_share"].values()) - 1) < 1e-5
    assert oracle_m[-1]["sample_share"]["unseen"] > rc_m[-1]["sample_share"].get("unseen", 0) + 0.3

    killed = run_module([*oracle_args[:-3], f"run.dir={tmp_path / 'killed'}", "train.policy=rc", "rc.oracle_share=0.5"],
                        env_extra={"ARIA_FAULT_SIGKILL_AFTER_STEP": "4"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_module([*oracle_args[:-3], f"run.dir={tmp_path / 'killed'}", "train.policy=rc", "rc.oracle_share=0.5"])
    assert resumed.returncode == 0 and "at step 3" in resumed.stdout, resumed.stderr[-3000:]
    keys = ("step", "loss", "teacher_forwards", "sample_share")
    assert [[r.get(k) for k in keys] for r in metrics(tmp_path / "killed")] == [[r.get(k) for k in keys] for r in oracle_m]

    bad = aria_cli("train", *common, f"run.dir={tmp_path / 'bad'}", "train.policy=aria", "rc.oracle_share=0.1")
    assert bad.returncode == 2 and "rc.oracle_share is the oracle arm" in bad.stderr


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_simulate_and_training_draw_the_same_regions_from_the_same_state(tiny_world, gamma):
    """One allocation rule and one draw key: from the same table state, seed and step, the training
    loop's RegionTracker and `aria-hpc simulate`'s draw_conditions pick the same regions, during
    ARIA's warm-up (q = pi) and after it (q from the estimates, over the base pi^(1 - gamma))."""
    from aria_hpc.config import load_config
    from aria_hpc.context import load_context
    from aria_hpc.regions.sampler import draw_conditions, update_allocation
    from aria_hpc.regions.table import RegionTable
    from aria_hpc.train.tracker import RegionTracker

    path, _ = tiny_world
    cfg = load_config(path, [f"aria.base_gamma={gamma}", "aria.warmup_steps=3"])
    ctx = load_context(cfg, need_bank_dir=False)
    tracker = RegionTracker(cfg.aria, "aria", cfg.seed, ctx)
    rng = np.random.default_rng(0)
    k = tracker.table.num_regions
    tracker.table.record(rng.integers(0, k, 200), rng.random(200) * 3)
    tracker.table.fold(cfg.aria.beta)
    index = ctx.conditioning.index
    for step in (1, 7):  # warm-up, then ARIA's q
        tracker.allocate(step)
        trained = tracker.sampler(rank=1, step=step, micro=2)(64)
        simulated = RegionTable(k, index.base, cfg.aria.init_estimate)
        simulated.load_state_dict(tracker.table.state_dict())
        q = update_allocation(simulated, cfg.aria, step=step, policy="aria")
        np.testing.assert_array_equal(q, tracker.q)
        regions, _ = draw_conditions(simulated, index, 64, seed=cfg.seed, rank=1, step=step, micro=2)
        np.testing.assert_array_equal(regions, trained)
    assert not np.allclose(tracker.q, index.base)  # the last step allocated by the estimates
