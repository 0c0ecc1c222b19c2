"""Bank integrity: no byte of a corrupted, truncated or missing shard reaches a student.

Every shard stores the sha256 of its datasets (`shard_digest`) in its own attributes, and the
manifest lists it beside the shard's name. A reader verifies each shard it opens before reading any
of its rows: the file must exist, open as HDF5, and hash to the digest the manifest lists (which must
also be the one the shard itself carries). Hashing reads the whole shard, so a verified shard is
remembered in BANK_DIR/.verified.json by (device, inode, size, mtime): later opens, in any process,
cost one stat() per shard. The shard writer, which verifies every shard on re-read before renaming it
into place, records it there too, so a freshly built bank is never hashed again by its readers. A
rewritten or replaced file has a new inode or mtime and is hashed again.

What each layer catches:
  - missing file, or one that does not open as HDF5 (truncated, overwritten header): at every open;
  - any changed byte in a dataset (a bit flip, a partial write, a swapped file with other data): at the
    first open after the file changed, and at every open while the cache cannot be written (read-only
    bank). A byte that changes in place without touching size or mtime after verification is caught
    only by `aria-hpc bank --verify`, which always hashes.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from aria_hpc.errors import UserError
from aria_hpc.integrity import data_digest, read_cache, remember_stamps, stamp

FIX = "run `aria-hpc bank` with the run's config: it sets bad shards aside and rebuilds exactly those"


class ShardFault(UserError):
    """One shard is missing, unreadable or corrupt (the message names it and the fix)."""

    def __init__(self, path: Path, why: str) -> None:
        self.path, self.why = path, why
        super().__init__(f"bank shard {path} {why}: {FIX}")


def shard_digest(f: h5py.File) -> str:
    """sha256 over every dataset of a shard file (columns, outputs, features), in name order: the
    digest every sealed file carries (aria_hpc.integrity.data_digest; the same bytes in the same order)."""
    return data_digest(f)


def hash_shard(path: Path, listed: str | None = None) -> str:
    """The digest of a shard's data, after checking it against the shard's own and the listed digest;
    ShardFault when the file is missing, does not open, or hashes to something else."""
    if not path.is_file():
        raise ShardFault(path, "is missing")
    try:
        with h5py.File(path, "r", locking=False) as f:
            own = str(f.attrs.get("digest", ""))
            digest = shard_digest(f)
    except OSError as exc:
        cause = str(exc).splitlines()[0]
        raise ShardFault(path, f"cannot be read as HDF5 (truncated or overwritten? {cause})") from None
    if listed is not None and own != listed:
        raise ShardFault(path, f"is not the shard the manifest lists (digest {own[:12]}, manifest {listed[:12]})")
    if digest != own:
        raise ShardFault(path, f"is corrupt (its data hash to {digest[:12]}, it was written as {own[:12]})")
    return digest


def verify_shards(bank_dir: Path, shards: list[dict], *, force: bool = False,
                  faults: list[ShardFault] | None = None) -> int:
    """Check every listed shard ({"name", "digest"}; digest None: only against its own) before its
    data is used; the number hashed (the rest matched the verified cache). Raises ShardFault on the
    first bad one, or, given a `faults` list, appends every bad one to it and goes on."""
    cache = {} if force else read_cache(bank_dir)
    fresh = {}
    try:
        for meta in shards:
            path = bank_dir / meta["name"]
            try:
                try:
                    cached = meta["digest"] is not None and cache.get(meta["name"]) == stamp(path, meta["digest"])
                except FileNotFoundError:
                    raise ShardFault(path, "is missing") from None
                if not cached:
                    fresh[meta["name"]] = stamp(path, hash_shard(path, meta["digest"]))
            except ShardFault as fault:
                if faults is None:
                    raise
                faults.append(fault)
    finally:  # what was verified before a fault stays verified
        if fresh:
            remember_stamps(bank_dir, fresh)  # the verified cache (aria_hpc.integrity), under its own lock
    return len(fresh)


def set_aside(path: Path) -> Path:
    """Move a bad shard out of every reader's way (`<name>.bad`, replacing an older one), keeping its
    bytes for inspection; the manifest no longer lists it once it is updated."""
    aside = path.with_name(path.name + ".bad")
    os.replace(path, aside)
    return aside
