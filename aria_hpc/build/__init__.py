"""Build stages: what runs once per world and configuration, above the run context: the bank
(`aria-hpc bank`), the region map (`aria-hpc regions`), teacher signatures, and the toy world's
teacher (`aria-hpc teacher`). The names below load their module on first use (PEP 562)."""

from aria_hpc.lazy import lazy_names

_LAZY = {"build_bank": "bank", "bank_status": "bank", "check_read_only_bank": "bank", "build_regions": "regions"}
__all__ = sorted(_LAZY)
__getattr__ = lazy_names(__name__, _LAZY)
