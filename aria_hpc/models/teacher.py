"""Teacher directories: a diffusers UNet + scheduler saved with save_pretrained, plus our metadata.

Layout (what `aria-hpc teacher` writes and every stage loads):
    TEACHER_DIR/unet/         UNet2DConditionModel.save_pretrained (safetensors)
    TEACHER_DIR/scheduler/    DDPMScheduler.save_pretrained
    TEACHER_DIR/aria_teacher.json  text encoder, token length, resolution, recipe

or a Stable Diffusion pipeline directory (models/pipeline.py): its UNet, and the training noise
schedule and prediction type of its scheduler config (whatever sampler the pipeline ships, PNDM for
SD-1.5, DDIM for 2.x, Euler for SDXL, shares the DDPM schedule it was trained with).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aria_hpc.errors import UserError

META_FILE = "aria_teacher.json"
ASSETS = Path(__file__).resolve().parents[1] / "worlds" / "assets"


def shipped_teacher_dir() -> Path:
    return ASSETS / "shapes16" / "teacher"


def build_unet(channels: list[int], *, layers_per_block: int, norm_num_groups: int, attention_head_dim: int,
               resolution: int, cross_attention_dim: int, in_channels: int = 3):
    """A UNet2DConditionModel: first stage plain, later stages cross-attend to the token states."""
    from diffusers import UNet2DConditionModel

    n = len(channels)
    down = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1)
    up = ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"]
    return UNet2DConditionModel(
        sample_size=resolution, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=tuple(channels), layers_per_block=layers_per_block,
        down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=norm_num_groups,
        cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim)


def build_scheduler(num_train_timesteps: int, beta_schedule: str, prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type)


@dataclass
class Teacher:
    unet: Any
    scheduler: Any
    meta: dict
    path: Path


def save_teacher(path: str | Path, unet, scheduler, meta: dict) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(path / "unet", safe_serialization=True)
    scheduler.save_pretrained(path / "scheduler")
    (path / META_FILE).write_text(json.dumps(meta, indent=2))
    return path


def teacher_dir(path: str | Path | None = None) -> Path:
    """The teacher directory (the shipped shapes teacher when path is None), checked to be one: a
    diffusers pipeline, or a directory written by `aria-hpc teacher`."""
    from aria_hpc.models.pipeline import is_pipeline

    path = Path(path) if path else shipped_teacher_dir()
    if is_pipeline(path):
        return path
    missing = [p for p in ("unet/config.json", "scheduler/scheduler_config.json", META_FILE)
               if not (path / p).is_file()]
    if missing:
        raise UserError(f"teacher directory {path} lacks {', '.join(missing)}: pass a directory written by "
                        "`aria-hpc teacher` (teacher.dir=...), or leave teacher.dir unset for the shipped one")
    return path


def load_teacher(path: str | Path | None = None) -> Teacher:
    """Load a teacher directory (the shipped shapes teacher when path is None), frozen, eval mode."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from aria_hpc.models.pipeline import is_pipeline

    path = teacher_dir(path)
    if is_pipeline(path):
        return load_pipeline_teacher(path)
    unet = UNet2DConditionModel.from_pretrained(path / "unet", low_cpu_mem_usage=False).eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
    return Teacher(unet, scheduler, json.loads((path / META_FILE).read_text()), path)


def load_pipeline_teacher(path: Path) -> Teacher:
    """The UNet of a Stable Diffusion pipeline directory, frozen, with a DDPMScheduler of its schedule."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from aria_hpc.conditioning.encoders import pipeline_encoder_digest
    from aria_hpc.models.pipeline import read_layout

    layout = read_layout(path)
    if layout.family == "sd3":
        raise UserError(f"{path} is a flow-matching transformer pipeline ({layout.class_name}): aria_hpc embeds "
                        "its prompts (aria-hpc embed) but cannot distil it yet; teachers are UNet pipelines "
                        "(SD-1.x, 2.x, SDXL) or `aria-hpc teacher` directories")
    config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    # the training schedule only: sampler-specific keys (PNDM's skip_prk_steps, ...) do not apply
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
            "rescale_betas_zero_snr", "timestep_spacing", "steps_offset", "clip_sample", "clip_sample_range",
            "thresholding", "sample_max_value")
    # latents are not confined to [-1, 1]: no x0 clipping unless the pipeline's own config asks for it
    scheduler = DDPMScheduler.from_config({"clip_sample": False, **{k: v for k, v in config.items() if k in keep}})
    try:
        unet = UNet2DConditionModel.from_pretrained(path / "unet", low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        cause = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"the UNet of the pipeline {path} cannot be loaded ({cause}): save the pipeline again") from None
    meta = {"world": None, "pipeline": layout.class_name, "resolution": unet.config.sample_size,
            "text_encoder": {"dir": str(path), "digest": pipeline_encoder_digest(layout)},
            "vae_scale_factor": layout.vae_scale_factor, "xl": layout.xl}
    return Teacher(unet.eval().requires_grad_(False), scheduler, meta, path)
