"""The run context: a loaded teacher with its conditioning, paired set and region map, checked
consistent once. The bank writer, training and evaluation all start from it (``load_context``); a
bank's fingerprint (bank/fingerprint.py) is computed from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from aria_hpc import pairs as pairs_stage
from aria_hpc.bank.fingerprint import bank_fingerprint
from aria_hpc.bank.paired import encode_latents, ensure_x0, image_set_digest, paired_images
from aria_hpc.bank.plan import NULL, RCSchedule
from aria_hpc.config import Config
from aria_hpc.errors import UserError
from aria_hpc.models.unet_input import UNetCond, sdxl_time_ids


@dataclass
class RunContext:
    """A loaded teacher with its conditioning, paired set and region map, checked consistent."""

    cfg: Config
    teacher: object  # models.teacher.Teacher
    store: object  # conditioning.embeddings.EmbeddingStore
    conditioning: RCSchedule | None  # None in a conditioning_context (no region map, no paired set)
    x0: np.ndarray | None
    null_tokens: np.ndarray  # (1, L, D) float16
    null_mask: np.ndarray  # (1, L) bool
    fingerprint: dict
    null_pooled: np.ndarray | None = None  # (1, P) float16: SDXL's text_embeds (SD3's pooled) of the null text
    pixels: int = 0  # SDXL: the image side its size conditioning (time_ids) names; 0: no time_ids
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
            out.pooled = torch.from_numpy(pooled).float()
            out.time_ids = sdxl_time_ids(n, self.pixels) if self.pixels else None
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


def load_context(cfg: Config, *, need_bank_dir: bool = True) -> RunContext:
    """Load and cross-check teacher, embeddings, regions and paired set. Without a bank directory
    (a live-teacher run) x0 is computed in memory instead of being stored in BANK_DIR/x0.h5."""
    from aria_hpc.conditioning.embeddings import EmbeddingStore
    from aria_hpc.models.teacher import load_teacher

    if need_bank_dir and not cfg.bank.dir:
        raise UserError("bank.dir is not set: give the directory the bank lives in (bank.dir=runs/bank)")
    teacher = load_teacher(cfg.teacher.dir, cfg.teacher.time_settings())
    store = EmbeddingStore(cfg.embed.dir, cfg.embed.shards)
    regions = load_matching_regions(cfg, store)
    teacher_encoder = teacher.meta.get("text_encoder", {}).get("digest")
    if teacher_encoder != store.encoder_digest:
        raise UserError(f"the teacher in {teacher.path} was trained with another text encoder than the one "
                        f"{cfg.embed.dir} was embedded with: embed with the teacher's encoder (text_encoder.dir)")
    base = conditioning_context(cfg, teacher, store)
    if not cfg.bank.pairs and pairs_stage.source_of(cfg) != "world":  # `aria-hpc pairs`: latents already
        x0, captions, image_set = pairs_x0(cfg, store.pool)
    else:
        images, captions = paired_images(cfg, store.pool)
        image_set = image_set_digest(cfg, images, captions)
        if cfg.bank.dir:
            x0 = ensure_x0(Path(cfg.bank.dir), cfg, images, captions, image_set)
        else:
            x0 = encode_latents(cfg.bank.vae_dir, images, cfg.bank.batch_size) if cfg.bank.vae_dir else images
    unet_cfg = teacher.unet.config
    if tuple(x0.shape[1:]) != (unet_cfg.in_channels, unet_cfg.sample_size, unet_cfg.sample_size):
        raise UserError(f"the paired set has shape {x0.shape[1:]} but the teacher takes "
                        f"({unet_cfg.in_channels}, {unet_cfg.sample_size}, {unet_cfg.sample_size}): "
                        "set bank.vae_dir for a latent teacher, or use a pixel teacher of that resolution")
    conditioning = RCSchedule(captions, regions.region, teacher.num_timesteps, cfg.rc.lam, cfg.rc.null_text_prob,
                              regions.order, regions.sizes if regions.order is not None else None, teacher.time)
    fingerprint = bank_fingerprint(cfg, teacher, store, regions, image_set)
    return replace(base, conditioning=conditioning, x0=x0, fingerprint=fingerprint)


def pairs_x0(cfg: Config, pool):
    """(x0, captions, image_set) of the paired set `aria-hpc pairs` built: x0 from BANK_DIR/x0.h5
    (copied a batch at a time), or, without a bank directory, read whole when small enough."""
    import hashlib

    from aria_hpc.bank.paired import X0_IN_MEMORY, ensure_x0_from_pairs

    pset = pairs_stage.PairedSet(cfg)
    if len(pset) and int(pset.prompt_ids.max()) >= len(pool):
        raise UserError(f"the paired set in {cfg.pairs.dir} indexes another prompt pool: run `aria-hpc pairs CONFIG "
                        "--rebuild`")
    image_set = hashlib.sha256(f"pairs:{pset.digest}".encode()).hexdigest()
    if cfg.bank.dir:
        return ensure_x0_from_pairs(Path(cfg.bank.dir), pset, image_set), pset.prompt_ids[:, None], image_set
    if len(pset) * int(np.prod(pset.shape)) * 4 > X0_IN_MEMORY:
        raise UserError(f"the paired set in {cfg.pairs.dir} is too large to hold in memory: set bank.dir "
                        "(x0 is then read from BANK_DIR/x0.h5 a batch at a time)")
    x0 = np.concatenate([rows.astype(np.float32) for _, rows in pset.batches(1024)])
    return x0, pset.prompt_ids[:, None], image_set


def conditioning_context(cfg: Config, teacher, store) -> RunContext:
    """A context that conditions the teacher on prompt ids (``cond``) and nothing more: no region
    map, paired set or fingerprint (what the teacher signatures need, before any region exists)."""
    from aria_hpc.conditioning.encoders import open_text_encoder

    # without stored token states the encoder runs every batch: on the GPU where there is one
    device = "cuda" if torch.cuda.is_available() and not store.has_tokens else "cpu"
    encoder = open_text_encoder(cfg.text_encoder.dir, cfg.text_encoder.max_length, device)
    if encoder.digest != store.encoder_digest:
        raise UserError(f"text_encoder.dir is not the encoder {cfg.embed.dir} was embedded with: set it to that one")
    null = encoder.null()
    xl = teacher.unet.config.get("addition_embed_type") == "text_time"
    pooled = xl or teacher.time is not None  # SDXL's text_embeds, SD3's pooled projections
    return RunContext(cfg, teacher, store, None, None, null.tokens.astype(np.float16), null.mask, {},
                      null.pooled.astype(np.float16) if pooled else None,
                      teacher.unet.config.sample_size * teacher.meta.get("vae_scale_factor", 1) if xl else 0, encoder)
