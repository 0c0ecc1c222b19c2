"""Region statistics, allocation and sampling for ARIA (docs/design.md section 4).

Importing the package imports nothing: `allocation` is pure NumPy; `table` wraps the C++ core's
region table (through aria_hpc/native.py, the one importer of aria_hpc._C); `sync` and `sampler`
bring the table and torch.distributed. The names below load their module on first use (PEP 562)."""

from aria_hpc.lazy import lazy_names

_LAZY = {"RegionIndex": "sampler", "draw_conditions": "sampler", "update_allocation": "sampler",
         "sync_and_fold": "sync", "RegionTable": "table"}
__all__ = sorted(_LAZY)
__getattr__ = lazy_names(__name__, _LAZY)
