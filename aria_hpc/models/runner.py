"""The frozen teacher's forward pass, as the bank writer and the live teacher run it."""

from __future__ import annotations

import numpy as np
import torch

from aria_hpc.errors import UserError


class TeacherRunner:
    """The frozen teacher's forward pass in batches, no gradients (bf16 on GPU), with optional block features."""

    def __init__(self, context, features: list[str]) -> None:
        # context: the run context (context.RunContext) whose teacher and conditioning it runs
        self.context = context
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.unet = context.teacher.unet
        if self.device.type == "cuda":
            self.unet = self.unet.to(self.device, self.dtype)
        self.forwards = 0  # entries the teacher has computed
        self._captured: dict[str, torch.Tensor] = {}
        for name in features:
            try:
                module = self.unet.get_submodule(name)
            except AttributeError:
                raise UserError(f"bank.features: the teacher has no block '{name}' "
                                "(e.g. mid_block, down_blocks.1, up_blocks.0)") from None
            module.register_forward_hook(self._hook(name))
        self.features = list(features)

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self._captured[name] = output[0] if isinstance(output, tuple) else output
        return hook

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: np.ndarray, cond: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        dev = dict(device=self.device, dtype=self.dtype)
        out = self.unet(x_t.to(**dev), torch.from_numpy(t.astype(np.int64)).to(self.device),
                        **self.context.cond(cond).to(**dev).kwargs()).sample
        self.forwards += len(t)
        feats = {k: self._captured[k].float().cpu().numpy().astype(np.float16) for k in self.features}
        return out.float().cpu().numpy().astype(np.float16), feats
