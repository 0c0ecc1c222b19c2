"""The judge: a small CNN reading every attribute of a shapes-world image back.

Alignment of generated images is measured as the judge's per-attribute accuracy against the prompt's
combination; its penultimate features are where Frechet distances are computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aria_hpc.errors import UserError
from aria_hpc.worlds.shapes import ALL_COMBINATIONS, ATTRIBUTES, ShapesWorld, render

JUDGE_CONFIG = "judge.json"
JUDGE_WEIGHTS = "judge.safetensors"


class Judge(nn.Module):
    def __init__(self, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(  # (B, 3, H, W) -> (B, feature_dim)
            nn.Conv2d(3, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.GroupNorm(8, 2 * w), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU(),
            nn.Conv2d(2 * w, feature_dim, 3, padding=1, stride=2), nn.GroupNorm(8, feature_dim), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(values))
                                    for name, values in ATTRIBUTES.items()})
        self.width, self.feature_dim = width, feature_dim

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {name: head(f) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> np.ndarray:
        """(B, 5) predicted attribute indices in ATTRIBUTES order."""
        logits = self(images)
        return np.stack([logits[name].argmax(1).numpy() for name in ATTRIBUTES], axis=1)


def training_batch(world: ShapesWorld, rng: np.random.Generator, n: int, noise_max: float, gain: float):
    """Renders of random combinations with random offsets, noise and colour gain."""
    ids = rng.integers(0, len(ALL_COMBINATIONS), n)
    j = world.jitter_px
    images = np.stack([render(ALL_COMBINATIONS[i], world.resolution,
                              tuple(int(v) for v in rng.integers(-j, j + 1, 2))) for i in ids])
    x01 = (images + 1) / 2 * rng.uniform(1 - gain, 1 + gain, (n, 3, 1, 1))
    images = x01 * 2 - 1 + rng.uniform(0, noise_max, (n, 1, 1, 1)) * rng.standard_normal(images.shape)
    labels = np.array([ALL_COMBINATIONS[i].labels() for i in ids])
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels)


def train_judge(world: ShapesWorld, *, steps: int, batch_size: int, lr: float, noise_max: float, gain: float,
                seed: int, log=print) -> Judge:
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 0x1D6E])
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        images, labels = training_batch(world, rng, batch_size, noise_max, gain)
        logits = judge(images)
        loss = sum(nn.functional.cross_entropy(logits[name], labels[:, i]) for i, name in enumerate(ATTRIBUTES))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 250 == 0 or step + 1 == steps:
            log(f"judge step {step + 1}/{steps} loss {loss.item():.4f}")
    return judge.eval()


def attribute_accuracy(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per-attribute accuracy, their mean, and 'all' (every attribute right)."""
    correct = predicted == labels
    acc = {name: float(correct[:, i].mean()) for i, name in enumerate(ATTRIBUTES)}
    acc["mean"] = float(correct.mean())
    acc["all"] = float(correct.all(axis=1).mean())
    return acc


def save_judge(judge: Judge, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(path / JUDGE_WEIGHTS))
    (path / JUDGE_CONFIG).write_text(json.dumps({"width": judge.width, "feature_dim": judge.feature_dim,
                                                 "attributes": {k: list(v) for k, v in ATTRIBUTES.items()}}))
    return path


def load_judge(path: str | Path | None = None) -> Judge:
    from safetensors.torch import load_file

    from aria_hpc.models.teacher import ASSETS

    path = Path(path) if path else ASSETS / "shapes16" / "judge"
    if not (path / JUDGE_CONFIG).is_file() or not (path / JUDGE_WEIGHTS).is_file():
        raise UserError(f"judge directory {path} lacks {JUDGE_CONFIG} or {JUDGE_WEIGHTS}: pass one written by "
                        "`aria-hpc teacher`, or leave judge.dir unset for the shipped one")
    meta = json.loads((path / JUDGE_CONFIG).read_text())
    judge = Judge(meta["width"], meta["feature_dim"])
    judge.load_state_dict(load_file(str(path / JUDGE_WEIGHTS)))
    return judge.eval().requires_grad_(False)
