"""The teacher bank: build (in-process, per shard, submitit array), crash safety, fingerprint, reader."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, cli_env

from aria_hpc.bank import Bank
from aria_hpc.bank.plan import RCSchedule, plan_bank, shard_plan
from aria_hpc.build import build_bank
from aria_hpc.config import load_config
from aria_hpc.context import load_context
from aria_hpc.errors import UserError
from aria_hpc.train.sources import BankSource, LiveTeacher, Writeback
from aria_hpc.worlds.shapes import shapes_world


def bank_config(tiny_world, tmp_path, *overrides):
    path, _ = tiny_world
    return load_config(path, [f"bank.dir={tmp_path / 'bank'}", *overrides])


def shard_digests(bank_dir):
    return {s["name"]: s["digest"] for s in json.loads((bank_dir / "manifest.json").read_text())["shards"]}


def test_bank_builds_then_reruns_without_teacher_forwards(tiny_world, tmp_path, aria_cli):
    path, _ = tiny_world
    first = aria_cli("bank", str(path), f"bank.dir={tmp_path / 'bank'}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "teacher forwards: 6" in first.stdout  # 600 planned + the top-up
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 3
    forwards = int(first.stdout.split("teacher forwards: ")[1].split()[0])
    assert forwards == manifest["entries"] >= 600
    again = aria_cli("bank", str(path), f"bank.dir={tmp_path / 'bank'}")
    assert again.returncode == 0 and "teacher forwards: 0" in again.stdout
    assert shard_digests(tmp_path / "bank") == {s["name"]: s["digest"] for s in manifest["shards"]}


def test_plan_follows_rc_schedule_and_fills_every_region():
    rng = np.random.default_rng(0)
    region_of_prompt = rng.integers(0, 20, 5000)
    region_of_prompt[region_of_prompt == 7] = 6  # region 7 empty: nothing can be drawn from it
    captions = rng.integers(0, 5000, (300, 3))
    cond = RCSchedule(captions, region_of_prompt, 1000, 5.0, 0.1)
    plan = plan_bank(cond, entries=20000, min_per_region=400, seed=3)
    again = plan_bank(cond, entries=20000, min_per_region=400, seed=3)
    assert all(np.array_equal(plan[k], again[k]) for k in plan)
    assert np.array_equal(plan["entry"], np.arange(len(plan["entry"])))
    random = ~plan["paired"] & (plan["cond"] >= 0)
    counts = np.bincount(plan["region"][random], minlength=20)
    assert counts[7] == 0 and all(counts[k] >= 400 for k in range(20) if k != 7)
    rc = plan_bank(cond, entries=20000, min_per_region=0, seed=3)  # no top-up: RC's schedule alone
    assert len(rc["entry"]) == 20000
    assert abs((~rc["paired"]).mean() - (1 - np.exp(-5.0)) / 5.0) < 0.01  # E[p_rc(t)], t ~ U[0, T)
    assert abs((rc["cond"] == -1).mean() - 0.1) < 0.01
    assert rc["t"][~rc["paired"]].mean() > 750  # replaced captions concentrate at high t
    assert np.all(plan["region"][plan["cond"] >= 0] == region_of_prompt[plan["cond"][plan["cond"] >= 0]])
    parts = [shard_plan(plan, i, 3) for i in range(3)]
    assert sorted(np.concatenate([p["entry"] for p in parts]).tolist()) == plan["entry"].tolist()
    assert all(np.all(np.diff(p["region"]) >= 0) for p in parts)
    assert len(np.unique(plan["seed"])) == len(plan["seed"]) and plan["seed"].min() >= 0


def test_reader_regenerates_the_writers_noised_inputs(tiny_world, tmp_path, monkeypatch):
    from aria_hpc.models import runner as bank_context

    seen = {}
    original = bank_context.TeacherRunner.__call__

    def spy(self, x_t, t, cond):
        seen.setdefault("x_t", []).append(x_t.clone())
        return original(self, x_t, t, cond)

    monkeypatch.setattr(bank_context.TeacherRunner, "__call__", spy)
    cfg = bank_config(tiny_world, tmp_path, "bank.shards=1", "bank.entries=100", "bank.features=[mid_block]")
    result = build_bank(cfg, log=lambda _m: None)
    bank = Bank(cfg.bank.dir, load_context(cfg).fingerprint)
    assert len(bank) == result["teacher_forwards"]
    rows = np.arange(len(bank))
    batch = bank.read(rows)
    written = torch.cat(seen["x_t"])
    assert torch.equal(batch.x_t, written)  # rows are stored in the order they were computed
    assert batch.features["mid_block"].shape[0] == len(bank) and batch.output.shape == (len(bank), 3, 16, 16)
    # a shuffled read returns the same rows, and the h5py path equals the memory-mapped one
    perm = np.random.default_rng(1).permutation(rows)[:50]
    shuffled = bank.read(perm)  # returned in row order
    assert np.array_equal(shuffled.rows, np.sort(perm)) and torch.equal(shuffled.output, batch.output[np.sort(perm)])
    with h5py.File(tmp_path / "bank" / "shard-00000.h5", "r", locking=False) as f:
        assert np.array_equal(f["output"][:][np.sort(perm)], bank.read_outputs(np.sort(perm)))
        assert np.array_equal(f["features/mid_block"][:][np.sort(perm)], shuffled.features["mid_block"].numpy())


def test_region_sampler_steers_random_entries(tiny_world, tmp_path):
    cfg = bank_config(tiny_world, tmp_path)
    build_bank(cfg, log=lambda _m: None)
    bank = Bank(cfg.bank.dir)
    assert np.all(bank.region_counts >= cfg.bank.min_per_region)
    source = BankSource(bank)
    batch = source.draw(256, np.random.default_rng(0), region_sampler=lambda m: np.full(m, 3))
    random = ~batch.paired & (batch.cond >= 0)
    assert random.any() and np.all(batch.region[random] == 3) and source.bank_hits == 256
    paired = bank.read(bank.draw(64, np.random.default_rng(0), paired_only=True), noised=False)
    assert not (~paired.paired & (paired.cond >= 0)).any()
    plain = bank.draw(4000, np.random.default_rng(0))
    assert abs(bank.random[plain].mean() - bank.random.mean()) < 0.03  # RC: uniform over the bank
    source.close()


def _read_in_child(bank_dir, rows_path, out_path):
    bank = Bank(bank_dir)
    rows = np.load(rows_path)
    np.save(out_path, bank.read(rows).output.numpy())


def test_two_processes_read_one_bank_concurrently(tiny_world, tmp_path):
    import multiprocessing as mp

    cfg = bank_config(tiny_world, tmp_path)
    build_bank(cfg, log=lambda _m: None)
    bank = Bank(cfg.bank.dir)
    rows = bank.draw(200, np.random.default_rng(5))
    np.save(tmp_path / "rows.npy", rows)
    bank.read(rows[:3])  # opened in the parent before the fork: children must reopen their own
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_read_in_child, args=(cfg.bank.dir, tmp_path / "rows.npy", tmp_path / f"o{i}.npy"))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    expect = bank.read(rows).output.numpy()
    for i in range(2):
        assert np.array_equal(np.load(tmp_path / f"o{i}.npy"), expect)
    loader = torch.utils.data.DataLoader(BankRows(bank, rows), batch_size=None, num_workers=2)
    got = torch.cat([b for b in loader])
    assert torch.equal(got, torch.cat([BankRows(bank, rows)[i] for i in range(4)]))


class BankRows(torch.utils.data.Dataset):
    """Batches of 50 rows, read inside DataLoader workers."""

    def __init__(self, bank, rows):
        self.bank, self.rows = bank, rows

    def __len__(self):
        return len(self.rows) // 50

    def __getitem__(self, i):
        return self.bank.read(self.rows[i * 50:(i + 1) * 50], noised=False).output


def test_fingerprint_mismatch_is_refused_then_rebuilt(tiny_world, tmp_path, aria_cli):
    path, root = tiny_world
    d = f"bank.dir={tmp_path / 'bank'}"
    build_bank(bank_config(tiny_world, tmp_path, "bank.shards=1"), log=lambda _m: None)
    before = shard_digests(tmp_path / "bank")
    res = aria_cli("bank", str(path), d, "bank.shards=1", "rc.lam=3.0", "bank.min_per_region=2")
    assert res.returncode == 2 and "sampling.lam" in res.stderr and "sampling.min_per_region" in res.stderr
    assert "--rebuild" in res.stderr and res.stderr.count("aria-hpc: error:") == 1
    assert shard_digests(tmp_path / "bank") == before  # nothing touched
    cfg = bank_config(tiny_world, tmp_path, "bank.shards=1", "rc.lam=3.0")
    with pytest.raises(UserError, match="sampling.lam"):
        Bank(cfg.bank.dir, load_context(cfg).fingerprint)
    res = aria_cli("bank", str(path), d, "bank.shards=1", "rc.lam=3.0", "--rebuild")
    assert res.returncode == 0, res.stderr[-2000:]
    assert shard_digests(tmp_path / "bank") != before
    assert json.loads((tmp_path / "bank" / "manifest.json").read_text())["fingerprint"]["sampling"]["lam"] == 3.0


def test_other_teacher_weights_change_the_fingerprint(tiny_world, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    path, root = tiny_world
    teacher = tmp_path / "teacher2"
    shutil.copytree(root / "teacher", teacher)
    weights = teacher / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    first = sorted(state)[0]
    state[first] = state[first] + 1e-3
    save_file(state, weights)
    build_bank(bank_config(tiny_world, tmp_path, "bank.shards=1"), log=lambda _m: None)
    with pytest.raises(UserError, match="differs in teacher_digest\\)"):
        build_bank(bank_config(tiny_world, tmp_path, "bank.shards=1", f"teacher.dir={teacher}"), log=print)


def test_sigkill_mid_shard_leaves_no_partial_shard_and_rerun_matches(tiny_world, tmp_path):
    path, _ = tiny_world
    args = ["bank.entries=1200", "bank.shards=2", "bank.batch_size=4"]

    def cli(bank_dir):
        return subprocess.Popen([sys.executable, "-m", "aria_hpc.cli", "bank", str(path), f"bank.dir={bank_dir}",
                                 *args], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    # The reference is an uninterrupted build in the same kind of process (the teacher's float
    # reductions depend on the thread count, so both builds run as the CLI does).
    assert cli(tmp_path / "ref").wait() == 0
    ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    bank_dir = tmp_path / "bank"
    proc = cli(bank_dir)
    deadline = time.time() + 120
    while time.time() < deadline and not list(bank_dir.glob("shard-00001.h5.tmp-*")):
        time.sleep(0.005)
    time.sleep(0.2)  # well inside shard 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list(bank_dir.glob("shard-00001.h5.tmp-*")) and not (bank_dir / "shard-00001.h5").exists()
    with pytest.raises(UserError):
        Bank(bank_dir)  # no manifest yet, or one without shard 1: never readable as data
    rerun = cli(bank_dir)
    out = rerun.communicate()[0]
    assert rerun.returncode == 0 and "1 of 2 shards complete, building 1" in out, out[-2000:]
    assert not list(bank_dir.glob("*.tmp-*"))
    assert shard_digests(bank_dir) == shard_digests(tmp_path / "ref")
    assert Bank(bank_dir).offsets[-1] == ref["entries"]


def test_live_teacher_writes_back_shards_that_later_runs_read(tiny_world, tmp_path):
    cfg = bank_config(tiny_world, tmp_path, "bank.shards=1", "bank.entries=64")
    build_bank(cfg, log=lambda _m: None)
    ctx = load_context(cfg)
    writeback = Writeback(Path(cfg.bank.dir), ctx.fingerprint, {"run_dir": "x", "rank": 0}, every=40)
    live = LiveTeacher(ctx, stream=2, writeback=writeback)
    rng = np.random.default_rng(0)
    batches = [live.draw(20, rng, region_sampler=lambda m: np.full(m, 5)) for _ in range(2)]
    assert live.teacher_forwards == 40 and live.written_back == 40 and writeback.shards == 1
    bank = Bank(cfg.bank.dir)
    assert bank.shard_kinds == ["planned", "live"] and bank.planned_entries == len(bank) - 40
    live_rows = np.arange(len(bank))[bank.columns["entry"] >= 1 << 48]
    assert len(live_rows) == 40 and bank.shards[-1] == "shard-live-w00000-00000.h5"
    by_seed = {int(s): r for r, s in zip(live_rows, bank.columns["seed"][live_rows])}
    wanted = np.array([by_seed[int(s)] for b in batches for s in b.seed])
    got = bank.read(wanted)
    order = np.searchsorted(got.rows, wanted)  # got is in row order; put it back in draw order
    expect_out = torch.cat([b.output for b in batches])
    expect_xt = torch.cat([b.x_t for b in batches])
    assert torch.equal(got.output[order], expect_out) and torch.equal(got.x_t[order], expect_xt)
    random = ~got.paired & (got.cond >= 0)
    assert np.all(got.region[random] == 5)


def test_job_array_through_submitit_local_executor(tiny_world, tmp_path, aria_cli):
    path, _ = tiny_world
    build_bank(bank_config(tiny_world, tmp_path), shards=[0], log=lambda _m: None)  # what `--shard 0` does
    partial = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert not partial["complete"] and partial["missing"] == [1, 2]
    res = aria_cli("bank", str(path), f"bank.dir={tmp_path / 'bank'}", "--executor", "local",
                   f"launch.folder={tmp_path / 'submitit'}")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "submitted 2 local array tasks" in res.stdout
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    forwards = int(res.stdout.split("teacher forwards: ")[1].split()[0])
    assert manifest["complete"] and forwards == manifest["entries"] - partial["entries"] > 0
    assert len(Bank(tmp_path / "bank")) == manifest["entries"]


def test_latent_mode_encodes_pairs_once_with_a_vae(tiny_world, tmp_path):
    from diffusers import AutoencoderKL

    from aria_hpc.models.teacher import build_scheduler, build_unet, load_teacher, save_teacher

    _, root = tiny_world
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    meta = load_teacher(root / "teacher").meta
    unet = build_unet([8, 16], layers_per_block=1, norm_num_groups=8, attention_head_dim=4, resolution=8,
                      cross_attention_dim=32, in_channels=4)
    save_teacher(tmp_path / "latent_teacher", unet, build_scheduler(1000, "scaled_linear", "epsilon"), meta)
    cfg = bank_config(tiny_world, tmp_path, "bank.shards=1", "bank.entries=80", f"bank.vae_dir={tmp_path / 'vae'}",
                      f"teacher.dir={tmp_path / 'latent_teacher'}")
    build_bank(cfg, log=lambda _m: None)
    bank = Bank(cfg.bank.dir)
    assert bank.fingerprint["sampling"]["space"] == "latent" and bank.output_shape == (4, 8, 8)
    images, _ = shapes_world(cfg.world).paired_set()
    with torch.no_grad():
        expect = vae.encode(torch.from_numpy(images[:5])).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(torch.from_numpy(bank.x0()[:5]), expect, atol=1e-5)
    batch = bank.read(np.arange(len(bank)))
    assert batch.x_t.shape == (len(bank), 4, 8, 8) and torch.isfinite(batch.output).all()
    again = build_bank(cfg, log=lambda _m: None)
    assert again["teacher_forwards"] == 0


def test_bank_bad_input(tiny_world, tmp_path, aria_cli):
    path, _ = tiny_world

    def fails(*overrides, message):
        res = aria_cli("bank", str(path), *overrides)
        assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
        assert res.stderr.count("aria-hpc: error:") == 1

    fails("bank.dir=null", message="bank.dir is not set")
    fails(f"bank.dir={tmp_path / 'b'}", "bank.features=[no_such_block]", message="has no block 'no_such_block'")
    fails(f"bank.dir={tmp_path / 'b'}", f"bank.pairs={tmp_path / 'missing.h5'}", message="missing.h5 does not exist")
    fails(f"bank.dir={tmp_path / 'b'}", "bank.shard=3", message="unknown config key 'bank.shard'")
    assert not list((tmp_path / "b").glob("shard-*"))
    with pytest.raises(UserError, match="no bank at"):
        Bank(tmp_path / "nowhere")


def slurm_up() -> bool:
    import shutil

    if not shutil.which("sinfo"):
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return res.returncode == 0 and ("idle" in res.stdout or "mix" in res.stdout)


needs_slurm = pytest.mark.skipif(not slurm_up(), reason="no SLURM cluster answering (scripts/slurm_local.sh start)")


@pytest.mark.slurm
@needs_slurm
def test_bank_job_array_on_slurm(tiny_world, tmp_path):
    """A bank of 4 shards as job arrays: sbatch --array of slurm/bank_array.sbatch builds three shards;
    --executor slurm builds the last through submitit; the bank is complete, and a rerun does no work."""
    import os

    path, _ = tiny_world
    env = cli_env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    d = f"bank.dir={tmp_path / 'bank'}"
    shards = "bank.shards=4"
    sub = subprocess.run(["sbatch", "--parsable", "--wait", "--array=0-2", f"--chdir={ROOT}",
                          f"--output={tmp_path}/slurm-%A_%a.out", "--cpus-per-task=1", "--mem=2G",
                          str(ROOT / "slurm" / "bank_array.sbatch"), str(path), d, shards],
                         env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert sub.returncode == 0, sub.stderr + logs[-3000:]
    partial = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert partial["missing"] == [3] and len(partial["shards"]) == 3
    res = subprocess.run([sys.executable, "-m", "aria_hpc.cli", "bank", str(path), d, shards, "--executor", "slurm",
                          "launch.partition=debug", f"launch.folder={tmp_path / 'submitit'}", "launch.mem_gb=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "submitted 1 slurm array tasks" in res.stdout
    assert json.loads((tmp_path / "bank" / "manifest.json").read_text())["complete"]
    again = subprocess.run([sys.executable, "-m", "aria_hpc.cli", "bank", str(path), d, shards, "--executor", "slurm"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "teacher forwards: 0" in again.stdout and "submitted" not in again.stdout
