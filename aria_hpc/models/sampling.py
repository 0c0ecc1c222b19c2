"""DDIM sampling from a UNet2DConditionModel, with classifier-free guidance."""

from __future__ import annotations

import torch


@torch.no_grad()
def ddim_sample(unet, train_scheduler, cond, *, steps: int, seed: int, guidance: float = 1.0, null=None,
                batch_size: int = 256, pixels: bool = True) -> torch.Tensor:
    """Samples (B, C, H, W) for a UNetCond of B prompts: images clamped to [-1, 1], or (pixels=False)
    latents as they come.

    DDIM with trailing timestep spacing, built from the training scheduler's config. Guidance 1.0
    (the default) needs no unconditional pass; above 1, classifier-free guidance with `null` (the
    null text's one-row UNetCond): uncond + guidance * (cond - uncond), as diffusers' pipelines do.
    """
    from diffusers import DDIMScheduler

    from aria_hpc.models.unet_input import UNetCond

    sched = DDIMScheduler.from_config(train_scheduler.config, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    cfg = unet.config
    gen = torch.Generator().manual_seed(seed)
    out = []
    if guidance != 1.0 and null is None:
        raise ValueError("classifier-free guidance needs the null text's condition")
    for start in range(0, len(cond), batch_size):
        c = cond[start:start + batch_size]
        b = len(c)
        both_cond = None if guidance == 1.0 else UNetCond.cat([null.expand(b), c])
        x = torch.randn((b, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=gen)
        for t in sched.timesteps:
            if guidance == 1.0:
                pred = unet(x, t, **c.kwargs()).sample
            else:
                both = unet(torch.cat([x, x]), t, **both_cond.kwargs()).sample
                uncond, cond = both.chunk(2)
                pred = uncond + guidance * (cond - uncond)
            x = sched.step(pred, t, x).prev_sample
        out.append(x.clamp(-1, 1) if pixels else x)
    return torch.cat(out)
