"""The shapes world: deterministic renders, split bookkeeping, the prompt pool."""

import numpy as np
import pytest

from aria_hpc.config import load_config
from aria_hpc.errors import ConfigError
from aria_hpc.worlds.shapes import (ALL_COMBINATIONS, ATTRIBUTES, SPLITS, TEMPLATES, ShapesWorld, prompts_for,
                                    render)


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
