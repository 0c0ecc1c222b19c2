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
    from aria_hpc.conditioning.encoders import directory_digest

    vae = directory_digest(Path(cfg.bank.vae_dir)) if cfg.bank.vae_dir else "none"
    return hashlib.sha256(f"{array_digest(images, captions)}:{vae}".encode()).hexdigest()


def encode_latents(vae_dir: str, images: np.ndarray, batch_size: int) -> np.ndarray:
    """VAE posterior means times the VAE's scaling factor (deterministic), float32."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, low_cpu_mem_usage=False).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size])
            out.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
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


def load_x0(bank_dir: Path) -> np.ndarray:
    fix = "run `aria-hpc bank CONFIG` (it writes x0.h5 again)"
    with read_h5(bank_dir / X0_FILE, fix) as f:
        x0 = f["x0"][:]
        if array_digest(x0) != f.attrs["x0_digest"] or not whole(f):
            raise UserError(f"{bank_dir / X0_FILE} is corrupt (its data do not hash to its x0_digest): {fix}")
    return x0
