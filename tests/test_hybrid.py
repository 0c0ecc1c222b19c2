"""The adaptive bank (bank.mode = cached | hybrid | live): the reuse ledger, fresh tuples exactly when
a region runs out, write-back by many writers, a killed writer, alpha = 0 under the hybrid source,
exact resume, and the user-facing metrics and status."""

import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from aria_hpc.bank import Bank
from aria_hpc.bank.ledger import FRESH, ReuseLedger
from aria_hpc.build import build_bank
from aria_hpc.build.bank import bank_status
from aria_hpc.config import load_config
from aria_hpc.context import load_context
from aria_hpc.train.sources import BankSource, LiveTeacher, Writeback

# A small bank with mostly random-conditioned entries (rc.lam = 1: ~63% replaced), so that a few
# training steps run regions out of unused entries.
BANK = ["rc.lam=1.0", "bank.entries=48", "bank.shards=1", "bank.min_per_region=2"]
FAST = ["train.micro_batch_per_gpu=8", "train.log_every=1", "train.region_log_every=2", "aria.warmup_steps=2",
        "aria.sync_every=2", "train.lr=1e-3", "rc.lam=1.0"]


@pytest.fixture(scope="module")
def small_bank(tiny_world, tmp_path_factory):
    path, _ = tiny_world
    bank_dir = tmp_path_factory.mktemp("hybrid_bank") / "bank"
    build_bank(load_config(path, [f"bank.dir={bank_dir}", *BANK]), log=lambda _m: None)
    return bank_dir


def copy_bank(bank_dir, dest):
    shutil.copytree(bank_dir, dest)
    return dest


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- the ledger (pure) --------------------------------------------------------------------------

def test_ledger_serves_each_entry_max_reuse_times_then_answers_fresh():
    region_rows = np.array([10, 11, 12, 20, 21, 22, 23, 30])  # regions 0: 3 entries, 1: 4, 2: 1, 3: none
    bounds = np.array([0, 3, 7, 8, 8])
    rng = np.random.default_rng(0)
    ledger = ReuseLedger(region_rows, bounds, max_reuse=2)
    served = ledger.serve(np.full(8, 1), rng.random(8))
    assert sorted(served.tolist()) == [20, 20, 21, 21, 22, 22, 23, 23]  # each entry exactly twice
    assert ledger.serve(np.array([1, 1, 3]), rng.random(3)).tolist() == [FRESH] * 3  # 1 used up, 3 empty
    assert ledger.serve(np.array([0]), rng.random(1))[0] in (10, 11, 12)  # other regions untouched
    usage = ledger.region_usage()
    assert usage["draws"].tolist() == [1, 10, 0, 1] and usage["distinct"].tolist() == [1, 6, 0, 1]
    assert usage["max_reuse"].tolist() == [1, 2, 0, 1]

    # without a limit: today's cached draws, row for row
    unlimited = ReuseLedger(region_rows, bounds)
    regions, u = rng.integers(0, 3, 50), rng.random(50)
    expect = region_rows[bounds[regions] + (u * (bounds[regions + 1] - bounds[regions])).astype(np.int64)]
    assert np.array_equal(unlimited.serve(regions, u), expect)

    # ranks own disjoint entries that together are all of them
    owned = [set(ReuseLedger(region_rows, bounds, 1, rank=r, world=3).rows.tolist()) for r in range(3)]
    assert set().union(*owned) == set(region_rows.tolist()) and sum(map(len, owned)) == len(region_rows)

    # a state round trip continues exactly
    a = ReuseLedger(region_rows, bounds, max_reuse=1)
    a.serve(np.array([1, 1, 0]), np.array([0.9, 0.1, 0.5]))
    b = ReuseLedger(region_rows, bounds, max_reuse=1)
    b.load_state_dict(a.state_dict())
    regions, u = rng.integers(0, 4, 20), rng.random(20)
    assert np.array_equal(a.serve(regions, u), b.serve(regions, u))


# ---- the hybrid source on a real bank and teacher -----------------------------------------------

def test_fresh_tuples_exactly_when_the_region_runs_out(tiny_world, small_bank):
    path, _ = tiny_world
    cfg = load_config(path, [f"bank.dir={small_bank}", *BANK])
    ctx = load_context(cfg)
    bank = Bank(small_bank)
    region = int(np.argmax(bank.region_counts))
    have = int(bank.region_counts[region])
    for max_reuse in (1, 2):
        source = BankSource(bank, num_regions=ctx.conditioning.num_regions, live=LiveTeacher(ctx),
                            max_reuse=max_reuse)
        rng = np.random.default_rng(1)
        served_rows = []
        while source.teacher_forwards < 10:
            before = int(source.ledger.uses.sum())  # region draws served from the bank so far
            batch = source.draw(8, rng, lambda m: np.full(m, region))
            fresh = batch.rows == -1
            # fresh tuples only once the region's entries have served max_reuse draws each
            assert source.teacher_forwards == max(0, int(source.ledger.fresh[region]))
            if fresh.any():
                assert before + int((~fresh & ~batch.paired & (batch.cond >= 0)).sum()) == have * max_reuse
                assert np.all(batch.region[fresh] == region) and not batch.paired[fresh].any()
            served_rows += batch.rows[~fresh & ~batch.paired & (batch.cond >= 0)].tolist()
        counts = np.unique(served_rows, return_counts=True)[1]
        assert len(counts) == have and np.all(counts == max_reuse)
        source.close()


def _write_back_child(cfg_path, bank_dir, owner, kill_in_write):
    """A writer process: 3 shards of fresh tuples (10 entries each) into the bank."""
    import aria_hpc.bank.writer as writer

    cfg = load_config(cfg_path, [f"bank.dir={bank_dir}", *BANK])
    ctx = load_context(cfg)
    bank = Bank(bank_dir)
    if kill_in_write:  # SIGKILL after the shard is written and verified aside, before its rename
        writer.fsync_path = lambda _p: os.kill(os.getpid(), signal.SIGKILL)
    live = LiveTeacher(ctx, stream=owner, writeback=Writeback(Path(bank_dir), bank.fingerprint,
                                                               {"run_dir": f"run{owner}", "rank": 0}, every=10))
    rng = np.random.default_rng(owner)
    for _ in range(3):
        live.fresh(np.arange(10) % ctx.conditioning.num_regions, rng)


def test_two_writers_at_once_then_a_killed_writer(tiny_world, small_bank, tmp_path):
    path, _ = tiny_world
    bank_dir = copy_bank(small_bank, tmp_path / "bank")
    planned = len(Bank(bank_dir))
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_write_back_child, args=(str(path), str(bank_dir), i, False)) for i in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    manifest = json.loads((bank_dir / "manifest.json").read_text())
    live = sorted(s["name"] for s in manifest["shards"] if s["kind"] == "live")
    assert len(live) == 6 and len({n.split("-")[2] for n in live}) == 2  # two writer ids, 3 shards each
    bank = Bank(bank_dir)
    assert len(bank) == planned + 60 and len(np.unique(bank.columns["entry"])) == len(bank)
    batch = bank.read(np.arange(len(bank)))  # every entry readable
    assert np.isfinite(batch.output.float().numpy()).all()

    child = spawn.Process(target=_write_back_child, args=(str(path), str(bank_dir), 3, True))
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL
    assert list(bank_dir.glob("shard-live-*.tmp-*"))  # what it left aside ...
    after = Bank(bank_dir)  # ... is invisible: the same entries as before
    assert len(after) == len(bank) and json.loads((bank_dir / "manifest.json").read_text()) == manifest
    status = bank_status(bank_dir)
    assert status["kinds"]["written back"]["entries"] == 60 and status["writers"] == 3 and status["left_aside"]


def run_train(args, *, world=1, env_extra=None):
    from test_train import run_module

    return run_module(args, world=world, env_extra=env_extra)


def test_alpha0_under_hybrid_draws_what_rc_draws_and_write_back_feeds_the_next_run(tiny_world, small_bank,
                                                                                  tmp_path, aria_cli):
    path, _ = tiny_world
    common = [str(path), "train.steps=6", "bank.mode=hybrid", *FAST]
    runs = {}
    for name, policy in (("rc", ["train.policy=rc"]), ("alpha0", ["train.policy=aria", "aria.alpha=0.0"])):
        bank = copy_bank(small_bank, tmp_path / f"bank_{name}")  # the same bank state for both
        res = aria_cli("train", *common, *policy, f"bank.dir={bank}", f"run.dir={tmp_path / name}")
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = metrics(tmp_path / name)
    rc, a0 = runs["rc"], runs["alpha0"]
    assert rc[-1]["teacher_forwards"] > 0 and rc[-1]["written_back"] == rc[-1]["teacher_forwards"]
    assert rc[-1]["bank_hits"] + rc[-1]["teacher_forwards"] == 6 * 8
    for key in ("loss", "teacher_forwards", "bank_hits", "region_draws", "region_distinct", "region_max_reuse"):
        assert [r.get(key) for r in rc] == [r.get(key) for r in a0], key
    assert max(rc[-1]["region_max_reuse"]) == 1  # max_reuse = 1: no entry served twice
    assert sum(rc[-1]["region_draws"]) == sum(rc[-1]["region_distinct"])

    # the written-back entries are ordinary entries for the next run of the same member
    bank = tmp_path / "bank_rc"
    status = aria_cli("bank", str(path), f"bank.dir={bank}", *BANK, "--status")
    assert status.returncode == 0, status.stderr
    lines = {line.split()[0]: line.split() for line in status.stdout.splitlines()[2:]}
    assert lines["planned"][2] == str(len(Bank(small_bank))) and lines["written"][3] == str(rc[-1]["written_back"])
    again = aria_cli("train", *common, "train.policy=rc", f"bank.dir={bank}", f"run.dir={tmp_path / 'rc2'}")
    assert again.returncode == 0, again.stderr[-3000:]
    second = metrics(tmp_path / "rc2")
    assert second[-1]["teacher_forwards"] < rc[-1]["teacher_forwards"]

    # cached mode on the same small bank reuses entries instead
    res = aria_cli("train", *common[:-len(FAST)], *FAST, "bank.mode=cached", "train.policy=rc",
                   f"bank.dir={small_bank}", f"run.dir={tmp_path / 'cached'}")
    assert res.returncode == 0, res.stderr[-3000:]
    cached = metrics(tmp_path / "cached")
    assert cached[-1]["teacher_forwards"] == 0 and max(cached[-1]["region_max_reuse"]) > 1


@pytest.mark.parametrize("world", [1, pytest.param(2, marks=pytest.mark.multiproc)])
def test_hybrid_killed_and_resumed_matches_an_uninterrupted_run(tiny_world, small_bank, tmp_path, world):
    import torch

    path, _ = tiny_world
    common = [str(path), "train.steps=8", "train.checkpoint_every=3", "train.policy=aria", "bank.mode=hybrid",
              "bank.writeback_every=5", *FAST]
    ref_bank, run_bank = copy_bank(small_bank, tmp_path / "ref_bank"), copy_bank(small_bank, tmp_path / "run_bank")
    ref = run_train([*common, f"bank.dir={ref_bank}", f"run.dir={tmp_path / 'ref'}"], world=world)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    args = [*common, f"bank.dir={run_bank}", f"run.dir={tmp_path / 'run'}"]
    killed = run_train(args, world=world, env_extra={"ARIA_FAULT_SIGKILL_AFTER_STEP": "5"})
    assert killed.returncode != 0
    resumed = run_train(args, world=world)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "at step 3" in resumed.stdout
    a, b = metrics(tmp_path / "ref"), metrics(tmp_path / "run")
    assert [r["step"] for r in b] == list(range(1, 9))
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6), (x["step"], x["loss"], y["loss"])
        for key in ("teacher_forwards", "bank_hits", "written_back", "region_draws", "region_max_reuse"):
            assert x.get(key) == y.get(key), (x["step"], key)
    assert a[-1]["teacher_forwards"] > 0

    def written(bank_dir):  # what each bank gained: the same entries, none twice, none lost
        bank = Bank(bank_dir)
        live = np.arange(bank.planned_entries, len(bank))
        return sorted(zip(*(bank.columns[k][live].tolist() for k in ("entry", "image", "cond", "t", "seed"))))
    assert written(ref_bank) == written(run_bank) and len(written(ref_bank)) == a[-1]["written_back"]
    for r in range(world):
        states = [torch.load(d / "checkpoints" / "step00000008" / f"aria_rank{r}.pt", weights_only=False)["source"]
                  for d in (tmp_path / "ref", tmp_path / "run")]
        assert states[0]["live"]["writeback"] == states[1]["live"]["writeback"]
        assert all(np.array_equal(states[0]["ledger"][k], states[1]["ledger"][k]) for k in states[0]["ledger"])
