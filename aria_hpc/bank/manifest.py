"""A bank's manifest, its shard names and its writers' registry: what every reader and writer of a
bank agrees on (docs/design.md section 5).

    BANK_DIR/manifest.json        fingerprint + the complete shards with their digests (atomic replace)
    BANK_DIR/writers.json         writer ids, so write-back shards of many runs never collide
    BANK_DIR/.manifest.lock       the writers' lock (a plain file lock, aria_hpc.fsio.file_lock)

Readers never take the writers' lock: the manifest is replaced atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py

from aria_hpc.bank.fingerprint import fingerprint_diff
from aria_hpc.bank.integrity import ShardFault
from aria_hpc.errors import UserError
from aria_hpc.fsio import atomic_write_text, file_lock

MANIFEST = "manifest.json"
WRITERS = "writers.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def read_manifest(bank_dir: Path) -> dict:
    path = bank_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"no bank at {bank_dir} (no {MANIFEST}): build it with `aria-hpc bank CONFIG`")
    return json.loads(path.read_text())


def read_shard_meta(path: Path) -> dict:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return {"name": path.name, "entries": int(f.attrs["entries"]), "digest": str(f.attrs["digest"]),
                    "kind": str(f.attrs["kind"]), "fingerprint": json.loads(f.attrs["fingerprint"])}
    except (OSError, KeyError) as exc:
        raise ShardFault(path, f"cannot be read as a bank shard ({str(exc).splitlines()[0]})") from None


def check_fingerprint(where: str, have: dict, want: dict) -> None:
    differ = fingerprint_diff(have, want)
    if differ:
        raise UserError(f"{where} was built with a different fingerprint (differs in {', '.join(differ)}): "
                        "pass --rebuild to replace it, or point bank.dir at another directory")


def manifest_lock(bank_dir: Path):
    """The bank's writers' lock (the manifest and the writer ids; the verified cache has its own)."""
    return file_lock(bank_dir / ".manifest.lock")


def update_manifest(bank_dir: Path, fingerprint: dict) -> dict:
    """List every complete shard (planned and live) in manifest.json, replaced atomically."""
    planned = fingerprint["sampling"]["shards"]
    with manifest_lock(bank_dir):
        shards = []
        for path in sorted(bank_dir.glob("shard-*.h5")):
            meta = read_shard_meta(path)
            check_fingerprint(str(path), meta.pop("fingerprint"), fingerprint)
            shards.append(meta)
        have = {s["name"] for s in shards}
        missing = [i for i in range(planned) if shard_name(i) not in have]
        manifest = {"schema_version": fingerprint["schema_version"], "fingerprint": fingerprint,
                    "planned_shards": planned, "complete": not missing, "missing": missing,
                    "entries": sum(s["entries"] for s in shards), "shards": shards}
        atomic_write_text(bank_dir / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def claim_writer(bank_dir: Path, owner: dict, *, reuse: bool = False) -> int:
    """A writer id unique in this bank, registered under the manifest lock in BANK_DIR/writers.json.
    Write-back shards are named after it and entry ids carry it, so sweep members, ranks and job
    arrays writing into one bank never collide. reuse: the latest id registered to the same owner
    (a resumed run continues its own names), else a new one."""
    with manifest_lock(bank_dir):
        path = bank_dir / WRITERS
        writers = json.loads(path.read_text())["writers"] if path.is_file() else []
        if reuse:
            same = [w["id"] for w in writers if w["owner"] == owner]
            if same:
                return same[-1]
        wid = len(writers)
        writers.append({"id": wid, "owner": owner, "host": os.uname().nodename, "pid": os.getpid()})
        atomic_write_text(path, json.dumps({"writers": writers}, indent=1))
    return wid


def existing_fingerprint(bank_dir: Path) -> tuple[str, dict] | None:
    """The fingerprint of what is already in bank_dir (manifest, else any complete shard)."""
    if (bank_dir / MANIFEST).is_file():
        return str(bank_dir / MANIFEST), json.loads((bank_dir / MANIFEST).read_text())["fingerprint"]
    for path in sorted(bank_dir.glob("shard-*.h5")):
        return str(path), read_shard_meta(path)["fingerprint"]
    return None
