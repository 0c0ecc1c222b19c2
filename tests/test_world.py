"""The shapes world: deterministic renders, split bookkeeping, the prompt pool."""

import numpy as np
import pytest
from conftest import ROOT

from aria_hpc.config import load_config
from aria_hpc.errors import ConfigError
from aria_hpc.worlds.shapes import (
    ALL_COMBINATIONS,
    ATTRIBUTES,
    SPLITS,
    TEMPLATES,
    ShapesWorld,
    prompts_for,
    render,
    shapes_world,
)


def test_world_size_meets_the_spec():
    assert [len(v) for v in ATTRIBUTES.values()] >= [6, 8, 5, 2, 2]
    assert len(ALL_COMBINATIONS) == 960
    assert len(TEMPLATES) >= 8


@pytest.mark.parametrize("resolution", [16, 32])
def test_render_is_deterministic_and_in_range(resolution):
    for combo in ALL_COMBINATIONS[::97]:
        a, b = render(combo, resolution), render(combo, resolution)
        np.testing.assert_array_equal(a, b)
        assert a.shape == (3, resolution, resolution) and a.dtype == np.float32
        assert a.min() >= -1.0 and a.max() <= 1.0


def test_renders_differ_by_every_attribute():
    base = ALL_COMBINATIONS[0]
    for name, values in ATTRIBUTES.items():
        other = type(base)(**{**base.__dict__, name: values[1]})
        assert np.abs(render(base) - render(other)).max() > 0.2, name


def test_prompt_pool_is_large_distinct_and_names_the_attributes():
    world = ShapesWorld()
    assert len(world.prompts) >= 10_000 and len(set(world.prompts)) == len(world.prompts)
    for combo in ALL_COMBINATIONS[::61]:
        prompts = prompts_for(combo)
        assert len(set(prompts)) >= 8
        for p in prompts:
            assert combo.colour in p and combo.shape in p and combo.background in p
    assert " a orange" not in " ".join(world.prompts) and " a upper" not in " ".join(world.prompts)


def test_split_bookkeeping():
    world = ShapesWorld()
    images, ids = world.paired_set()
    splits = world.combination_splits
    assert images.shape == (len(ids), 3, 16, 16)
    counts = np.bincount(ids, minlength=960)
    assert (counts[splits == SPLITS.index("unseen")] == 0).all()  # no unseen combination has an image
    under = counts[splits == SPLITS.index("under")]
    assert (under >= 1).all() and (under <= 2).all()
    assert (counts[splits == SPLITS.index("seen")] == world.seen_images).all()
    assert {world.split_of(ALL_COMBINATIONS[c]) for c in np.flatnonzero(counts == 0)} == {"unseen"}
    # Unseen prompts are in the pool all the same.
    unseen_prompts = np.isin(world.prompt_combination, np.flatnonzero(splits == SPLITS.index("unseen")))
    assert unseen_prompts.sum() == (splits == 2).sum() * len(TEMPLATES) > 0
    # Images of one combination differ (jitter), the first is the centred render.
    first = np.flatnonzero(ids == ids[0])
    np.testing.assert_array_equal(images[first[0]], render(ALL_COMBINATIONS[ids[0]]))
    assert np.abs(images[first[0]] - images[first[1]]).max() > 0


def test_world_config_errors():
    with pytest.raises(ConfigError, match="'purple blob' is not"):
        load_config(None, ["world.unseen_pairs=[purple blob]"])
    with pytest.raises(ConfigError, match="overlap"):
        load_config(None, ["world.unseen_pairs=[red circle]", "world.under_pairs=[red circle]"])
    with pytest.raises(ConfigError, match="under_images"):
        load_config(None, ["world.under_images=3"])


REGIMES = sorted((ROOT / "configs" / "regimes").glob("*.yaml"))


@pytest.mark.parametrize("path", REGIMES, ids=lambda p: p.stem)
def test_regimes_resolve_and_keep_every_heldout_combination_image_free(path):
    cfg = load_config(path)
    world = shapes_world(cfg.world)
    _, combos = world.paired_set()
    with_images = set(combos.tolist())
    unseen = {i for i, s in enumerate(world.combination_splits) if SPLITS[s] == "unseen"}
    assert unseen and not unseen & with_images
    for i in unseen:  # a held-out concept means every combination with it, not some of them
        c = ALL_COMBINATIONS[i]
        assert world.is_heldout_concept(c) or f"{c.colour} {c.shape}" in world.unseen_pairs
    held = [i for i, c in enumerate(ALL_COMBINATIONS) if world.is_heldout_concept(c)]
    assert all(i in unseen for i in held)
    # the pool is every combination's paraphrases (fewer for a diluted concept) and matches the labels
    assert len(world.prompts) == len(world.prompt_combination) == len(set(world.prompts))
    captions = world.caption_ids(combos[:5])
    assert (world.prompt_combination[captions] == combos[:5, None]).all()
    if cfg.world.heldout_share:
        assert 0 < world.heldout_pool_share <= cfg.world.heldout_share
        assert world.heldout_paraphrases < len(TEMPLATES)
        ids = np.flatnonzero(np.isin(world.prompt_combination, held))
        texts = [world.prompts[j] for j in ids]
        assert len({t.split(" ")[0] for t in texts}) > 3  # a rotating subset of templates, not one wording


def test_dilution_sets_the_share_and_configs_inherit_their_base(tmp_path):
    w = ShapesWorld(unseen_pairs=(), under_pairs=(), heldout_colours=("orange",), heldout_share=0.02)
    assert w.heldout_paraphrases == 1 and w.heldout_pool_share == pytest.approx(120 / 10200)
    w = ShapesWorld(unseen_pairs=(), under_pairs=(), heldout_colours=("orange",), heldout_share=0.05)
    assert w.heldout_paraphrases == 4 and w.heldout_pool_share == pytest.approx(480 / 10560)
    assert ShapesWorld(unseen_pairs=(), under_pairs=(), heldout_colours=("orange",)).heldout_pool_share == 0.125
    with pytest.raises(ValueError, match="held-out colour or shape"):
        ShapesWorld(heldout_colours=("orange",))  # orange square is under-represented by default
    with pytest.raises(ValueError, match="not one of"):
        ShapesWorld(heldout_shapes=("hexagon",))
    with pytest.raises(ValueError, match="set world.heldout_colours"):
        ShapesWorld(heldout_share=0.02)
    (tmp_path / "a.yaml").write_text("train: {steps: 7, lr: 0.5}\nseed: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {steps: 9}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.train.steps == 9 and cfg.train.lr == 0.5 and cfg.seed == 3
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "b.yaml")
