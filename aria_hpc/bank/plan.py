"""Which (image, condition, timestep, noise) tuples a bank holds: pure NumPy, deterministic for a seed.

Every entry follows Random Conditioning's schedule: a paired image, a timestep t ~ U[0, T), and with
probability ``p_rc(t) = exp(-lam (1 - t/T))`` its caption replaced by a prompt drawn uniformly from
the pool; then null-text dropout. A top-up then gives every non-empty region at least
``min_per_region`` random-conditioned entries (timesteps drawn from RC's p(t | replaced)), so ARIA
can draw from any region. The noise of an entry is never stored: it is regenerated from its seed.

For a flow-matching teacher (`time`, a models.flow.FlowTime) the same schedule runs in flow time: t
from the teacher family's training density, p_rc(sigma) = exp(-lam (1 - sigma)), and p(t | replaced)
proportional to their product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aria_hpc.regions.allocation import rc_replace_probability
from aria_hpc.regions.rng import derive_key, splitmix64
from aria_hpc.regions.sampler import RegionIndex

NULL = -1  # condition index of the null text
COLUMNS = ("entry", "image", "cond", "region", "t", "seed", "paired")


@dataclass
class RCSchedule:
    """Random Conditioning's schedule over one paired set and pool: what entries are drawn from (the
    paired set's captions, the pool's region map) and how (p_rc(t), null-text dropout)."""

    captions: np.ndarray  # (n_images, c) prompt ids of each paired image's captions
    region_of_prompt: np.ndarray  # (N,) region of every pool prompt
    num_timesteps: int
    lam: float
    null_text_prob: float
    order: np.ndarray | None = None  # prompts grouped by region, as regions.h5 stores it (else computed)
    sizes: np.ndarray | None = None  # prompts per region, as regions.h5 stores it (else counted)
    time: object = None  # models.flow.FlowTime of a flow-matching teacher; None: t ~ U[0, T)

    def __post_init__(self) -> None:
        if not np.issubdtype(np.asarray(self.region_of_prompt[:0]).dtype, np.integer):
            self.region_of_prompt = np.asarray(self.region_of_prompt, dtype=np.int64)
        self.index = RegionIndex(self.region_of_prompt, int(self.region_of_prompt.max()) + 1, self.order, self.sizes)

    @property
    def num_regions(self) -> int:
        return self.index.num_regions

    def region_of(self, cond: np.ndarray) -> np.ndarray:
        return np.where(cond >= 0, self.region_of_prompt[np.maximum(cond, 0)], NULL).astype(np.int64)

    def prompts_in(self, regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One prompt uniformly inside each given region (regions must be non-empty)."""
        return self.index.pick(regions, rng.random(len(regions)))

    def timesteps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n training timesteps: uniform on [0, T), or the flow teacher's density."""
        return rng.integers(0, self.num_timesteps, n) if self.time is None else self.time.sample(rng, n)

    def replace_probability(self, t: np.ndarray) -> np.ndarray:
        """RC's p(caption replaced | t): exp(-lam (1 - t/T)), or exp(-lam (1 - sigma(t))) in flow time."""
        if self.time is None:
            return rc_replace_probability(t, self.num_timesteps, self.lam)
        return self.time.replace_probability(self.time.sigma(t), self.lam)

    def rc_timesteps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """t from p(t | caption replaced) ~ exp(lam t / T) on [0, T) (inverse CDF; uniform at lam = 0),
        or, in flow time, from density(t) * p_rc(sigma(t)) normalised."""
        if self.time is not None:
            return self.time.sample_replaced(rng, n, self.lam)
        u, T, lam = rng.random(n), self.num_timesteps, self.lam
        if lam == 0:
            return np.minimum((u * T).astype(np.int64), T - 1)
        s = 1 + np.log(u * (1 - np.exp(-lam)) + np.exp(-lam)) / lam
        return np.clip((s * T).astype(np.int64), 0, T - 1)


def draw_entries(cond: RCSchedule, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """n tuples following RC's schedule (no entry ids or seeds yet)."""
    n_images, n_captions = cond.captions.shape
    image = rng.integers(0, n_images, n)
    t = cond.timesteps(rng, n)
    replaced = rng.random(n) < cond.replace_probability(t)
    prompt = cond.captions[image, rng.integers(0, n_captions, n)].astype(np.int64)
    prompt[replaced] = rng.integers(0, len(cond.region_of_prompt), int(replaced.sum()))
    prompt[rng.random(n) < cond.null_text_prob] = NULL
    return {"image": image, "cond": prompt, "t": t, "paired": ~replaced}


def top_up(cond: RCSchedule, rng: np.random.Generator, cols: dict[str, np.ndarray],
           min_per_region: int) -> dict[str, np.ndarray]:
    """Entries that bring every non-empty region to min_per_region random-conditioned entries."""
    random = ~cols["paired"] & (cols["cond"] >= 0)
    have = np.bincount(cond.region_of(cols["cond"][random]), minlength=cond.num_regions)
    deficit = np.where(cond.index.sizes > 0, np.maximum(0, min_per_region - have), 0)
    regions = np.repeat(np.arange(cond.num_regions), deficit)
    m = len(regions)
    return {"image": rng.integers(0, len(cond.captions), m), "cond": cond.prompts_in(regions, rng),
            "t": cond.rc_timesteps(rng, m), "paired": np.zeros(m, bool)}


def entry_seeds(seed: int, entry: np.ndarray) -> np.ndarray:
    """The noise seed of each entry id (63 bits, a pure function of (seed, entry))."""
    key = np.uint64(derive_key(seed, 0x5EED))
    with np.errstate(over="ignore"):
        return (splitmix64(key + entry.astype(np.uint64)) >> np.uint64(1)).astype(np.int64)


def finish(cond: RCSchedule, cols: dict[str, np.ndarray], entry: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Typed columns with entry ids, regions and noise seeds."""
    return {"entry": entry.astype(np.int64), "image": cols["image"].astype(np.int32),
            "cond": cols["cond"].astype(np.int32), "region": cond.region_of(cols["cond"]).astype(np.int32),
            "t": cols["t"].astype(np.int32), "seed": entry_seeds(seed, entry), "paired": cols["paired"].astype(bool)}


def plan_bank(cond: RCSchedule, *, entries: int, min_per_region: int, seed: int) -> dict[str, np.ndarray]:
    """Every entry of a bank, in entry-id order (the top-up shuffled in so shards stay balanced)."""
    rng = np.random.default_rng([seed, 0xBA4C])
    cols = draw_entries(cond, rng, entries)
    extra = top_up(cond, rng, cols, min_per_region)
    cols = {k: np.concatenate([cols[k], extra[k]]) for k in cols}
    order = rng.permutation(len(cols["image"]))
    cols = {k: v[order] for k, v in cols.items()}
    return finish(cond, cols, np.arange(len(order)), seed)


def shard_rows(total: int, index: int, shards: int) -> slice:
    return slice(total * index // shards, total * (index + 1) // shards)


def region_order(cols: dict[str, np.ndarray]) -> np.ndarray:
    """The row order a shard stores: grouped by region, entry ids ascending inside a region
    (region-grouped batches read nearby rows)."""
    return np.lexsort((cols["entry"], cols["region"]))


def shard_plan(plan: dict[str, np.ndarray], index: int, shards: int) -> dict[str, np.ndarray]:
    """Shard `index` of the plan, in region order."""
    part = {k: v[shard_rows(len(plan["entry"]), index, shards)] for k, v in plan.items()}
    order = region_order(part)
    return {k: v[order] for k, v in part.items()}
