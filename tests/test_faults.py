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
    from aria_hpc.bank import build_bank
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
