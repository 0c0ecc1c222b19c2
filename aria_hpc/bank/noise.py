"""The noise of a bank entry is never stored: it is a pure function of the entry's seed, and x_t is
regenerated from (x0, t, seed) exactly as the bank writer made it."""

from __future__ import annotations

import numpy as np
import torch


def entry_noise(seeds: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise of each entry, a pure function of its seed."""
    gen = torch.Generator()
    return torch.stack([torch.randn(shape, generator=gen.manual_seed(int(s))) for s in seeds])


def noised_inputs(scheduler, x0: torch.Tensor, t: np.ndarray, seeds: np.ndarray) -> torch.Tensor:
    """x_t of each entry, regenerated from (x0, t, seed) exactly as the bank writer made it. scheduler:
    anything with add_noise(x0, noise, t), the teacher's noise_schedule (a DDPMScheduler or a FlowTime)."""
    noise = entry_noise(seeds, tuple(x0.shape[1:]))
    return scheduler.add_noise(x0, noise, torch.from_numpy(np.asarray(t, dtype=np.int64)))
