"""The paired set (images and their caption prompt ids) and x0, what noised inputs are made from: the
images themselves, or their VAE latents in latent mode. A bank stores x0 once in ``BANK_DIR/x0.h5``,
so readers regenerate noised inputs without the original images or the VAE.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from aria_hpc.config import Config
from aria_hpc.errors import UserError
from aria_hpc.fsio import array_digest, atomic_h5, read_h5
from aria_hpc.h5doc import describe
from aria_hpc.integrity import DIGEST_ATTR, data_digest, seal
from aria_hpc.worlds.shapes import shapes_world

X0_FILE = "x0.h5"
X0_IN_MEMORY = 1 << 28  # x0 up to this many bytes (as float32) is held whole; a larger one is read by rows


class X0Rows:
    """x0 too large to hold: rows read a batch at a time (`x0[ids]` -> float32 rows). A contiguous,
    uncompressed dataset (what the bank writes) is read with one pread per distinct row at its offset
    in the file, so a random batch costs its rows' bytes and no more; any other layout through h5py.
    Pickles without its handles (a forked reader opens its own)."""

    def __init__(self, path: Path, name: str = "x0") -> None:
        self.path, self.name = Path(path), name
        with h5py.File(self.path, "r", locking=False) as f:
            ds = f[name]
            self.shape, self.dtype = tuple(ds.shape), ds.dtype
            contiguous = ds.chunks is None and ds.compression is None
            self.offset = ds.id.get_offset() if contiguous else None
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd, self._ds, self._pid = None, None, None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_ds": None, "_pid": None}

    def __getitem__(self, ids) -> np.ndarray:
        import os

        if self._pid != os.getpid():
            self._pid = os.getpid()
            if self.offset is not None:
                self._fd = os.open(self.path, os.O_RDONLY)
            else:
                self._ds = h5py.File(self.path, "r", locking=False)[self.name]
        ids = np.asarray(ids, dtype=np.int64)
        unique, inverse = np.unique(ids, return_inverse=True)
        if self.offset is None:
            rows = self._ds[unique]  # h5py reads sorted, distinct rows
        else:
            rows = np.empty((len(unique), *self.shape[1:]), self.dtype)
            flat = rows.reshape(len(unique), -1).view(np.uint8)
            for k, i in enumerate(unique):
                if os.preadv(self._fd, [flat[k]], self.offset + int(i) * self.row_bytes) != self.row_bytes:
                    raise UserError(f"{self.path} is shorter than its x0 dataset: rebuild the bank "
                                    "(aria-hpc bank CONFIG)")
        return rows.astype(np.float32)[inverse.reshape(ids.shape)]


def open_x0(path: Path):
    """BANK_DIR/x0.h5's x0: whole as float32 when small, else X0Rows."""
    with h5py.File(path, "r", locking=False) as f:
        ds = f["x0"]
        if int(np.prod(ds.shape, dtype=np.int64)) * 4 <= X0_IN_MEMORY:
            return ds[:].astype(np.float32)
    return X0Rows(path)


def streamed_digest(ds, rows: int = 1024) -> str:
    """array_digest of an h5py dataset, read `rows` at a time (the same value as over the whole array)."""
    h = hashlib.sha256()
    h.update(f"{ds.dtype.str}{ds.shape}".encode())
    for a in range(0, ds.shape[0], rows):
        h.update(np.ascontiguousarray(ds[a:a + rows]).data)
    return h.hexdigest()


def ensure_x0_from_pairs(bank_dir: Path, pairs, image_set: str):
    """x0 of a built paired set (aria_hpc.pairs.PairedSet: latents already), copied into
    BANK_DIR/x0.h5 a batch at a time at the set's dtype (the bank stays readable without pairs.dir),
    and returned as open_x0 gives it. A damaged copy is made again, as for ensure_x0."""
    path = bank_dir / X0_FILE
    if path.is_file():
        try:
            with h5py.File(path, "r", locking=False) as f:
                same = f.attrs.get("image_set_digest") == image_set
                intact = same and streamed_digest(f["x0"]) == f.attrs.get("x0_digest") and whole(f)
            if intact:
                return open_x0(path)
        except OSError:
            same = True
        if same:
            print(f"aria-hpc: note: {path} is damaged (its data do not hash to their digests); copying it "
                  "again from the paired set", file=sys.stderr, flush=True)
    with atomic_h5(path) as f:
        ds = f.create_dataset("x0", (len(pairs), *pairs.shape), dtype=pairs.dtype)  # contiguous: X0Rows preads rows
        for start, rows in pairs.batches(256):
            ds[start:start + len(rows)] = rows
        f["captions"] = pairs.prompt_ids[:, None]
        f.attrs["image_set_digest"] = image_set
        describe(f, "x0", space="latent")
        f.attrs["x0_digest"] = streamed_digest(ds)
        seal(f)
    return open_x0(path)


def paired_images(cfg: Config, pool) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, H, W) float32 images in [-1, 1] and (n, c) caption prompt ids."""
    if cfg.bank.pairs:
        path = Path(cfg.bank.pairs)
        if not path.is_file():
            raise UserError(f"bank.pairs={path} does not exist: give an HDF5 file with datasets images "
                            "(n,C,H,W) and prompt_ids (n,), or unset it for the shapes world")
        with read_h5(path, "bank.pairs must be an HDF5 file with datasets images (n,C,H,W) and prompt_ids (n,)") as f:
            if "images" not in f or "prompt_ids" not in f:
                raise UserError(f"bank.pairs={path} needs datasets 'images' and 'prompt_ids'")
            images, ids = f["images"][:].astype(np.float32), f["prompt_ids"][:].astype(np.int64)
        if ids.min() < 0 or ids.max() >= len(pool):
            raise UserError(f"bank.pairs={path}: prompt_ids must index the pool (0..{len(pool) - 1})")
        return images, ids[:, None]
    if cfg.pool.files:
        raise UserError("the shapes world's paired set needs the world's own prompt pool: unset pool.files, "
                        "or give bank.pairs (images + prompt_ids into your pool)")
    world = shapes_world(cfg.world)
    images, combos = world.paired_set()
    captions = world.caption_ids(combos)
    if not np.array_equal(pool.combination[captions[:, 0]], combos):
        raise UserError("the prompt pool is not the shapes world's: rebuild the embeddings (aria-hpc embed --rebuild)")
    return images, captions


def image_set_digest(cfg: Config, images: np.ndarray, captions: np.ndarray) -> str:
    """What x0 is a function of: the paired set and the VAE (none in pixel mode)."""
    from aria_hpc.fsio import directory_digest

    vae = directory_digest(Path(cfg.bank.vae_dir)) if cfg.bank.vae_dir else "none"
    return hashlib.sha256(f"{array_digest(images, captions)}:{vae}".encode()).hexdigest()


def to_latent(vae, x: torch.Tensor) -> torch.Tensor:
    """Model-space latents of images in [-1, 1]: (posterior mean - shift_factor) * scaling_factor, as the
    pipelines scale them (SD3's VAE has a shift factor, SD's none)."""
    shift = vae.config.get("shift_factor") or 0.0
    return (vae.encode(x).latent_dist.mean - shift) * vae.config.scaling_factor


def from_latent(vae, z: torch.Tensor) -> torch.Tensor:
    """Images of model-space latents (to_latent's inverse before decoding)."""
    return vae.decode(z / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)).sample


def encode_latents(vae_dir: str, images: np.ndarray, batch_size: int) -> np.ndarray:
    """VAE posterior means in model space (to_latent; deterministic), float32."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, low_cpu_mem_usage=False).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size])
            out.append(to_latent(vae, x))
    return torch.cat(out).numpy().astype(np.float32)


def ensure_x0(bank_dir: Path, cfg: Config, images: np.ndarray, captions: np.ndarray, image_set: str) -> np.ndarray:
    """x0 of the paired set, read from BANK_DIR/x0.h5 or computed (VAE-encoded in latent mode) and stored."""
    path = bank_dir / X0_FILE
    if path.is_file():
        try:
            with h5py.File(path, "r", locking=False) as f:
                same_set = f.attrs.get("image_set_digest") == image_set
                if same_set and array_digest(x0 := f["x0"][:]) == f.attrs.get("x0_digest") and whole(f):
                    return x0
        except OSError:
            same_set = True  # unreadable: computed and written again below
        if same_set:  # the paired set is the one it was made from: the file itself is damaged
            print(f"aria-hpc: note: {path} is damaged (its data do not hash to their digests); computing it "
                  "again from the paired set", file=sys.stderr, flush=True)

    x0 = encode_latents(cfg.bank.vae_dir, images, cfg.bank.batch_size) if cfg.bank.vae_dir else images
    with atomic_h5(path) as f:
        f["x0"] = x0
        f["captions"] = captions
        f.attrs["image_set_digest"] = image_set
        f.attrs["x0_digest"] = array_digest(x0)
        describe(f, "x0", space="latent" if cfg.bank.vae_dir else "pixel")
        seal(f)  # every dataset (x0 and captions), as the other file kinds
    return x0


def whole(f) -> bool:
    """Whether an x0 file's datasets hash to its data_digest (a file written before sealing: True)."""
    written = f.attrs.get(DIGEST_ATTR)
    return written is None or data_digest(f) == str(written)


def load_x0(bank_dir: Path):
    """BANK_DIR/x0.h5's x0 (open_x0), checked against its digests first (a batch at a time)."""
    fix = "run `aria-hpc bank CONFIG` (it writes x0.h5 again)"
    path = bank_dir / X0_FILE
    with read_h5(path, fix) as f:
        ok = whole(f) and streamed_digest(f["x0"]) == f.attrs["x0_digest"]
    if not ok:
        raise UserError(f"{path} is corrupt (its data do not hash to its x0_digest): {fix}")
    return open_x0(path)
