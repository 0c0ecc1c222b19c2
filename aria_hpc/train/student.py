"""The trained module (student UNet + feature adapters), its per-rank EMA, and the export.

Shapes: x_t (B, C, H, W); cond: UNetCond (tokens (B, L, D), mask (B, L), SDXL's pooled and time
ids); block features (B, C_f, H_f, W_f).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from aria_hpc.fsio import replaced_dir


class Distilled(nn.Module):
    """Student UNet plus 1x1 adapters mapping its block outputs to the teacher's channels (feature KD)."""

    def __init__(self, student, teacher, blocks: list[str]) -> None:
        super().__init__()
        self.unet = student
        self.blocks = list(blocks)
        self._captured: dict[str, torch.Tensor] = {}
        student_ch = _block_channels(student, self.blocks)
        teacher_ch = _block_channels(teacher, self.blocks)
        self.adapters = nn.ModuleDict({
            _key(b): (nn.Identity() if student_ch[b] == teacher_ch[b] else nn.Conv2d(student_ch[b], teacher_ch[b], 1))
            for b in self.blocks})
        for b in self.blocks:
            student.get_submodule(b).register_forward_hook(self._hook(b))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self._captured[name] = output[0] if isinstance(output, tuple) else output
        return hook

    def forward(self, x_t, t, cond):
        """cond: a conditioning.unet_input.UNetCond."""
        out = self.unet(x_t, t, **cond.kwargs()).sample
        features = {b: self.adapters[_key(b)](self._captured[b]) for b in self.blocks}
        return out, features


def _key(block: str) -> str:
    return block.replace(".", "__")


def _block_channels(unet, blocks: list[str]) -> dict[str, int]:
    """Output channels of each named block, from one tiny no-grad forward."""
    if not blocks:
        return {}
    got: dict[str, int] = {}
    hooks = []
    for b in blocks:
        try:
            module = unet.get_submodule(b)
        except AttributeError:
            from aria_hpc.errors import UserError

            raise UserError(f"loss.feature_blocks: the student has no block '{b}' (a student preset without a "
                            "mid-block cannot distil mid_block features; pick another block or preset)") from None
        hooks.append(module.register_forward_hook(
            lambda _m, _i, o, b=b: got.__setitem__(b, (o[0] if isinstance(o, tuple) else o).shape[1])))
    from aria_hpc.models.unet_input import zero_cond

    cfg = unet.config
    with torch.no_grad():
        unet(torch.zeros(1, cfg.in_channels, cfg.sample_size, cfg.sample_size), torch.tensor([0]),
             **zero_cond(unet).kwargs())
    for h in hooks:
        h.remove()
    return got


def _local(p: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter: its ZeRO-3 partition, or the whole tensor."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


class StudentEMA:
    """EMA of the student's weights, kept per rank for its own shard under ZeRO-3 (fp32)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = [_local(p).detach().float().clone() for p in module.parameters()]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        current = [_local(p).float() for p in module.parameters()]
        torch._foreach_lerp_(self.params, current, 1.0 - self.decay)

    def state_dict(self) -> list[torch.Tensor]:
        return [p.cpu() for p in self.params]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        if len(state) != len(self.params) or any(a.shape != b.shape for a, b in zip(state, self.params)):
            raise ValueError("the EMA state does not match this student (another preset or ZeRO partitioning)")
        for p, s in zip(self.params, state):
            p.copy_(s)


@torch.no_grad()
def export_student(engine, ema: StudentEMA, out_dir: Path, rank: int) -> Path:
    """save_pretrained the EMA student (consolidated from ZeRO-3 shards if needed) on rank 0."""
    module = engine.module
    params = list(module.parameters())
    backup = [_local(p).detach().clone() for p in params]
    for p, e in zip(params, ema.params):
        _local(p).copy_(e.to(_local(p).dtype))
    try:
        if any(hasattr(p, "ds_tensor") for p in params):
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                if rank == 0:
                    _save_unet(module.unet, out_dir)
        elif rank == 0:
            _save_unet(module.unet, out_dir)
    finally:
        for p, b in zip(params, backup):
            _local(p).copy_(b)
    return out_dir


def _save_unet(unet, out_dir: Path) -> None:
    """save_pretrained the student in float32: the UNet, or a FlowDenoiser's transformer."""
    model = getattr(unet, "transformer", unet)
    copy = type(model).from_config(model.config)
    copy.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    with replaced_dir(out_dir) as tmp:
        copy.save_pretrained(tmp, safe_serialization=True)
