"""Drawing random conditions: region k ~ q (alias table), then a prompt uniformly inside region k."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from aria_hpc.regions.rng import counter_uniform, derive_key

if TYPE_CHECKING:  # the table (and the C++ core) only as a type: drawing and planning stay pure NumPy
    from aria_hpc.regions.table import RegionTable

REGION_STREAM, PROMPT_STREAM = 0, 1


class RegionIndex:
    """The region map r(j) of a prompt pool, arranged for O(1) uniform draws inside a region."""

    def __init__(self, region_of_prompt: np.ndarray, num_regions: int, order: np.ndarray | None = None,
                 sizes: np.ndarray | None = None) -> None:
        """region_of_prompt and order may be read-only memory maps (regions.h5's int32 `region` and
        `order`): then the index costs 8 bytes a prompt, shared by the ranks of a node."""
        if not np.issubdtype(np.asarray(region_of_prompt[:0]).dtype, np.integer):
            region_of_prompt = np.asarray(region_of_prompt, dtype=np.int64)
        if region_of_prompt.ndim != 1 or len(region_of_prompt) == 0:
            raise ValueError("the region map must be a non-empty 1-D array (one region per prompt)")
        if region_of_prompt.min() < 0 or region_of_prompt.max() >= num_regions:
            raise ValueError(f"the region map has ids outside [0, {num_regions})")
        self.num_regions = num_regions
        self.region_of_prompt = region_of_prompt
        # prompts grouped by region (stable: within a region, in pool order)
        self.order = np.argsort(region_of_prompt, kind="stable") if order is None else order
        if len(self.order) != len(region_of_prompt):
            raise ValueError("the region order does not cover the region map")
        # sizes as stored beside the map (no N-long temporary), else counted
        self.sizes = np.bincount(region_of_prompt, minlength=num_regions) if sizes is None else \
            np.asarray(sizes[:num_regions], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.base = self.sizes / len(region_of_prompt)  # pi_k: what RC samples implicitly

    def prompts_in(self, regions: np.ndarray, key: int) -> np.ndarray:
        """For each region id, a prompt drawn uniformly inside it (a pure function of key)."""
        return self.pick(regions, counter_uniform(key, np.arange(len(regions), dtype=np.uint64)))

    def pick(self, regions: np.ndarray, u: np.ndarray) -> np.ndarray:
        """For each region id, the prompt at uniform position u in [0, 1) among the region's prompts."""
        regions = np.asarray(regions, dtype=np.int64)
        sizes = self.sizes[regions]
        if (sizes == 0).any():
            raise ValueError("asked for a prompt from an empty region")
        within = np.minimum((u * sizes).astype(np.int64), sizes - 1)
        return self.order[self.offsets[regions] + within].astype(np.int64)


def allocating(aria, policy: str, step: int) -> bool:
    """Whether ARIA's q (rather than pi) allocates this step: policy aria, past aria.warmup_steps."""
    return policy == "aria" and step >= aria.warmup_steps


def update_allocation(table: RegionTable, aria, *, step: int, policy: str) -> np.ndarray:
    """Set the table's allocation for this step from the config's `aria` section (config.AriaConfig):
    pi for RC and during warm-up, else ARIA's q (over the base pi, or with aria.base_gamma > 0 over
    the flatter base pi^(1 - gamma), docs/design.md section 4.4)."""
    if policy not in ("rc", "aria"):
        raise ValueError(f"no random-condition allocation for policy '{policy}'")
    if not allocating(aria, policy, step):
        table.set_probabilities(table.base)
        return table.base
    return table.probabilities(aria.alpha, aria.eps, aria.base_gamma)


def region_key(seed: int, rank: int, step: int, micro: int = 0) -> int:
    """The key of a micro-step's region draws (training and simulate draw with the same one)."""
    return derive_key(seed, rank, step, micro, REGION_STREAM)


def region_sampler(table: RegionTable, *, seed: int, rank: int, step: int, micro: int = 0):
    """The region draws of one micro-step: `sample(m, stream=0)` gives m regions from the table's
    current allocation, a pure function of (q, seed, rank, step, micro, stream). Training (the loop's
    RegionTracker) and `aria-hpc simulate` (draw_conditions) both draw through it; stream > 0 is a
    second stream of the same micro-step (the draws SteeredDraws steers by q)."""
    key = region_key(seed, rank, step, micro)

    def sample(m: int, stream: int = 0) -> np.ndarray:
        return table.sample(m, derive_key(key, stream) if stream else key)
    return sample


def draw_conditions(table: RegionTable, index: RegionIndex, n: int, *, seed: int, rank: int,
                    step: int, micro: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n (region, prompt) draws for (seed, rank, step, micro) from the table's current allocation:
    the regions training draws at that micro-step, and a prompt uniformly inside each."""
    regions = region_sampler(table, seed=seed, rank=rank, step=step, micro=micro)(n)
    prompts = index.prompts_in(regions, derive_key(seed, rank, step, micro, PROMPT_STREAM))
    return regions, prompts
