"""File integrity for every HDF5 file a run reads: no byte of a damaged prompt pool, embedding shard,
signature shard, region map or x0 file reaches a student or a later stage.

A writer seals a file before renaming it into place: the sha256 of its datasets (`data_digest`) goes
into its attribute ``data_digest``. A reader verifies a file before using any of its rows: it must
hash to the digest it carries. Hashing reads the whole file, so a verified file is remembered in
``.verified.json`` beside it by (device, inode, size, mtime): later opens, in any process, cost one
stat(); a file changed since (rewritten, replaced, grown) is hashed again, and ``force`` (the CLI's
``--verify``, or ARIA_VERIFY=1) hashes every file whatever the cache says. A byte changed in place
without touching size or mtime after verification is caught only by a forced check, as for the bank
(bank/integrity.py, which keeps its own digests in its manifest).

A file written before sealing existed carries no digest; it is read as before, unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from aria_hpc.errors import UserError
from aria_hpc.fsio import atomic_h5, atomic_write_text, file_lock, read_h5

DIGEST_ATTR = "data_digest"
VERIFIED = ".verified.json"


def force_requested() -> bool:
    """Whether every verification hashes whatever the cache says (ARIA_VERIFY=1; the CLI's --verify sets it)."""
    return os.environ.get("ARIA_VERIFY") == "1"


def data_digest(f) -> str:
    """sha256 over every dataset of an open h5py File (name, then its bytes in row blocks), in name order."""
    import h5py

    h = hashlib.sha256()

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            h.update(name.encode())
            if obj.shape == ():
                h.update(np.ascontiguousarray(obj[()]).tobytes())
                return
            rows = max(1, (1 << 24) // max(1, obj.dtype.itemsize * int(np.prod(obj.shape[1:], dtype=np.int64))))
            for start in range(0, obj.shape[0], rows):
                block = obj[start:start + rows]
                if block.dtype.kind == "O":  # variable-length strings: their UTF-8 bytes, each terminated
                    h.update(b"".join((v if isinstance(v, bytes) else str(v).encode()) + b"\0" for v in block))
                else:
                    h.update(np.ascontiguousarray(block).data)
    f.visititems(visit)
    return h.hexdigest()


def seal(f) -> str:
    """Write the digest of an open, writable file's datasets into its attrs (a writer's last step)."""
    digest = data_digest(f)
    f.attrs[DIGEST_ATTR] = digest
    return digest


def stamp(path: Path, digest: str) -> list:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, digest]


def read_cache(directory: Path) -> dict:
    try:
        cache = json.loads((directory / VERIFIED).read_text())
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}  # absent, unreadable or torn: everything is hashed again


def remember_stamps(directory: Path, stamps: dict[str, list]) -> None:
    """Record verified (or freshly sealed and renamed) files ({name: stamp}) in `directory`'s cache,
    merged with what other processes recorded meanwhile under the cache's own file lock; a directory
    that cannot be written keeps being hashed."""
    try:
        with file_lock(directory / (VERIFIED + ".lock")):
            merged = {**read_cache(directory), **stamps}
            atomic_write_text(directory / VERIFIED, json.dumps(merged, indent=0))
    except OSError:
        pass


def remember(path: Path, digest: str) -> None:
    """Record one verified (or freshly sealed and renamed) file in its directory's cache."""
    remember_stamps(path.parent, {path.name: stamp(path, digest)})


@contextmanager
def sealed_h5(path: Path):
    """fsio.atomic_h5 whose datasets' digest is written into the file before it closes, and which is
    remembered as verified once renamed into place."""
    with atomic_h5(path) as f:
        yield f
        digest = seal(f)
    remember(path, digest)


def verify(path: Path, what: str, fix: str, *, force: bool | None = None) -> bool:
    """Check a sealed file before its rows are used: UserError naming it, what it is and `fix` when
    its data do not hash to its digest. True when it was hashed (False: the cache vouched for it, or
    the file predates sealing)."""
    path = Path(path)
    force = force_requested() if force is None else force
    with read_h5(path, fix) as f:
        written = f.attrs.get(DIGEST_ATTR)
        if written is None:
            return False
        written = str(written)
        if not force and read_cache(path.parent).get(path.name) == stamp(path, written):
            return False
        try:
            actual = data_digest(f)
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"{what} {path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0]}): "
                            f"{fix}") from None
    if actual != written:
        raise UserError(f"{what} {path} is damaged (its data hash to {actual[:12]}, it was written as "
                        f"{written[:12]}): {fix}")
    remember(path, written)
    return True
