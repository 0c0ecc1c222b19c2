"""Flow-matching time for a teacher with diffusers' FlowMatchEulerDiscreteScheduler (SD3, Flux, SANA).

The rest of the project indexes time by an integer t in [0, T) (bank entries, the b(t) bins, RC's
schedule). For a flow teacher, t indexes the scheduler's own training table of noise levels, sorted
ascending: sigma(t) is the scheduler's `sigmas` (already shifted by its `shift`) read from the clean
end, so t = 0 is the least noisy and t = T - 1 pure noise, as for DDPM teachers. Then:

- x_t = (1 - sigma) x0 + sigma * noise, and the model is called with timestep sigma * T (what the
  pipelines pass);
- the target is the velocity noise - x0 (`prediction_type` "flow" / "v", the scheduler's convention);
- RC's replacement probability is p(sigma) = exp(-lam (1 - sigma)): RC's exp(-lam (1 - t/T)) with the
  noise level in place of t/T, so a noisier sample is likelier to have its caption replaced;
- training time follows the family's density over the unshifted position u = (t + 0.5) / T of the
  table: SD3's logit-normal (mean 0, std 1; its `shift` is already in the table), or uniform;
- a caption-replaced sample's t is drawn from density(t) * p(sigma(t)), normalised (exact, over the T
  table entries), the flow analogue of RC's p(t | replaced);
- b(t)'s bins are equal widths of sigma.

`FlowDenoiser` puts an SD3-class transformer behind the call the bank, the loop and eval make to a
denoiser, (x_t, t, **UNetCond.kwargs()) -> .sample, so the rest of the project indexes time and
conditions the same way for every teacher (README, section 8 of "User paths").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from aria_hpc.errors import UserError

DENSITIES = ("logit_normal", "uniform")


@dataclass(frozen=True)
class FlowTime:
    sigmas: np.ndarray  # (T,) ascending noise levels of the scheduler's training table
    density: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    @classmethod
    def from_scheduler(cls, scheduler, **density) -> FlowTime:
        """The training table of a FlowMatchEulerDiscreteScheduler (fresh from its config, so the
        inference timesteps a pipeline may have set do not leak in)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise UserError(f"flow time needs a FlowMatchEulerDiscreteScheduler, not {type(scheduler).__name__}")
        fresh = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
        sigmas = fresh.sigmas.double().numpy()[: fresh.config.num_train_timesteps]
        return cls(np.sort(sigmas), **density)

    def __post_init__(self) -> None:
        if self.density not in DENSITIES:
            raise UserError(f"flow time density '{self.density}': choose one of {', '.join(DENSITIES)}")
        if self.logit_std <= 0:
            raise UserError("flow time logit_std must be > 0")

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas)

    def sigma(self, t: np.ndarray) -> np.ndarray:
        return self.sigmas[np.asarray(t, dtype=np.int64)]

    def model_timestep(self, t: np.ndarray) -> torch.Tensor:
        """What the transformer is called with: sigma * T, as the pipelines pass it."""
        return torch.from_numpy(self.sigma(t) * self.num_timesteps).float()

    def _sigma_like(self, t, x: torch.Tensor) -> torch.Tensor:
        """sigma(t) for table indices t (an array or a tensor), shaped (B, 1, ...) to broadcast over x."""
        t = t.cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        return torch.from_numpy(self.sigma(t)).to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = (1 - sigma) x0 + sigma noise, for table indices t (an array or a tensor)."""
        s = self._sigma_like(t, x0)
        return (1 - s) * x0 + s * noise

    def task_target(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The true velocity noise - x0 of x_t = (1 - sigma) x0 + sigma noise: (x_t - x0) / sigma."""
        return (x_t - x0) / self._sigma_like(t, x_t)

    @staticmethod
    def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The flow-matching target d x_t / d sigma."""
        return noise - x0

    def weights(self) -> np.ndarray:
        """(T,) the training density over the table, normalised."""
        if self.density == "uniform":
            w = np.ones(self.num_timesteps)
        else:
            u = (np.arange(self.num_timesteps) + 0.5) / self.num_timesteps
            logit = np.log(u / (1 - u))
            w = np.exp(-0.5 * ((logit - self.logit_mean) / self.logit_std) ** 2) / (u * (1 - u))
        return w / w.sum()

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n training timesteps from the density."""
        return _inverse_cdf(self.weights(), rng, n)

    @staticmethod
    def replace_probability(sigma: np.ndarray, lam: float) -> np.ndarray:
        """RC's p(caption replaced | sigma) = exp(-lam (1 - sigma))."""
        return np.exp(-lam * (1 - np.asarray(sigma, dtype=np.float64)))

    def replaced_weights(self, lam: float) -> np.ndarray:
        """(T,) p(t | caption replaced), proportional to density(t) * p(sigma(t))."""
        w = self.weights() * self.replace_probability(self.sigmas, lam)
        return w / w.sum()

    def sample_replaced(self, rng: np.random.Generator, n: int, lam: float) -> np.ndarray:
        return _inverse_cdf(self.replaced_weights(lam), rng, n)

    def bins(self, t: np.ndarray, num_bins: int) -> np.ndarray:
        """b(t)'s bin of each timestep: equal widths of sigma in [0, 1]."""
        return np.minimum((self.sigma(t) * num_bins).astype(np.int64), num_bins - 1)


class FlowDenoiser(nn.Module):
    """An SD3-class transformer called as every stage calls a denoiser: forward(x_t, t, encoder_hidden_states,
    encoder_attention_mask, added_cond_kwargs) with t an index into the flow table, returning `.sample`
    (the velocity). The table index becomes sigma * T, what the pipelines pass as the timestep; the pooled
    text embedding (UNetCond.pooled) becomes pooled_projections; SD3 attends to every token, so the mask
    is unused. Its parameters are the transformer's, so ZeRO, the EMA and checkpoints see only those."""

    def __init__(self, transformer, time: FlowTime) -> None:
        super().__init__()
        self.transformer = transformer
        self.time = time

    @property
    def config(self):
        return self.transformer.config

    def around(self, transformer) -> FlowDenoiser:
        """Another transformer (a student) on the same flow table."""
        return FlowDenoiser(transformer, self.time)

    def forward(self, sample, timestep, encoder_hidden_states, encoder_attention_mask=None, added_cond_kwargs=None):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        index = torch.as_tensor(timestep).long().cpu().numpy().reshape(-1)
        t = self.time.model_timestep(index).to(sample.device, sample.dtype)
        out = self.transformer(hidden_states=sample, timestep=t.expand(len(sample)),
                               encoder_hidden_states=encoder_hidden_states,
                               pooled_projections=added_cond_kwargs["text_embeds"], return_dict=False)[0]
        return UNet2DConditionOutput(sample=out)


def _inverse_cdf(weights: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    cdf = np.cumsum(weights)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(weights) - 1).astype(np.int64)


@torch.no_grad()
def flow_sample(transformer, scheduler, tokens: torch.Tensor, pooled: torch.Tensor, latents: torch.Tensor, *,
                steps: int, guidance: float = 1.0, null_tokens: torch.Tensor | None = None,
                null_pooled: torch.Tensor | None = None) -> torch.Tensor:
    """Latents sampled from an SD3-class transformer with the pipeline's own flow scheduler (a fresh copy
    of its config, `steps` Euler steps) from the given initial latents, with classifier-free guidance
    uncond + guidance * (cond - uncond) on the null text's (1, L, D) / (1, P) rows, the order and
    arithmetic of StableDiffusion3Pipeline.__call__."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    sched.set_timesteps(steps)
    n, guided = len(latents), guidance > 1.0
    if guided and (null_tokens is None or null_pooled is None):
        raise ValueError("classifier-free guidance needs the null text's tokens and pooled embedding")
    if guided:
        tokens = torch.cat([null_tokens.expand(n, *null_tokens.shape[1:]), tokens])
        pooled = torch.cat([null_pooled.expand(n, *null_pooled.shape[1:]), pooled])
    x = latents
    for t in sched.timesteps:
        inp = torch.cat([x, x]) if guided else x
        v = transformer(hidden_states=inp, timestep=t.expand(len(inp)), encoder_hidden_states=tokens,
                        pooled_projections=pooled, return_dict=False)[0]
        if guided:
            uncond, cond = v.chunk(2)
            v = uncond + guidance * (cond - uncond)
        x = sched.step(v, t, x, return_dict=False)[0]
    return x


def flow_samples(denoiser: FlowDenoiser, scheduler, cond, *, steps: int, seed: int, guidance: float = 1.0,
                 null=None, batch_size: int = 256) -> torch.Tensor:
    """Latents (B, C, H, W) for a UNetCond of B prompts, `flow_sample` a batch at a time from noise drawn
    in order from one generator seeded with `seed` (the same noise for every denoiser of that shape)."""
    cfg = denoiser.config
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(cond), batch_size):
        c = cond[start:start + batch_size]
        latents = torch.randn((len(c), cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=gen)
        out.append(flow_sample(denoiser.transformer, scheduler, c.tokens, c.pooled, latents, steps=steps,
                               guidance=guidance, null_tokens=None if null is None else null.tokens,
                               null_pooled=None if null is None else null.pooled))
    return torch.cat(out)
