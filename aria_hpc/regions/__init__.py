"""Region statistics, allocation and sampling for ARIA (DESIGN.md sections 3 and 5).

Importing the package imports nothing: `allocation` is pure NumPy; `table` is the only importer of
the C++ core (aria_hpc._C); `sync` and `sampler` bring the table and torch.distributed. The names
below load their module on first use (PEP 562)."""

from importlib import import_module

_LAZY = {"RegionIndex": "sampler", "draw_conditions": "sampler", "update_allocation": "sampler",
         "sync_and_fold": "sync", "RegionTable": "table"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
