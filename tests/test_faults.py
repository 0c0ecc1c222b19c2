"""The fault table: each file-level fault a cluster user meets, against the command they would run.

Every fault must end in exit code 2 with one line on stderr that names the file and the fix, no
traceback, and every file that existed before byte-identical afterwards; where the project can
repair the fault (`aria-hpc bank` for a bad shard), the repair is checked too.
"""

import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest
from test_train import FAST


def snapshot(*dirs) -> dict:
    """sha256 of every file under the given directories (what must survive a failed command)."""
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_clear_line(proc, *needles) -> str:
    """The failed command's stderr: exactly one line (after DeepSpeed's own log lines, which go
    there too), no traceback, naming every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("aria-hpc: error:")]
    assert len(ours) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in ours[0], ours[0]
    print(ours[0])  # `pytest -s tests/test_faults.py` lists what a user sees for each fault
    return ours[0]


# ---- bank shards -------------------------------------------------------------------------------

def flip_output_bytes(path):
    """8 bytes flipped inside the `output` dataset's data (what a bad disk or a torn write does)."""
    with h5py.File(path, "r") as f:
        offset = f["output"].id.get_offset()
        size = f["output"].id.get_storage_size()
    with open(path, "r+b") as f:
        f.seek(offset + size // 2)
        data = bytearray(f.read(8))
        f.seek(offset + size // 2)
        f.write(bytes(b ^ 0xFF for b in data))


def truncate_half(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def remove(path):
    path.unlink()


def swap_manifest_digest(path):
    """The manifest lists another digest than the shard carries (a shard swapped in from elsewhere)."""
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for meta in manifest["shards"]:
        if meta["name"] == path.name:
            meta["digest"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))


SHARD_FAULTS = {
    "flipped bytes": (flip_output_bytes, "is corrupt"),
    "truncated": (truncate_half, "cannot be read as HDF5"),
    "missing": (remove, "is missing"),
    "manifest digest differs": (swap_manifest_digest, "is not the shard the manifest lists"),
}


@pytest.fixture(scope="module")
def clean_bank(tiny_world, tmp_path_factory):
    from aria_hpc.build import build_bank
    from aria_hpc.config import load_config

    path, _ = tiny_world
    bank_dir = tmp_path_factory.mktemp("fault_bank") / "bank"
    build_bank(load_config(path, [f"bank.dir={bank_dir}", "bank.shards=2"]), log=lambda _m: None)
    manifest = json.loads((bank_dir / "manifest.json").read_text())
    return bank_dir, {m["name"]: m["digest"] for m in manifest["shards"]}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(SHARD_FAULTS))
def test_a_bad_shard_never_reaches_a_student_and_bank_rebuilds_exactly_it(fault, clean_bank, tiny_world, tmp_path,
                                                                           aria_cli):
    path, _ = tiny_world
    bank_dir = tmp_path / "bank"
    shutil.copytree(clean_bank[0], bank_dir)
    (bank_dir / ".verified.json").unlink(missing_ok=True)  # copies have new inodes anyway
    args = [str(path), f"bank.dir={bank_dir}", "bank.shards=2"]
    ok = aria_cli("train", *args, f"run.dir={tmp_path / 'ok'}", "train.steps=1", "train.policy=rc", *FAST)
    assert ok.returncode == 0, ok.stderr[-3000:]  # verifies both shards and remembers them
    assert set(json.loads((bank_dir / ".verified.json").read_text())) == set(clean_bank[1])
    damage, why = SHARD_FAULTS[fault]
    damage(bank_dir / "shard-00001.h5")
    before = snapshot(bank_dir, tmp_path / "ok")

    train = aria_cli("train", *args, f"run.dir={tmp_path / 'run'}", "train.steps=1", "train.policy=rc", *FAST)
    one_clear_line(train, "shard-00001.h5", why, "aria-hpc bank")
    assert snapshot(bank_dir, tmp_path / "ok") == before

    bank = aria_cli("bank", *args, "--quiet")  # sets the bad shard aside and rebuilds exactly it
    assert bank.returncode == 0, bank.stderr[-3000:]
    if fault != "missing":
        assert "shard-00001.h5" in bank.stdout and "set aside as shard-00001.h5.bad" in bank.stdout, bank.stdout
        assert (bank_dir / "shard-00001.h5.bad").is_file()
    assert "1 of 2 shards complete, building 1" in bank.stdout and "complete" in bank.stdout.splitlines()[-1]
    manifest = json.loads((bank_dir / "manifest.json").read_text())
    assert {m["name"]: m["digest"] for m in manifest["shards"]} == clean_bank[1]  # the same digests as before
    again = aria_cli("train", *args, f"run.dir={tmp_path / 'run'}", "train.steps=1", "train.policy=rc", *FAST)
    assert again.returncode == 0, again.stderr[-3000:]


def test_verification_is_cached_by_stat_and_forced_by_verify(clean_bank, tmp_path):
    """A verified shard costs one stat(); a changed one is hashed again; force hashes everything."""
    from aria_hpc.bank.integrity import ShardFault, verify_shards

    metas = [{"name": n, "digest": d} for n, d in clean_bank[1].items()]
    assert verify_shards(clean_bank[0], metas) == 0  # the writer recorded what it verified on re-read
    bank_dir = tmp_path / "bank"
    shutil.copytree(clean_bank[0], bank_dir)  # new inodes: hashed once, then remembered
    assert verify_shards(bank_dir, metas) == 2 and verify_shards(bank_dir, metas) == 0
    assert verify_shards(bank_dir, metas, force=True) == 2
    flip_output_bytes(bank_dir / "shard-00000.h5")  # rewritten in place: a new mtime
    with pytest.raises(ShardFault, match=r"shard-00000.h5 is corrupt \(its data hash to [0-9a-f]{12}, it was written as"):
        verify_shards(bank_dir, metas)
    (bank_dir / ".verified.json").write_text("{torn")  # a torn cache only costs hashing again
    metas = metas[1:]
    assert verify_shards(bank_dir, metas) == 1 and verify_shards(bank_dir, metas) == 0


def test_the_rows_read_after_verification_are_the_written_ones(clean_bank, tmp_path):
    """What the digest covers is what the reader serves: columns and outputs, row for row."""
    from aria_hpc.bank import Bank

    bank = Bank(clean_bank[0])
    rows = np.arange(len(bank))
    batch = bank.read(rows, noised=False)
    with h5py.File(clean_bank[0] / "shard-00000.h5", "r", locking=False) as f:  # the reader holds it open
        n = f["output"].shape[0]
        assert np.array_equal(batch.output[:n].numpy(), f["output"][:])


# ---- checkpoints and resume --------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(clean_bank, tiny_world, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 (both kept) and its 4-line metrics.jsonl."""
    import subprocess
    import sys

    from conftest import ROOT, cli_env

    path, _ = tiny_world
    run_dir = tmp_path_factory.mktemp("fault_run") / "run"
    args = [str(path), f"bank.dir={clean_bank[0]}", f"run.dir={run_dir}", "train.steps=4",
            "train.checkpoint_every=2", "train.policy=rc", *FAST]
    res = subprocess.run([sys.executable, "-m", "aria_hpc.cli", "train", *args], cwd=ROOT, env=cli_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step00000002", "step00000004"]
    return run_dir, [str(path), f"bank.dir={clean_bank[0]}", "train.checkpoint_every=2", "train.policy=rc"]


def drop_rank_file(ckpt):
    (ckpt / "step00000004" / "aria_rank0.pt").unlink()


def drop_deepspeed_file(ckpt):
    (ckpt / "step00000004" / "mp_rank_00_model_states.pt").unlink()


def truncate_deepspeed_file(ckpt):
    truncate_half(ckpt / "step00000004" / "mp_rank_00_model_states.pt")


def latest_to_missing_tag(ckpt):
    shutil.rmtree(ckpt / "step00000004")


def no_latest(ckpt):
    (ckpt / "latest").unlink()


def no_meta(ckpt):  # killed between the rank files and the meta
    (ckpt / "step00000004" / "aria_meta.json").unlink()


def flip(name):
    def damage(ckpt):  # one byte of the right size: only the digest tells
        path = ckpt / "step00000004" / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    return damage


def meta_value_changed(ckpt):  # still valid JSON, one value changed: only the meta's own digest tells
    path = ckpt / "step00000004" / "aria_meta.json"
    text = path.read_text()
    assert '"step": 4,' in text
    path.write_text(text.replace('"step": 4,', '"step": 5,', 1))


CHECKPOINT_FAULTS = {
    "meta value changed": (meta_value_changed, "has a damaged aria_meta.json"),
    "DeepSpeed's model file byte flipped": (flip("mp_rank_00_model_states.pt"), "has mp_rank_00_model_states.pt damaged"),
    "rank file byte flipped": (flip("aria_rank0.pt"), "has aria_rank0.pt damaged"),
    "rank file missing": (drop_rank_file, "lacks aria_rank0.pt"),
    "DeepSpeed's model file missing": (drop_deepspeed_file, "lacks mp_rank_00_model_states.pt"),
    "DeepSpeed's model file truncated": (truncate_deepspeed_file, "mp_rank_00_model_states.pt of"),
    "latest names a missing tag": (latest_to_missing_tag, "which does not exist"),
    "meta missing": (no_meta, "has no aria_meta.json"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(CHECKPOINT_FAULTS))
def test_an_incomplete_checkpoint_names_what_is_missing_and_the_way_back(fault, finished_run, tmp_path, aria_cli):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    args = [*finished_run[1], f"run.dir={run_dir}"]
    damage, why = CHECKPOINT_FAULTS[fault]
    damage(run_dir / "checkpoints")
    before = snapshot(run_dir)

    res = aria_cli("train", *args, "train.steps=6", *FAST)
    way_back = "step00000002"
    line = one_clear_line(res, why, f"resume from the complete checkpoint {way_back} with `echo {way_back} >")
    assert snapshot(run_dir) == before, line  # config.yaml and metrics.jsonl untouched

    # the advice works: the named checkpoint resumes, and the log reads as one run
    (run_dir / "checkpoints" / "latest").write_text(way_back)
    again = aria_cli("train", *args, "train.steps=6", *FAST)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {int(way_back[4:])}" in again.stdout
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_without_latest_the_newest_complete_checkpoint_resumes_but_only_for_its_config(finished_run, tmp_path,
                                                                                        aria_cli):
    """A save killed after its meta and before `latest` (the fault campaign found it) leaves complete
    checkpoints and no `latest`: the same command resumes from the newest; another config is refused."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    args = [*finished_run[1], f"run.dir={run_dir}"]
    no_latest(run_dir / "checkpoints")
    before = snapshot(run_dir)
    other = aria_cli("train", *args, "train.steps=6", *FAST[:-1], "train.lr=5e-4")
    one_clear_line(other, "step00000004", "different config", "train.lr")
    assert snapshot(run_dir) == before
    again = aria_cli("train", *args, "train.steps=6", *FAST)
    assert again.returncode == 0 and "at step 4" in again.stdout, again.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_ranks_agree_on_an_incomplete_checkpoint_and_write_nothing(clean_bank, tiny_world, tmp_path):
    """Rank 1's own file is missing: both ranks stop, rank 0 alone says so, config.yaml is not rewritten."""
    from test_train import run_module

    path, _ = tiny_world
    run_dir = tmp_path / "run"
    common = [str(path), f"bank.dir={clean_bank[0]}", f"run.dir={run_dir}", "train.checkpoint_every=2",
              "train.policy=rc", *FAST]
    first = run_module([*common, "train.steps=4"], world=2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (run_dir / "checkpoints" / "step00000004" / "aria_rank1.pt").unlink()
    before = snapshot(run_dir)
    res = run_module([*common, "train.steps=6"], world=2)  # a new config.yaml would differ in train.steps
    one_clear_line(res, "lacks aria_rank1.pt", "step00000002")
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_a_lock_left_by_a_run_killed_while_deepspeed_loaded_its_ops_does_not_hang_the_next(clean_bank, tiny_world,
                                                                                            tmp_path):
    """The fault campaign killed a run inside DeepSpeed's JIT load of its CPU shared-memory op: torch's
    lock file stayed, and every later run on the machine waited on it without a word. Training never
    builds that op now (engine.skip_shm_comm_build), so the lock is never waited on."""
    import subprocess
    import sys

    from conftest import ROOT, cli_env

    lock = tmp_path / "ext" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")  # what the killed run left
    path, _ = tiny_world
    args = [str(path), f"bank.dir={clean_bank[0]}", "bank.shards=2", f"run.dir={tmp_path / 'run'}", "train.steps=1",
            "train.policy=rc", *FAST]
    res = subprocess.run([sys.executable, "-m", "aria_hpc.cli", "train", *args], cwd=ROOT, capture_output=True,
                         env={**cli_env(), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert lock.exists()  # left alone: it may be another program's


@pytest.mark.slow
def test_starting_over_never_appends_to_an_old_metrics_log(finished_run, tmp_path, aria_cli):
    """A run killed before its first checkpoint left metrics.jsonl: the new run keeps it aside."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = (finished_run[0] / "metrics.jsonl").read_bytes()
    (run_dir / "metrics.jsonl").write_bytes(old)
    res = aria_cli("train", *finished_run[1], f"run.dir={run_dir}", "train.steps=2", *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "kept as metrics.jsonl.1" in res.stdout
    assert (run_dir / "metrics.jsonl.1").read_bytes() == old
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# ---- input files of every command ------------------------------------------------------------

@pytest.fixture
def world_copy(tiny_world, tmp_path):
    """The tiny world's embeddings and regions copied, so a test may damage them: (config, overrides).
    Every sealed file is verified once here (copies have new inodes), so the verification cache beside
    them is what it will stay when a command verifies the undamaged ones again."""
    from aria_hpc.integrity import verify

    path, root = tiny_world
    shutil.copytree(root / "emb", tmp_path / "emb", ignore=shutil.ignore_patterns("signatures"))
    for name in ("prompts.h5", "shard-00000-of-00001.h5", "regions.h5"):
        verify(tmp_path / "emb" / name, "file", "")
    return path, [f"embed.dir={tmp_path / 'emb'}", f"regions.path={tmp_path / 'emb' / 'regions.h5'}"]


def flip_dataset_bytes(path, dataset):
    """8 bytes flipped in the middle of a dataset's stored data (its first chunk, if chunked): the
    file still opens as HDF5, and only its digest tells."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        if ds.chunks is None:
            offset, size = ds.id.get_offset(), ds.id.get_storage_size()
        else:
            info = ds.id.get_chunk_info(0)
            offset, size = info.byte_offset, info.size
    with open(path, "r+b") as f:
        f.seek(offset + size // 2)
        data = bytearray(f.read(8))
        f.seek(offset + size // 2)
        f.write(bytes(b ^ 0xFF for b in data))


def flip_in_emb(name, dataset):
    def damage(tmp_path):
        flip_dataset_bytes(tmp_path / "emb" / name, dataset)
        return []
    return damage


def prompt_file_not_utf8(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("a red circle\na caf\xe9 sign\n".encode("latin-1"))
    return [f"pool.files=[{tmp_path / 'latin1.txt'}]", f"embed.dir={tmp_path / 'new_emb'}"]


def prompt_file_missing(tmp_path):
    return [f"pool.files=[{tmp_path / 'nowhere.txt'}]", f"embed.dir={tmp_path / 'new_emb'}"]


def truncate_in_emb(name):
    def damage(tmp_path):
        truncate_half(tmp_path / "emb" / name)
        return []
    return damage


def sweep_file(text):
    def damage(tmp_path):
        (tmp_path / "sweep.yaml").write_text(text)
        return []
    return damage


# name: (command, damage(tmp_path) -> extra overrides, words the one line must hold)
INPUT_FAULTS = {
    "prompt file not UTF-8": ("embed", prompt_file_not_utf8, ["latin1.txt:2", "UTF-8"]),
    "prompt file missing": ("embed", prompt_file_missing, ["nowhere.txt"]),
    "prompt pool truncated": ("regions", truncate_in_emb("prompts.h5"),
                              ["prompts.h5", "cannot be read as HDF5", "aria-hpc embed CONFIG --rebuild"]),
    "embeddings shard truncated": ("regions", truncate_in_emb("shard-00000-of-00001.h5"),
                                   ["shard-00000-of-00001.h5", "aria-hpc embed CONFIG"]),
    "region map truncated": ("train", truncate_in_emb("regions.h5"), ["regions.h5", "aria-hpc regions CONFIG"]),
    "prompt pool byte flipped": ("regions", flip_in_emb("prompts.h5", "split"),
                                 ["prompt pool", "prompts.h5", "is damaged", "aria-hpc embed CONFIG --rebuild"]),
    "embedding tokens byte flipped": ("train", flip_in_emb("shard-00000-of-00001.h5", "tokens"),
                                      ["embedding shard", "shard-00000-of-00001.h5", "is damaged", "aria-hpc embed CONFIG"]),
    "region map byte flipped": ("train", flip_in_emb("regions.h5", "region"),
                                ["region map", "regions.h5", "is damaged", "aria-hpc regions CONFIG"]),
    "sweep file malformed": ("sweep", sweep_file("base: world.yaml\ndir: [runs\n"), ["sweep.yaml", "line"]),
    "sweep file unknown key": ("sweep", sweep_file("base: world.yaml\ndir: runs/s\ngird: {seed: [0, 1]}\n"),
                               ["unknown sweep key(s) gird"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(INPUT_FAULTS))
def test_a_damaged_or_wrong_input_is_one_line_and_changes_nothing(fault, world_copy, tmp_path, aria_cli):
    path, overrides = world_copy
    command, damage, needles = INPUT_FAULTS[fault]
    overrides = [*overrides, *damage(tmp_path)]
    if command == "sweep":
        shutil.copy(path, tmp_path / "world.yaml")
    before = snapshot(tmp_path)
    if command == "sweep":
        res = aria_cli("sweep", str(tmp_path / "sweep.yaml"), "--executor", "local")
    elif command == "train":
        res = aria_cli("train", str(path), *overrides, "bank.dir=null", f"run.dir={tmp_path / 'run'}",
                       "train.steps=1", *FAST)
    else:
        res = aria_cli(command, str(path), *overrides, *(["--quiet"] if command == "embed" else []))
    one_clear_line(res, *needles)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if k not in before and "/runs/" not in k], sorted(set(after) - set(before))


@pytest.mark.slow
def test_embed_sets_a_damaged_shard_aside_and_rebuilds_it(world_copy, tmp_path, aria_cli):
    path, overrides = world_copy
    shard = tmp_path / "emb" / "shard-00000-of-00001.h5"
    good = shard.read_bytes()
    truncate_half(shard)
    res = aria_cli("embed", str(path), *overrides, "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "set aside as shard-00000-of-00001.h5.bad" in res.stdout
    with h5py.File(shard, "r") as f, h5py.File(io_bytes(good), "r") as g:
        assert np.array_equal(f["pooled"][:], g["pooled"][:])


@pytest.mark.slow
def test_a_damaged_x0_file_is_named_and_rewritten_with_the_same_bytes(clean_bank, tiny_world, tmp_path, aria_cli):
    path, _ = tiny_world
    bank_dir = tmp_path / "bank"
    shutil.copytree(clean_bank[0], bank_dir)
    good = (bank_dir / "x0.h5").read_bytes()
    flip_dataset_bytes(bank_dir / "x0.h5", "x0")
    res = aria_cli("train", str(path), f"bank.dir={bank_dir}", "bank.shards=2", f"run.dir={tmp_path / 'run'}",
                   "train.steps=1", "train.policy=rc", *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "x0.h5 is damaged" in res.stderr and "computing it again from the paired set" in res.stderr
    with h5py.File(bank_dir / "x0.h5", "r") as f, h5py.File(io_bytes(good), "r") as g:
        assert np.array_equal(f["x0"][:], g["x0"][:]) and f.attrs["x0_digest"] == g.attrs["x0_digest"]


def io_bytes(data: bytes):
    import io

    return io.BytesIO(data)


@pytest.mark.slow
def test_a_damaged_student_is_one_line_for_eval(finished_run, tmp_path, aria_cli):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    weights = next((run_dir / "student").glob("*.safetensors"))
    truncate_half(weights)
    before = snapshot(run_dir)
    res = aria_cli("eval", str(run_dir))
    one_clear_line(res, str(run_dir / "student"), "cannot be loaded", "aria-hpc train")
    assert snapshot(run_dir) == before


# ---- directories this user cannot write (run as root without capabilities, or as a user) ------

def can_drop_privileges() -> str | None:
    import os
    import subprocess

    if os.geteuid() != 0:
        return None  # already unprivileged: plain permission bits apply
    if not shutil.which("setpriv"):
        return "running as root and setpriv is not installed (util-linux)"
    probe = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", "true"], capture_output=True)
    return None if probe.returncode == 0 else f"setpriv cannot drop capabilities here: {probe.stderr.decode()[:200]}"


@pytest.fixture
def unprivileged_cli():
    """`python -m aria_hpc.cli ARGS` without CAP_DAC_OVERRIDE (so a 0555 directory is read-only to it)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT, cli_env

    why = can_drop_privileges()
    if why:
        pytest.skip(why)
    prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"] if os.geteuid() == 0 else []

    def run(*args, timeout=300):
        return subprocess.run([*prefix, sys.executable, "-m", "aria_hpc.cli", *args], cwd=ROOT, env=cli_env(),
                              capture_output=True, text=True, timeout=timeout)
    return run


def read_only(*dirs):
    for d in dirs:
        for p in [d, *d.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)


def writable(*dirs):
    for d in dirs:
        for p in [d, *d.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


@pytest.mark.slow
def test_unwritable_directories_are_one_line_and_a_read_only_bank_still_serves(clean_bank, finished_run, tiny_world,
                                                                               tmp_path, unprivileged_cli):
    path, _ = tiny_world
    bank_dir, run_dir = tmp_path / "bank", tmp_path / "run"
    shutil.copytree(clean_bank[0], bank_dir)
    shutil.copytree(finished_run[0], run_dir)
    bank = [str(path), f"bank.dir={bank_dir}", "bank.shards=2"]
    ok = unprivileged_cli("bank", *bank, "--quiet")  # hashes the copies and remembers them
    assert ok.returncode == 0, ok.stderr[-3000:]
    read_only(bank_dir, run_dir)
    try:
        before = snapshot(bank_dir, run_dir)
        # a complete read-only bank: checked (with --verify, every byte hashed) and read, nothing written
        check = unprivileged_cli("bank", *bank, "--verify", "--quiet")
        assert check.returncode == 0 and "read-only; 2 shards checked (2 hashed), nothing written" in check.stdout, \
            check.stdout + check.stderr[-3000:]
        train = unprivileged_cli("train", *bank, f"run.dir={tmp_path / 'fresh'}", "train.steps=1", "train.policy=rc",
                                 *FAST)
        assert train.returncode == 0, train.stderr[-3000:]
        one_clear_line(unprivileged_cli("train", *bank, f"run.dir={run_dir}", "train.steps=6", *FAST),
                       f"run.dir {run_dir} is not writable")
        one_clear_line(unprivileged_cli("train", *bank, f"run.dir={run_dir / 'sub'}", "train.steps=1", *FAST),
                       f"run.dir {run_dir / 'sub'} is not writable")
        one_clear_line(unprivileged_cli("eval", str(run_dir)), "the run directory", "is not writable")
        one_clear_line(unprivileged_cli("bank", *bank, "--rebuild"), "is read-only")
        assert snapshot(bank_dir, run_dir) == before
        writable(bank_dir)
        flip_output_bytes(bank_dir / "shard-00001.h5")
        read_only(bank_dir)
        before = snapshot(bank_dir)
        one_clear_line(unprivileged_cli("bank", *bank, "--quiet"), "shard-00001.h5", "is corrupt",
                       "nothing was set aside", "make", "writable")
        assert snapshot(bank_dir) == before
    finally:
        writable(bank_dir, run_dir)


# ---- a config file with a mistake, for every command that reads one ---------------------------

CONFIG_FAULTS = {
    "YAML syntax": ("seed: 0\nbank: {dir: [x\n", ["bad.yaml is not valid YAML: line 3, column 1", "expected ','"]),
    "unknown key": ("seed: 0\nbnak: {}\n", ["bad.yaml: unknown config key 'bnak'", "did you mean 'bank.dir'"]),
    "non-finite number": ("train: {lr: .inf}\n", ["bad.yaml: config key 'train.lr' must be a finite number"]),
}


@pytest.mark.parametrize("command", ["embed", "regions", "bank", "train", "eval", "sweep"])
@pytest.mark.parametrize("fault", list(CONFIG_FAULTS))
def test_a_config_mistake_is_one_line_naming_file_and_place(fault, command, tmp_path, aria_cli):
    text, needles = CONFIG_FAULTS[fault]
    if command == "eval":  # a run directory whose config.yaml was edited by hand
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.yaml").write_text(text)
        needles = [n.replace("bad.yaml", "config.yaml") for n in needles]
        res = aria_cli("eval", str(tmp_path / "run"))
    elif command == "sweep":  # the sweep's base config
        (tmp_path / "bad.yaml").write_text(text)
        (tmp_path / "sweep.yaml").write_text(f"base: bad.yaml\ndir: {tmp_path / 's'}\ngrid: {{seed: [0, 1]}}\n")
        res = aria_cli("sweep", str(tmp_path / "sweep.yaml"), "--executor", "local")
    else:
        (tmp_path / "bad.yaml").write_text(text)
        res = aria_cli(command, str(tmp_path / "bad.yaml"), f"run.dir={tmp_path / 'r'}")
    one_clear_line(res, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"bad.yaml", "sweep.yaml", "run"} & {
        p.name for p in tmp_path.iterdir()})  # nothing new was written
