"""Student presets applied to the real Stable Diffusion UNet configs, built on the meta device (no
weights, no memory): the parameter counts BK-SDM publishes (Kim et al. 2023, Table 1)."""

import pytest
import torch
from sd_configs import SD15_UNET, SDXL_UNET

from aria_hpc.models.students import build_student


def millions(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def meta_unet(config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


# Counted with diffusers on the meta device; BK-SDM's paper rounds them to 0.86B / 0.58B / 0.49B / 0.33B.
@pytest.mark.parametrize("preset,expected", [(None, 859.5), ("bk_base", 579.4), ("bk_small", 482.3), ("bk_tiny", 323.4)])
def test_sd15_student_sizes_match_bk_sdm(preset, expected):
    teacher = meta_unet(SD15_UNET)
    with torch.device("meta"):
        model = teacher if preset is None else build_student(preset, teacher)
    assert millions(model) == pytest.approx(expected, rel=0.005)


def test_sd15_bk_tiny_removes_the_innermost_stage_and_one_layer_per_stage():
    teacher = meta_unet(SD15_UNET)
    with torch.device("meta"):
        tiny = build_student("bk_tiny", teacher)
    assert list(tiny.config.down_block_types) == ["CrossAttnDownBlock2D"] * 3
    assert list(tiny.config.up_block_types) == ["CrossAttnUpBlock2D"] * 3
    assert tiny.mid_block is None
    assert [len(b.resnets) for b in tiny.down_blocks] == [1, 1, 1]
    assert [len(b.resnets) for b in tiny.up_blocks] == [2, 2, 2]


def test_sdxl_analogue_halves_the_transformers():
    teacher = meta_unet(SDXL_UNET)
    with torch.device("meta"):
        small = build_student("sdxl_tiny", teacher)
    assert millions(teacher) == pytest.approx(2567.5, rel=0.005)
    assert millions(small) == pytest.approx(752.8, rel=0.005)
    assert list(small.config.transformer_layers_per_block) == [1, 1, 5]
    assert small.mid_block is None
    assert len(small.down_blocks[2].attentions[0].transformer_blocks) == 5


def test_sdxl_analogue_is_initialised_from_the_teacher():
    """Built small, with real weights: every tensor whose name and shape the teacher has is the
    teacher's (an up block's last kept resnet reads a skip of another width, as in BK-SDM)."""
    from diffusers import UNet2DConditionModel

    config = dict(SDXL_UNET, block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4], norm_num_groups=8,
                  transformer_layers_per_block=[1, 2, 4], cross_attention_dim=32, addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=32 + 6 * 8, sample_size=8)
    torch.manual_seed(0)
    teacher = UNet2DConditionModel(**config)
    student = build_student("sdxl_tiny", teacher)
    state, teacher_state = student.state_dict(), teacher.state_dict()
    matching = [k for k, v in state.items() if k in teacher_state and teacher_state[k].shape == v.shape]
    assert all(torch.equal(state[k], teacher_state[k]) for k in matching)
    assert len(matching) >= 0.95 * len(state) and len(state) < len(teacher_state)
