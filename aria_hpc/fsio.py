"""Crash-safe file helpers: fsync, atomic replace, and sha256 of arrays."""

from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def require_writable(path: Path, what: str) -> None:
    """UserError unless `path` (or, when it does not exist yet, its nearest existing parent) can be
    written by this process; checked before anything is written, so a refused command leaves no trace."""
    from aria_hpc.errors import UserError

    path = Path(path).absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path} cannot be created: {probe} is a file, not a directory; choose another {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable by this user ({probe}: permission denied): "
                        f"fix its permissions or choose another {what}")


@contextmanager
def atomic_path(path: Path, suffix: str = ""):
    """A temporary name beside `path` (ending in `suffix`, for writers that insist on an extension)
    for the block to write a file to; when the block ends without error the file is fsynced and
    renamed over `path`, so readers see the old file or the new one, never a mix. On error nothing is
    left behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so that readers see the old file or the new one, never a mix."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def file_lock(path: Path):
    """An exclusive flock on `path` (created if missing) for the block: one writer at a time, across
    processes and, on file systems that honour flock, across nodes."""
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def atomic_h5(path: Path):
    """An h5py file written aside and, when the block ends without error, fsynced and renamed over
    `path`: readers see the old file or the complete new one (aria_hpc.integrity.sealed_h5 also
    seals it)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f


@contextmanager
def replaced_dir(path: Path):
    """A fresh directory beside `path` for the block to fill; when the block ends without error the
    old `path` (if any) is removed and the new one renamed into its place, so a reader never loads a
    half-written directory. On error the partial directory is removed and `path` is left as it was."""
    import shutil

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


@contextmanager
def read_h5(path: Path, fix: str):
    """An HDF5 file open for reading. A missing file, or one that does not open or read as HDF5
    (truncated, overwritten), is a UserError naming it and `fix`, never an h5py traceback."""
    import h5py

    from aria_hpc.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: {fix}")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise UserError(f"{path} cannot be read as HDF5 (truncated or overwritten? "
                        f"{str(exc).splitlines()[0]}): {fix}") from None
    try:
        with f:
            yield f
    except (OSError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0]}): {fix}") from None


def array_digest(*arrays: np.ndarray) -> str:
    """sha256 over dtype, shape and bytes of each array, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def directory_digest(path: Path, suffixes=(".safetensors", ".bin", ".json", ".txt", ".model")) -> str:
    """sha256 over the weight, config and vocabulary files of a model directory (name + bytes)."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file() and p.suffix in suffixes)
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
