"""Students: named presets (a dict of factories), built from the teacher's UNet config.

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


def _layers(unet_config) -> list[int]:
    layers = unet_config.layers_per_block
    return [layers] * len(unet_config.block_out_channels) if isinstance(layers, int) else list(layers)


def block_removed(teacher, *, drop_layers: int, drop_mid: bool):
    """The teacher's architecture with `drop_layers` fewer layers per stage (at least 1 down, and
    up stages keep one more than down, as diffusers builds them) and without the mid-block if asked."""
    cfg = teacher.config
    student = _unet_from(cfg, layers_per_block=[max(1, count - drop_layers) for count in _layers(cfg)],
                         mid_block_type=None if drop_mid else cfg.mid_block_type)
    init_from_teacher(student, teacher)
    return student


# UNet2DConditionModel config keys that may hold one value per stage (SDXL sets several).
PER_STAGE_KEYS = ("attention_head_dim", "num_attention_heads", "transformer_layers_per_block", "cross_attention_dim",
                  "only_cross_attention")


def stage_removed(teacher, *, drop_layers: int = 1):
    """BK-SDM-Tiny (Kim et al. 2023, section 3): BK-SDM-Small (one layer fewer per stage, no
    mid-block) and also the innermost stage: its down block and the up block that mirrors it. On
    SD-1.x that stage is the 8x8 `DownBlock2D` / `UpBlock2D` pair without attention, so text still
    enters every remaining stage. Every kept layer is initialised from the teacher (the up blocks
    shift down by one index); the kept layers are the first ones of each stage."""
    cfg = teacher.config
    if len(cfg.block_out_channels) < 2:
        raise UserError("student.preset=bk_tiny needs a teacher with at least 2 stages")
    per_stage = {key: list(value[:-1]) for key in PER_STAGE_KEYS
                 if isinstance(value := cfg.get(key), (list, tuple)) and len(value) == len(cfg.block_out_channels)}
    student = _unet_from(cfg, **per_stage, block_out_channels=list(cfg.block_out_channels[:-1]),
                         down_block_types=list(cfg.down_block_types[:-1]), up_block_types=list(cfg.up_block_types[1:]),
                         layers_per_block=[max(1, count - drop_layers) for count in _layers(cfg)[:-1]],
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


def depth_halved(teacher):
    """The SDXL analogue of BK-SDM-Tiny: BK-SDM-Small's removals (one resnet + attention layer fewer per
    stage, no mid-block) and every transformer half as deep (SDXL's 1 / 2 / 10 blocks per stage become
    1 / 1 / 5; the first ones are kept). SDXL's innermost stage holds most of its cross-attention
    (10 transformer blocks per attention layer, against 2 in the middle stage), so removing it, as
    bk_tiny does with SD-1.x's attention-free 8x8 stage, would leave a 114M UNet with little text
    conditioning; thinning the transformers removes the same kind of parameters evenly (the idea of
    KOALA's SDXL students)."""
    cfg = teacher.config
    depth = cfg.get("transformer_layers_per_block", 1)
    depth = [depth] * len(cfg.block_out_channels) if isinstance(depth, int) else list(depth)
    student = _unet_from(cfg, layers_per_block=[max(1, count - 1) for count in _layers(cfg)], mid_block_type=None,
                         transformer_layers_per_block=[max(1, d // 2) for d in depth])
    init_from_teacher(student, teacher)
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


# ---- transformer teachers (SD3-class MMDiT, Flux-class): depth pruning --------------------------------
TRANSFORMERS = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}


def transformer_family(model) -> str | None:
    return TRANSFORMERS.get(type(model).__name__)


def depth_pruned(teacher, *, family: str, joint: Callable[[int], list[int]],
                 single: Callable[[int], list[int]] | None = None):
    """The teacher with only the transformer blocks `joint(num_layers)` (and, for Flux, the single-stream
    blocks `single(num_single_layers)`) kept, in order; every kept block and every other tensor
    (patch and time embeddings, context projections, final norm and projection) is the teacher's.
    SD3's last joint block differs from the others (it updates only the image stream, context_pre_only),
    so a student keeps it last; SD3.5's dual-attention blocks keep their kind."""
    if transformer_family(teacher) != family:
        raise UserError(f"this student preset prunes a {family.upper()}-class transformer; the teacher is "
                        f"{type(teacher).__name__}: choose a preset for it (student.preset=...)")
    cfg = {k: v for k, v in dict(teacher.config).items() if not k.startswith("_")}
    renames = {"transformer_blocks": _kept(joint, cfg["num_layers"], "joint")}
    changes = {"num_layers": len(renames["transformer_blocks"])}
    if family == "sd3":
        if renames["transformer_blocks"][-1] != cfg["num_layers"] - 1:
            raise UserError("an SD3 student keeps the teacher's last joint block (context_pre_only) as its last")
        dual = set(cfg.get("dual_attention_layers") or ())
        changes["dual_attention_layers"] = tuple(j for j, i in enumerate(renames["transformer_blocks"]) if i in dual)
    if single is not None:
        renames["single_transformer_blocks"] = _kept(single, cfg["num_single_layers"], "single-stream")
        changes["num_single_layers"] = len(renames["single_transformer_blocks"])
    student = type(teacher).from_config({**cfg, **changes})
    source = {}  # student tensor name -> teacher tensor name
    for name in student.state_dict():
        prefix, _, rest = name.partition(".")
        if prefix in renames:
            index, _, rest = rest.partition(".")
            source[name] = f"{prefix}.{renames[prefix][int(index)]}.{rest}"
        else:
            source[name] = name
    teacher_state, state = teacher.state_dict(), student.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            src = teacher_state[source[name]]
            if src.shape != value.shape:
                raise UserError(f"depth pruning: {name} has shape {tuple(value.shape)}, the teacher's "
                                f"{source[name]} {tuple(src.shape)}")
            value.copy_(src)
    return student


def _kept(rule: Callable[[int], list[int]], count: int, kind: str) -> list[int]:
    kept = sorted(set(rule(count)))
    if not kept or kept[0] < 0 or kept[-1] >= count:
        raise UserError(f"depth pruning keeps {kind} blocks {kept} of {count}")
    return kept


def every(step: int, *, last: bool = False) -> Callable[[int], list[int]]:
    """Blocks 0, step, 2 step, ... (and the last one)."""
    return lambda n: sorted(set(range(0, n, step)) | ({n - 1} if last else set()))


PRESETS: dict[str, Callable] = {
    # BK-SDM-Base: one layer fewer per stage; BK-SDM-Small: also no mid-block.
    "bk_base": lambda teacher: block_removed(teacher, drop_layers=1, drop_mid=False),
    "bk_small": lambda teacher: block_removed(teacher, drop_layers=1, drop_mid=True),
    # BK-SDM-Tiny: BK-SDM-Small without the innermost stage (teacher-initialised elsewhere).
    "bk_tiny": stage_removed,
    # The SDXL analogue of bk_tiny: bk_small with every transformer half as deep.
    "sdxl_tiny": depth_halved,
    # Every stage kept; the mid-block and the innermost stage's cross-attention removed.
    "no_inner_attn": lambda teacher: attention_removed(teacher, stages=[len(teacher.config.down_block_types) - 1]),
    # Same layout, half the widths, random init (a student that cannot copy the teacher).
    "half_width": lambda teacher: narrow(teacher, width=0.5),
    # SD3-class (MMDiT): every other joint block, the last one kept (SD3-medium: 24 -> 13 blocks).
    "sd3_half": lambda teacher: depth_pruned(teacher, family="sd3", joint=every(2, last=True)),
    # SD3-class: the first block, every third, and the last (SD3-medium: 24 -> 9 blocks).
    "sd3_third": lambda teacher: depth_pruned(teacher, family="sd3", joint=every(3, last=True)),
    # Flux-class: every double-stream block, every other single-stream block (19 + 38 -> 19 + 19).
    "flux_half_single": lambda teacher: depth_pruned(teacher, family="flux", joint=lambda n: list(range(n)),
                                                     single=every(2)),
    # Flux-class: every other double-stream and single-stream block (19 + 38 -> 10 + 19).
    "flux_half": lambda teacher: depth_pruned(teacher, family="flux", joint=every(2), single=every(2)),
    # The teacher's own architecture and weights (an upper bound / sanity check).
    "copy": lambda teacher: block_removed(teacher, drop_layers=0, drop_mid=False),
}


# The presets that prune a transformer teacher; every other one reshapes a UNet.
TRANSFORMER_PRESETS = ("sd3_half", "sd3_third", "flux_half_single", "flux_half")


def build_student(preset: str, teacher):
    """The student of a preset, from the teacher's denoiser: a UNet2DConditionModel, a transformer, or a
    flow teacher's models.flow.FlowDenoiser (the pruned transformer then comes behind one on the same table)."""
    from aria_hpc.models.flow import FlowDenoiser

    if preset not in PRESETS:
        raise UserError(f"unknown student preset '{preset}': choose one of {', '.join(PRESETS)} (student.preset=...)")
    model = teacher.transformer if isinstance(teacher, FlowDenoiser) else teacher
    transformer = transformer_family(model) is not None
    if transformer != (preset in TRANSFORMER_PRESETS):
        fits = TRANSFORMER_PRESETS if transformer else [p for p in PRESETS if p not in TRANSFORMER_PRESETS]
        raise UserError(f"student preset '{preset}' does not fit a {type(model).__name__} teacher: choose one of "
                        f"{', '.join(fits)} (student.preset=...)")
    student = PRESETS[preset](model)
    return teacher.around(student) if model is not teacher else student
