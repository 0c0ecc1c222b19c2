"""ARIA's side of the training loop (docs/design.md section 4): the region table and the timestep
baseline b(t), the allocation each step draws from, the region sampler a source draws with, the
importance weights, what each micro-step records, the sync every `aria.sync_every` steps, and the
fields the log record carries about regions and split groups. The loop (train/loop.py) calls it at
its phases; RC runs through it too (q = pi), the paired policy only for its statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from aria_hpc import distributed
from aria_hpc.errors import AgreedError
from aria_hpc.regions.allocation import group_view, normalise_by_baseline, sample_weights
from aria_hpc.regions.sampler import allocating, region_sampler, update_allocation
from aria_hpc.regions.sync import sync_and_fold
from aria_hpc.regions.table import RegionTable, table_digest

if TYPE_CHECKING:
    from aria_hpc.bank.reader import BankBatch
    from aria_hpc.config import AriaConfig
    from aria_hpc.context import RunContext


class RegionTracker:
    def __init__(self, aria: AriaConfig, policy: str, seed: int, ctx: RunContext) -> None:
        from aria_hpc.conditioning.kmeans import composition
        from aria_hpc.eval.evaluate import SPLIT_GROUPS, group_of

        self.aria, self.policy, self.seed, self.teacher = aria, policy, seed, ctx.teacher
        index = self.index = ctx.conditioning.index
        self.table = RegionTable(index.num_regions, base=index.base, init_estimate=aria.init_estimate)
        self.baseline = RegionTable(aria.timestep_bins)  # b(t) per timestep bin: the same EMA machinery
        # the mechanism, per split group: region composition (for draw shares and tracked discrepancy)
        split = ctx.store.pool.split
        self.groups = SPLIT_GROUPS
        self.group_comp = composition(index.region_of_prompt, split, index.num_regions)
        self.sample_group = group_of(split)  # each prompt's split group: the share of all samples per group
        self.present = [g for g in range(len(SPLIT_GROUPS)) if self.group_comp[:, g].sum() > 0]
        self.q = None
        self.allocating = False
        self.digests = None  # every rank's table digest after the last sync (world > 1)

    # ---- sample ----------------------------------------------------------------------------------
    def allocate(self, step: int) -> None:
        """This step's allocation: pi for RC and during warm-up, else ARIA's q (none for paired)."""
        if self.policy != "paired":
            self.q = update_allocation(self.table, self.aria, step=step, policy=self.policy)
        self.allocating = allocating(self.aria, self.policy, step)

    def sampler(self, rank: int, step: int, micro: int):
        """The region draws of one micro-step, or None (paired). RC draws its random conditions as
        region ~ pi, then uniformly inside the region (the same distribution as uniform over the
        pool), so ARIA with alpha = 0 is RC draw for draw. `stream` > 0: a second stream (the draws
        SteeredDraws steers by q), its own key, the same q."""
        if self.policy == "paired":
            return None
        return region_sampler(self.table, seed=self.seed, rank=rank, step=step, micro=micro)

    def weights(self, batch: BankBatch) -> np.ndarray | None:
        """pi/q importance weights of a batch's random-conditioned samples (aria.importance), else None."""
        if not (self.aria.importance and self.allocating):
            return None
        return sample_weights(batch.region, ~batch.paired & (batch.cond >= 0), self.table.base, self.q)

    # ---- track -----------------------------------------------------------------------------------
    def record(self, losses: np.ndarray, batch: BankBatch) -> None:
        """d_i = l_i / b(t_i) into the region table (conditioned samples whose bin has a baseline),
        l_i into b(t)."""
        bins = self.teacher.bins(batch.t, self.aria.timestep_bins)
        seen = self.baseline.stats()["ema_weight"] > 0
        d, ok = normalise_by_baseline(losses, bins, self.baseline.estimate(), seen)
        tracked = ok & (batch.cond >= 0)
        self.table.record(batch.region[tracked].astype(np.int64), d[tracked])
        self.baseline.record(bins.astype(np.int64), losses)

    # ---- sync ------------------------------------------------------------------------------------
    def sync(self, done: int, world: int) -> None:
        """Every aria.sync_every steps: all-reduce the raw sums, the same fold on every rank, and check
        the invariant the sync exists for (one table, the same on every rank)."""
        if done % self.aria.sync_every:
            return
        sync_and_fold([self.table], self.aria.beta)
        sync_and_fold([self.baseline], self.aria.baseline_beta)
        if world > 1:
            self.digests = distributed.all_gather_object(table_digest(self.table, self.baseline))
            if len(set(self.digests)) > 1:
                raise AgreedError(f"the region tables differ between ranks after the sync at step {done} "
                                  f"({self.digests}): a rank folded other sums; report this with the run's config")

    # ---- log -------------------------------------------------------------------------------------
    def log_fields(self, source, sample_groups: np.ndarray) -> dict:
        """The log record's region fields (every aria.region_log_every steps): estimates, allocation,
        per-region usage, per split group the draw share and tracked discrepancy, every sample's split
        group over all ranks, and the ranks' table digests."""
        table = self.table
        fields = {"region_estimate": table.estimate().round(6).tolist(), "allocation": table.q.round(6).tolist()}
        fields.update(region_usage(source, self.index.num_regions))
        if self.policy != "paired":
            share, tracked = group_view(table.q, table.estimate(), self.group_comp)
            fields["group_share"] = {self.groups[g]: round(float(share[g]), 6) for g in self.present}
            fields["group_estimate"] = {self.groups[g]: round(float(tracked[g]), 6) for g in self.present}
            fields["estimate_mean"] = round(float(table.base @ table.estimate()), 6)
        counts = sample_groups.astype(np.float64)  # every sample so far, all ranks
        distributed.all_reduce_sum_(counts)
        fields["sample_share"] = {name: round(float(c / max(1.0, counts.sum())), 6)
                                  for name, c in zip((*self.groups, "null"), counts) if c > 0}
        if self.digests is not None:
            fields["table_digests"] = self.digests
        return fields


def region_usage(source, num_regions: int) -> dict:
    """Per region, over all ranks: draws, distinct entries used, and the largest draws one entry
    served (summed, summed and maxed; in cached mode with several ranks, an entry two ranks both
    drew counts as distinct on each)."""
    usage = source.region_usage(num_regions)
    sums = np.concatenate([usage["draws"], usage["distinct"]]).astype(np.float64)
    distributed.all_reduce_sum_(sums)
    largest = distributed.all_reduce_max(usage["max_reuse"].astype(np.float64))
    return {"region_draws": sums[:num_regions].astype(int).tolist(),
            "region_distinct": sums[num_regions:].astype(int).tolist(),
            "region_max_reuse": largest.astype(int).tolist()}
