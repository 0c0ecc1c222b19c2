"""Teacher directories: a diffusers UNet + scheduler saved with save_pretrained, plus our metadata.

Layout (what `aria-hpc teacher` writes and every stage loads):
    TEACHER_DIR/unet/         UNet2DConditionModel.save_pretrained (safetensors)
    TEACHER_DIR/scheduler/    DDPMScheduler.save_pretrained
    TEACHER_DIR/aria_teacher.json  text encoder, token length, resolution, recipe

or a Stable Diffusion pipeline directory (models/pipeline.py): its UNet, and the training noise
schedule and prediction type of its scheduler config (whatever sampler the pipeline ships, PNDM for
SD-1.5, DDIM for 2.x, Euler for SDXL, shares the DDPM schedule it was trained with); or an SD3-class
flow-matching pipeline: its transformer behind models.flow.FlowDenoiser, and time on its
FlowMatchEulerDiscreteScheduler's table (models.flow.FlowTime).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    unet: Any  # the denoiser: a UNet2DConditionModel, or a flow transformer in a models.flow.FlowDenoiser
    scheduler: Any  # DDPMScheduler, or the pipeline's FlowMatchEulerDiscreteScheduler
    meta: dict
    path: Path
    time: Any = None  # models.flow.FlowTime of a flow-matching teacher, else None
    component: str = "unet"  # the subdirectory holding the denoiser's weights

    @property
    def num_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    @property
    def noise_schedule(self):
        """What makes x_t: add_noise(x0, noise, t) of the DDPM scheduler or of the flow table."""
        return self.scheduler if self.time is None else self.time

    def bins(self, t: np.ndarray, num_bins: int) -> np.ndarray:
        """The b(t) bin of each timestep: equal widths of t for DDPM teachers, of sigma for flow ones."""
        from aria_hpc.regions.allocation import timestep_bins

        return timestep_bins(t, self.num_timesteps, num_bins) if self.time is None else self.time.bins(t, num_bins)


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


def load_teacher(path: str | Path | None = None, time_density: dict | None = None) -> Teacher:
    """Load a teacher directory (the shipped shapes teacher when path is None), frozen, eval mode.
    time_density: a flow teacher's FlowTime density settings (config.teacher's), else its defaults."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from aria_hpc.models.pipeline import is_pipeline

    path = teacher_dir(path)
    if is_pipeline(path):
        return load_pipeline_teacher(path, time_density or {})
    unet = UNet2DConditionModel.from_pretrained(path / "unet", low_cpu_mem_usage=False).eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
    return Teacher(unet, scheduler, json.loads((path / META_FILE).read_text()), path)


def load_pipeline_teacher(path: Path, time_density: dict | None = None) -> Teacher:
    """The UNet of a Stable Diffusion pipeline directory, frozen, with a DDPMScheduler of its schedule
    (or the transformer of a flow-matching one, load_flow_teacher)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from aria_hpc.models.pipeline import read_layout

    layout = read_layout(path)
    if layout.family == "sd3":
        return load_flow_teacher(layout, time_density or {})
    config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    # the training schedule only: sampler-specific keys (PNDM's skip_prk_steps, ...) do not apply
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
            "rescale_betas_zero_snr", "timestep_spacing", "steps_offset", "clip_sample", "clip_sample_range",
            "thresholding", "sample_max_value")
    # latents are not confined to [-1, 1]: no x0 clipping unless the pipeline's own config asks for it
    scheduler = DDPMScheduler.from_config({"clip_sample": False, **{k: v for k, v in config.items() if k in keep}})
    unet = _component(UNet2DConditionModel, layout, "unet")
    return Teacher(unet, scheduler, _pipeline_meta(layout, unet), path)


def load_flow_teacher(layout, time_density: dict) -> Teacher:
    """An SD3-class pipeline's transformer, frozen, behind a FlowDenoiser on its scheduler's table."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from aria_hpc.models.flow import FlowDenoiser, FlowTime

    try:
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(layout.path / "scheduler")
    except (OSError, ValueError) as exc:
        raise UserError(f"the scheduler of the pipeline {layout.path} is not a FlowMatchEulerDiscreteScheduler "
                        f"({exc}): a flow-matching teacher needs its own") from None
    time = FlowTime.from_scheduler(scheduler, **time_density)
    transformer = _component(SD3Transformer2DModel, layout, "transformer")
    return Teacher(FlowDenoiser(transformer, time), scheduler, _pipeline_meta(layout, transformer), layout.path,
                   time=time, component="transformer")


def _component(cls, layout, name: str):
    try:
        model = cls.from_pretrained(layout.path / name, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        cause = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"the {name} of the pipeline {layout.path} cannot be loaded ({cause}): save the pipeline "
                        "again") from None
    return model.eval().requires_grad_(False)


def _pipeline_meta(layout, denoiser) -> dict:
    from aria_hpc.conditioning.encoders import pipeline_encoder_digest

    return {"world": None, "pipeline": layout.class_name, "resolution": denoiser.config.sample_size,
            "text_encoder": {"dir": str(layout.path), "digest": pipeline_encoder_digest(layout)},
            "vae_scale_factor": layout.vae_scale_factor, "xl": layout.xl}
