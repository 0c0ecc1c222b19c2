"""Everything a bank is computed from, loaded and checked once, and its fingerprint.

The paired set x0 (pixels, or VAE latents in latent mode) is stored once in ``BANK_DIR/x0.h5`` so
readers regenerate noised inputs without the original images or the VAE.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from aria_hpc.bank.plan import NULL, Conditioning
from aria_hpc.conditioning.unet_input import UNetCond, sdxl_time_ids
from aria_hpc.config import Config
from aria_hpc.errors import UserError
from aria_hpc.fsio import array_digest, atomic_h5, read_h5
from aria_hpc.h5doc import describe
from aria_hpc.worlds.shapes import shapes_world

SCHEMA_VERSION = 1
X0_FILE = "x0.h5"


def scheduler_fingerprint(scheduler) -> str:
    """The schedule's config as JSON; diffusers' bookkeeping left out (its version, and the list of
    defaulted keys, which it builds from a set: its order differs between processes)."""
    skip = ("_diffusers_version", "_use_default_values")
    return json.dumps({k: v for k, v in dict(scheduler.config).items() if k not in skip}, sort_keys=True, default=str)


def fingerprint_diff(have: dict, want: dict) -> list[str]:
    """Names of the fingerprint fields that differ (sampling parameters named one by one)."""
    out = []
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(key)
    return out


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
                if f.attrs.get("image_set_digest") == image_set and array_digest(x0 := f["x0"][:]) == \
                        f.attrs.get("x0_digest"):
                    return x0
        except OSError:
            pass  # damaged: computed and written again below

    x0 = encode_latents(cfg.bank.vae_dir, images, cfg.bank.batch_size) if cfg.bank.vae_dir else images
    with atomic_h5(path) as f:
        f["x0"] = x0
        f["captions"] = captions
        f.attrs["image_set_digest"] = image_set
        f.attrs["x0_digest"] = array_digest(x0)
        describe(f, "x0", space="latent" if cfg.bank.vae_dir else "pixel")
    return x0


def load_x0(bank_dir: Path) -> np.ndarray:
    fix = "run `aria-hpc bank CONFIG` (it writes x0.h5 again)"
    with read_h5(bank_dir / X0_FILE, fix) as f:
        x0 = f["x0"][:]
        if array_digest(x0) != f.attrs["x0_digest"]:
            raise UserError(f"{bank_dir / X0_FILE} is corrupt (its data do not hash to its x0_digest): {fix}")
    return x0


@dataclass
class BankContext:
    """A loaded teacher with its conditioning, paired set and region map, checked consistent."""

    cfg: Config
    teacher: object  # models.teacher.Teacher
    store: object  # conditioning.embeddings.EmbeddingStore
    conditioning: Conditioning
    x0: np.ndarray
    null_tokens: np.ndarray  # (1, L, D) float16
    null_mask: np.ndarray  # (1, L) bool
    fingerprint: dict
    null_pooled: np.ndarray | None = None  # (1, P) float16: SDXL's text_embeds of the null text
    pixels: int = 0  # SDXL: the image side its size conditioning (time_ids) names
    encoder: object = None  # the text encoder: encodes prompts on the fly when the store holds no tokens

    def cond(self, cond: np.ndarray) -> UNetCond:
        """What the UNet is conditioned on for condition ids (NULL = the null text), float32."""
        cond = np.asarray(cond)
        n, (_, length, dim) = len(cond), self.null_tokens.shape
        tokens = np.broadcast_to(self.null_tokens, (n, length, dim)).copy()
        mask = np.broadcast_to(self.null_mask, (n, length)).copy()
        real = np.flatnonzero(cond != NULL)
        fresh = None
        if len(real) and self.store.has_tokens:
            tokens[real], mask[real] = self.store.tokens(cond[real])
        elif len(real):  # a pool too large to store token states: encode this batch's prompts now
            fresh = self.encoder.encode(self.store.pool.text(cond[real]))
            tokens[real], mask[real] = fresh.tokens.astype(np.float16), fresh.mask
        out = UNetCond(torch.from_numpy(tokens).float(), torch.from_numpy(mask))
        if self.null_pooled is not None:
            pooled = np.broadcast_to(self.null_pooled, (n, self.null_pooled.shape[1])).copy()
            if len(real):
                pooled[real] = self.store.pooled_of(cond[real]) if fresh is None else fresh.pooled.astype(np.float16)
            out.pooled, out.time_ids = torch.from_numpy(pooled).float(), sdxl_time_ids(n, self.pixels)
        return out

    def null_cond(self) -> UNetCond:
        """The null text's one-row condition (classifier-free guidance)."""
        return self.cond(np.array([NULL]))


def load_matching_regions(cfg: Config, store):
    """cfg.regions.path, checked to have been computed from the pool of `store` (cfg.embed.dir)."""
    from aria_hpc.conditioning.kmeans import load_regions

    regions = load_regions(cfg.regions.path)
    if regions.attrs.get("pool_digest") != store.pool.digest:
        raise UserError(f"{cfg.regions.path} was computed from another prompt pool than {cfg.embed.dir}: "
                        "run `aria-hpc regions CONFIG` again")
    return regions


def load_context(cfg: Config, *, need_bank_dir: bool = True) -> BankContext:
    """Load and cross-check teacher, embeddings, regions and paired set. Without a bank directory
    (a live-teacher run) x0 is computed in memory instead of being stored in BANK_DIR/x0.h5."""
    from aria_hpc.conditioning.embeddings import EmbeddingStore
    from aria_hpc.conditioning.encoders import directory_digest, open_text_encoder
    from aria_hpc.models.teacher import load_teacher

    if need_bank_dir and not cfg.bank.dir:
        raise UserError("bank.dir is not set: give the directory the bank lives in (bank.dir=runs/bank)")
    teacher = load_teacher(cfg.teacher.dir)
    store = EmbeddingStore(cfg.embed.dir, cfg.embed.shards)
    regions = load_matching_regions(cfg, store)
    teacher_encoder = teacher.meta.get("text_encoder", {}).get("digest")
    if teacher_encoder != store.encoder_digest:
        raise UserError(f"the teacher in {teacher.path} was trained with another text encoder than the one "
                        f"{cfg.embed.dir} was embedded with: embed with the teacher's encoder (text_encoder.dir)")
    # without stored token states the encoder runs every batch: on the GPU where there is one
    device = "cuda" if torch.cuda.is_available() and not store.has_tokens else "cpu"
    encoder = open_text_encoder(cfg.text_encoder.dir, cfg.text_encoder.max_length, device)
    if encoder.digest != store.encoder_digest:
        raise UserError(f"text_encoder.dir is not the encoder {cfg.embed.dir} was embedded with: set it to that one")
    null = encoder.null()
    images, captions = paired_images(cfg, store.pool)
    vae = directory_digest(Path(cfg.bank.vae_dir)) if cfg.bank.vae_dir else "none"
    image_set = hashlib.sha256(f"{array_digest(images, captions)}:{vae}".encode()).hexdigest()
    if cfg.bank.dir:
        x0 = ensure_x0(Path(cfg.bank.dir), cfg, images, captions, image_set)
    else:
        x0 = encode_latents(cfg.bank.vae_dir, images, cfg.bank.batch_size) if cfg.bank.vae_dir else images
    unet_cfg = teacher.unet.config
    if tuple(x0.shape[1:]) != (unet_cfg.in_channels, unet_cfg.sample_size, unet_cfg.sample_size):
        raise UserError(f"the paired set has shape {x0.shape[1:]} but the teacher takes "
                        f"({unet_cfg.in_channels}, {unet_cfg.sample_size}, {unet_cfg.sample_size}): "
                        "set bank.vae_dir for a latent teacher, or use a pixel teacher of that resolution")
    conditioning = Conditioning(captions, regions.region, teacher.scheduler.config.num_train_timesteps,
                                cfg.rc.lam, cfg.rc.null_text_prob, regions.order,
                                regions.sizes if regions.order is not None else None)
    b = cfg.bank
    fingerprint = {
        "schema_version": SCHEMA_VERSION,
        "teacher_digest": directory_digest(teacher.path / "unet"),
        "scheduler_config": scheduler_fingerprint(teacher.scheduler),
        "text_encoder_digest": store.encoder_digest,
        "image_set_digest": image_set,
        "prompt_pool_digest": store.pool.digest,
        "regions_digest": array_digest(regions.region),
        "dtype": "float16",
        "sampling": {"entries": b.entries, "shards": b.shards, "seed": cfg.seed, "lam": cfg.rc.lam,
                     "null_text_prob": cfg.rc.null_text_prob, "min_per_region": b.min_per_region,
                     "features": list(b.features), "space": "latent" if b.vae_dir else "pixel"},
    }
    xl = teacher.unet.config.get("addition_embed_type") == "text_time"
    return BankContext(cfg, teacher, store, conditioning, x0, null.tokens.astype(np.float16), null.mask,
                       fingerprint, null.pooled.astype(np.float16) if xl else None,
                       unet_cfg.sample_size * teacher.meta.get("vae_scale_factor", 1), encoder)


class TeacherRunner:
    """The frozen teacher's forward pass in batches, no gradients (bf16 on GPU), with optional block features."""

    def __init__(self, context: BankContext, features: list[str]) -> None:
        self.context = context
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.unet = context.teacher.unet
        if self.device.type == "cuda":
            self.unet = self.unet.to(self.device, self.dtype)
        self.forwards = 0  # entries the teacher has computed
        self._captured: dict[str, torch.Tensor] = {}
        for name in features:
            try:
                module = self.unet.get_submodule(name)
            except AttributeError:
                raise UserError(f"bank.features: the teacher has no block '{name}' "
                                "(e.g. mid_block, down_blocks.1, up_blocks.0)") from None
            module.register_forward_hook(self._hook(name))
        self.features = list(features)

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self._captured[name] = output[0] if isinstance(output, tuple) else output
        return hook

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: np.ndarray, cond: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        dev = dict(device=self.device, dtype=self.dtype)
        out = self.unet(x_t.to(**dev), torch.from_numpy(t.astype(np.int64)).to(self.device),
                        **self.context.cond(cond).to(**dev).kwargs()).sample
        self.forwards += len(t)
        feats = {k: self._captured[k].float().cpu().numpy().astype(np.float16) for k in self.features}
        return out.float().cpu().numpy().astype(np.float16), feats


def entry_noise(seeds: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise of each entry, a pure function of its seed."""
    gen = torch.Generator()
    return torch.stack([torch.randn(shape, generator=gen.manual_seed(int(s))) for s in seeds])


def noised_inputs(scheduler, x0: torch.Tensor, t: np.ndarray, seeds: np.ndarray) -> torch.Tensor:
    """x_t of each entry, regenerated from (x0, t, seed) exactly as the bank writer made it."""
    noise = entry_noise(seeds, tuple(x0.shape[1:]))
    return scheduler.add_noise(x0, noise, torch.from_numpy(np.asarray(t, dtype=np.int64)))
