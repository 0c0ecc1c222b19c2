"""What a UNet2DConditionModel is conditioned on, for a batch of prompts, in one value.

SD-1.x / 2.x and the shapes world cross-attend to token states (with their mask); SDXL also takes
`added_cond_kwargs`: the pooled embedding of its second text encoder (`text_embeds`) and six size
numbers (`time_ids`: original size, crop corner, target size), built as diffusers'
StableDiffusionXLPipeline does for an uncropped image at the UNet's own resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class UNetCond:
    tokens: torch.Tensor  # (B, L, D) token states
    mask: torch.Tensor  # (B, L) bool; all True for Stable Diffusion (it attends to the padding too)
    pooled: torch.Tensor | None = None  # (B, P) SDXL text_embeds
    time_ids: torch.Tensor | None = None  # (B, 6) SDXL size conditioning

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index) -> "UNetCond":
        return UNetCond(self.tokens[index], self.mask[index], *(None if v is None else v[index]
                                                                for v in (self.pooled, self.time_ids)))

    def to(self, device, dtype=None) -> "UNetCond":
        def move(v, floating=True):
            return None if v is None else v.to(device=device, dtype=dtype if floating else None)
        return UNetCond(move(self.tokens), move(self.mask, False), move(self.pooled), move(self.time_ids))

    def expand(self, n: int) -> "UNetCond":
        """A batch of n copies of a one-prompt condition (the null text)."""
        return UNetCond(*(None if v is None else v.expand(n, *v.shape[1:]) for v in
                          (self.tokens, self.mask, self.pooled, self.time_ids)))

    @staticmethod
    def cat(parts: list["UNetCond"]) -> "UNetCond":
        fields = zip(*((p.tokens, p.mask, p.pooled, p.time_ids) for p in parts))
        return UNetCond(*(None if vs[0] is None else torch.cat(vs) for vs in fields))

    def kwargs(self) -> dict:
        """Keyword arguments of UNet2DConditionModel.forward."""
        out = {"encoder_hidden_states": self.tokens, "encoder_attention_mask": self.mask}
        if self.pooled is not None:
            out["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return out


def sdxl_time_ids(n: int, pixels: int) -> torch.Tensor:
    """(n, 6) SDXL size conditioning of an uncropped square image of `pixels` a side: original size,
    crop top-left (0, 0), target size, the order diffusers' `_get_add_time_ids` uses."""
    return torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]], dtype=torch.float32).expand(n, 6).clone()


def zero_cond(unet, n: int = 1, length: int = 2) -> UNetCond:
    """An all-zero condition of the right widths for a UNet (for shape probes)."""
    cfg = unet.config
    tokens = torch.zeros(n, length, cfg.cross_attention_dim)
    mask = torch.ones(n, length, dtype=torch.bool)
    if cfg.get("addition_embed_type") != "text_time":
        return UNetCond(tokens, mask)
    pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    return UNetCond(tokens, mask, torch.zeros(n, pooled_dim), torch.zeros(n, 6))
