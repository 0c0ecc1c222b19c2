"""Region statistics, allocation and sampling for ARIA (DESIGN.md sections 3 and 5)."""

from aria_hpc.regions.sampler import RegionIndex, draw_conditions, update_allocation
from aria_hpc.regions.sync import sync_and_fold
from aria_hpc.regions.table import RegionTable

__all__ = ["RegionIndex", "RegionTable", "draw_conditions", "sync_and_fold", "update_allocation"]
