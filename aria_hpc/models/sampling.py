"""DDIM sampling from a UNet2DConditionModel conditioned on token states."""

from __future__ import annotations

import torch


@torch.no_grad()
def ddim_sample(unet, train_scheduler, tokens: torch.Tensor, mask: torch.Tensor, *, steps: int, seed: int,
                guidance: float = 1.0, null_tokens: torch.Tensor | None = None,
                null_mask: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] for token states (B, L, D) / mask (B, L).

    DDIM with trailing timestep spacing, built from the training scheduler's config. Guidance 1.0
    (the default) needs no unconditional pass; above 1, classifier-free guidance with the null text.
    """
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(train_scheduler.config, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    cfg = unet.config
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(tokens), batch_size):
        tok, msk = tokens[start:start + batch_size], mask[start:start + batch_size]
        b = len(tok)
        x = torch.randn((b, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=gen)
        for t in sched.timesteps:
            if guidance == 1.0:
                pred = unet(x, t, encoder_hidden_states=tok, encoder_attention_mask=msk).sample
            else:
                both = unet(torch.cat([x, x]), t,
                            encoder_hidden_states=torch.cat([null_tokens.expand_as(tok), tok]),
                            encoder_attention_mask=torch.cat([null_mask.expand_as(msk), msk])).sample
                uncond, cond = both.chunk(2)
                pred = uncond + guidance * (cond - uncond)
            x = sched.step(pred, t, x).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)
