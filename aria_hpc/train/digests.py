"""Checkpoint digests computed while a checkpoint is written (streamed, never a second read).

Every file of a checkpoint tag goes through ``HashingWriter``, a file object that feeds each byte to
sha256 on its way to disk: DeepSpeed's own files through ``DigestingCheckpointEngine`` (DeepSpeed's
torch engine with the file handed to torch.save instead of its path), the rank's own state through
``save_hashed``. The digests of what this process wrote are kept in ``written`` until the tag's meta
(aria_meta.json) lists them; resume hashes each file again and names any that differs.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

CHUNK = 1 << 22  # bytes per read when hashing a file


OVERLAP_BYTES = 1 << 16  # blocks at least this large are hashed in a second thread while they are written


class HashingWriter(io.RawIOBase):
    """A write-only binary file that hashes every byte it writes (sequential writes only). A large
    block is hashed in a helper thread while the caller's thread writes it (both release the GIL), so
    the save takes about max(write, hash) rather than their sum; the block is not copied, and write
    returns only when both are done with it."""

    def __init__(self, path: str | Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        super().__init__()
        self._fh = open(path, "wb")
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-hash")
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.size += len(view)
        if len(view) < OVERLAP_BYTES:
            self.sha.update(view)
            return self._fh.write(view)
        hashed = self._hasher.submit(self.sha.update, view)
        try:
            return self._fh.write(view)
        finally:
            hashed.result()

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
            self._hasher.shutdown(wait=True)
        super().close()


written: dict[str, str] = {}  # absolute path -> sha256 of the files this process wrote since the last take


def save_hashed(obj, path: str | Path, **kwargs) -> str:
    """torch.save through a HashingWriter; the digest is returned and kept in `written`.

    The zip records' CRC-32 is not computed (torch.serialization.set_crc32_options): torch.load never
    checks it, the sha256 replaces it and is checked on every resume, and computing it took as long as
    the write on an SD-sized state (benchmarks/bench_checkpoint.py). A zip tool's own test (`unzip -t`,
    Python's zipfile reading a record) reports these records' CRC as wrong."""
    crc_options = getattr(torch.serialization, "set_crc32_options", None)  # torch >= 2.6
    crc = torch.serialization.get_crc32_options() if crc_options else None
    if crc_options:
        crc_options(False)
    try:
        with HashingWriter(path) as fh:
            torch.save(obj, fh, **kwargs)
            digest = fh.sha.hexdigest()
    finally:
        if crc_options:
            crc_options(crc)
    written[str(Path(path).resolve())] = digest
    return digest


def take(tag_dir: Path) -> dict[str, str]:
    """The digests of this process's files under tag_dir (relative names), removed from `written`."""
    tag_dir = Path(tag_dir).resolve()
    mine = {p: d for p, d in written.items() if Path(p).is_relative_to(tag_dir)}
    for p in mine:
        del written[p]
    return {str(Path(p).relative_to(tag_dir)): d for p, d in mine.items()}


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class DigestingCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, hashing every file it saves as it writes it."""

    def save(self, state_dict, path: str):
        save_hashed(state_dict, path, _use_new_zipfile_serialization=self.zipfile_serialization)


def install(engine) -> None:
    """Make a DeepSpeed engine's saves go through DigestingCheckpointEngine (same format, same files)."""
    current = engine.checkpoint_engine
    if type(current) is TorchCheckpointEngine:
        digesting = DigestingCheckpointEngine.__new__(DigestingCheckpointEngine)
        digesting.__dict__.update(current.__dict__)
        engine.checkpoint_engine = digesting
