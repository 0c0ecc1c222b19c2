"""Writing a bank's shards: each written aside, verified, fsynced and renamed into place; the checks
that keep a bank built for one configuration from being reused for another (the build stage,
aria_hpc/build/bank.py, drives them).

    BANK_DIR/x0.h5                the paired set x0 (pixels or latents) noised inputs are made from
    BANK_DIR/shard-00003.h5       shard 3 of the planned entries
    BANK_DIR/shard-live-*.h5      entries a live teacher computed during training (write-back)

A shard is written as ``shard-00003.h5.tmp-<pid>``; a killed writer leaves only such a file, which
no reader opens and the next build of that shard deletes. The manifest is bank/manifest.py's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from aria_hpc.bank.fingerprint import fingerprint_diff
from aria_hpc.bank.integrity import ShardFault, set_aside, shard_digest, verify_shards
from aria_hpc.bank.manifest import MANIFEST, check_fingerprint, existing_fingerprint, read_shard_meta, shard_name
from aria_hpc.bank.plan import COLUMNS
from aria_hpc.fsio import fsync_path
from aria_hpc.h5doc import describe, prediction_type
from aria_hpc.integrity import remember


def write_shard(path: Path, fingerprint: dict, attrs: dict, cols: dict[str, np.ndarray],
                batches, output_shape: tuple[int, ...]) -> str:
    """Write a shard aside, verify it, fsync and rename it to `path`; its digest.

    `batches` yields (start, stop, output float16, {feature: float16}) covering the rows in order;
    feature datasets take their shapes from the first batch. The outputs are one contiguous
    (unchunked) float16 dataset, so readers can memory-map it.
    """
    for stale in path.parent.glob(f"{path.name}.tmp-*"):  # left by a killed writer of this very shard
        stale.unlink()
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    n = len(cols["entry"])
    with h5py.File(tmp, "w") as f:
        for key in COLUMNS:
            f.create_dataset(key, data=cols[key])
        out = f.create_dataset("output", (n, *output_shape), dtype=np.float16)
        written = 0
        for start, stop, output, features in batches:
            out[start:stop] = output
            for k, v in features.items():
                if f"features/{k}" not in f:
                    f.create_dataset(f"features/{k}", (n, *v.shape[1:]), dtype=np.float16)
                f[f"features/{k}"][start:stop] = v
            written = stop
            f.flush()
        if written != n:
            raise RuntimeError(f"shard writer produced {written} of {n} rows")
        digest = shard_digest(f)
        f.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
        f.attrs["entries"] = n
        f.attrs["digest"] = digest
        for k, v in attrs.items():
            f.attrs[k] = v
        describe(f, "bank_shard")
        f["output"].attrs["prediction_type"] = prediction_type(fingerprint)
    with h5py.File(tmp, "r", locking=False) as f:  # verify what reached the file
        if shard_digest(f) != digest:
            raise RuntimeError(f"{tmp}: digest changed on re-read; the file system lost data")
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)
    remember(path, digest)  # verified on re-read: no reader hashes it again (the rename keeps inode and mtime)
    return digest


def prepare_bank_dir(bank_dir: Path, fingerprint: dict, rebuild: bool) -> None:
    """Refuse a bank built differently (or wipe it with rebuild); never reuse it silently."""
    found = existing_fingerprint(bank_dir) if bank_dir.is_dir() else None
    if found is None:
        return
    where, have = found
    if not rebuild:
        check_fingerprint(where, have, fingerprint)  # raises on any difference
    elif fingerprint_diff(have, fingerprint):
        for path in list(bank_dir.glob("shard-*.h5*")) + [bank_dir / MANIFEST]:
            path.unlink(missing_ok=True)


def check_shards(bank_dir: Path, *, force: bool = False) -> list[ShardFault]:
    """Every shard file in bank_dir checked against its own digest and the manifest's (verified ones
    by the cache unless `force`); each bad one is set aside (`<name>.bad`) and returned, so a planned
    shard is then missing and rebuilt with the same digest, and a written-back one leaves the manifest."""
    if not bank_dir.is_dir():
        return []
    listed = {}
    if (bank_dir / MANIFEST).is_file():
        listed = {m["name"]: m["digest"] for m in json.loads((bank_dir / MANIFEST).read_text()).get("shards", [])}
    bad: list[ShardFault] = []
    shards = [{"name": p.name, "digest": listed.get(p.name)} for p in sorted(bank_dir.glob("shard-*.h5"))]
    verify_shards(bank_dir, shards, force=force, faults=bad)
    for fault in bad:
        set_aside(fault.path)
    return bad


def shard_is_complete(bank_dir: Path, index: int, fingerprint: dict) -> bool:
    path = bank_dir / shard_name(index)
    if not path.is_file():
        return False
    check_fingerprint(str(path), read_shard_meta(path)["fingerprint"], fingerprint)
    return True


