"""Students: named presets (a dict of factories, STYLE rule 4), built from the teacher's UNet config.

BK-SDM-style block removal (Kim et al. 2023): keep the teacher's stages and widths, drop resnet /
attention layers inside each stage and optionally the mid-block, and initialise every parameter
whose name and shape match the teacher's (the kept layers are the first ones of each stage).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from aria_hpc.errors import UserError


def _unet_from(teacher_config: dict, **changes):
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    config.update(changes)
    return UNet2DConditionModel.from_config(config)


def init_from_teacher(student, teacher) -> tuple[int, int]:
    """Copy every teacher tensor whose name and shape match; (copied, total) parameter tensors.
    state_dict() tensors alias the module's own, so copying into them updates the student in place."""
    teacher_state = teacher.state_dict()
    state = student.state_dict()
    copied = 0
    with torch.no_grad():
        for name, value in state.items():
            src = teacher_state.get(name)
            if src is not None and src.shape == value.shape:
                value.copy_(src)
                copied += 1
    return copied, len(state)


def block_removed(teacher, *, drop_layers: int, drop_mid: bool):
    """The teacher's architecture with `drop_layers` fewer layers per stage (at least 1 down, and
    up stages keep one more than down, as diffusers builds them) and without the mid-block if asked."""
    cfg = teacher.config
    layers = cfg.layers_per_block
    layers = [layers] * len(cfg.block_out_channels) if isinstance(layers, int) else list(layers)
    student = _unet_from(cfg, layers_per_block=[max(1, count - drop_layers) for count in layers],
                         mid_block_type=None if drop_mid else cfg.mid_block_type)
    init_from_teacher(student, teacher)
    return student


def stage_removed(teacher):
    """BK-SDM-Tiny's idea at this UNet's scale: the innermost stage (its down block, the up block
    that mirrors it) and the mid-block removed, every other stage initialised from the teacher (the
    up blocks shift down by one index). Starts measurably worse than the teacher, not from scratch."""
    cfg = teacher.config
    if len(cfg.block_out_channels) < 2:
        raise UserError("student.preset=bk_tiny needs a teacher with at least 2 stages")
    layers = cfg.layers_per_block
    student = _unet_from(cfg, block_out_channels=list(cfg.block_out_channels[:-1]),
                         down_block_types=list(cfg.down_block_types[:-1]), up_block_types=list(cfg.up_block_types[1:]),
                         layers_per_block=layers if isinstance(layers, int) else list(layers[:-1]),
                         mid_block_type=None)
    renamed = {}
    for name, value in teacher.state_dict().items():
        if name.startswith("up_blocks."):
            index, rest = name[len("up_blocks."):].split(".", 1)
            if int(index) == 0:
                continue
            name = f"up_blocks.{int(index) - 1}.{rest}"
        renamed[name] = value
    state = student.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            src = renamed.get(name)
            if src is not None and src.shape == value.shape:
                value.copy_(src)
    return student


def attention_removed(teacher, *, stages: list[int]):
    """The teacher without the mid-block and without cross-attention in the given stages (down block
    and the up block that mirrors it become plain resnet blocks). Every stage and resolution stays,
    every resnet is initialised from the teacher; text enters only through the remaining stages."""
    cfg = teacher.config
    down, up = list(cfg.down_block_types), list(cfg.up_block_types)
    for i in stages:
        down[i] = "DownBlock2D"
        up[len(up) - 1 - i] = "UpBlock2D"
    student = _unet_from(cfg, down_block_types=down, up_block_types=up, mid_block_type=None)
    init_from_teacher(student, teacher)
    return student


def narrow(teacher, *, width: float):
    """The teacher's layout at a fraction of its channel widths, from scratch (no weights match)."""
    cfg = teacher.config
    groups = cfg.norm_num_groups
    channels = [max(groups, int(round(c * width / groups)) * groups) for c in cfg.block_out_channels]
    return _unet_from(cfg, block_out_channels=channels)


PRESETS: dict[str, Callable] = {
    # BK-SDM-Base: one layer fewer per stage; BK-SDM-Small: also no mid-block.
    "bk_base": lambda teacher: block_removed(teacher, drop_layers=1, drop_mid=False),
    "bk_small": lambda teacher: block_removed(teacher, drop_layers=1, drop_mid=True),
    # BK-SDM-Tiny: also the innermost stage removed (teacher-initialised elsewhere).
    "bk_tiny": stage_removed,
    # Every stage kept; the mid-block and the innermost stage's cross-attention removed.
    "no_inner_attn": lambda teacher: attention_removed(teacher, stages=[len(teacher.config.down_block_types) - 1]),
    # Same layout, half the widths, random init (a student that cannot copy the teacher).
    "half_width": lambda teacher: narrow(teacher, width=0.5),
    # The teacher's own architecture and weights (an upper bound / sanity check).
    "copy": lambda teacher: block_removed(teacher, drop_layers=0, drop_mid=False),
}


def build_student(preset: str, teacher):
    if preset not in PRESETS:
        raise UserError(f"unknown student preset '{preset}': choose one of {', '.join(PRESETS)} (student.preset=...)")
    return PRESETS[preset](teacher)
