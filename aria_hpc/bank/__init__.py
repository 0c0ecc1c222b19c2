"""The teacher bank: teacher outputs cached in HDF5 shards (docs/design.md section 5).

Importing the package imports nothing: `plan` is pure NumPy; `reader` and `writer` bring h5py and
torch. Building a bank is a stage above the run context (aria_hpc/build/bank.py); training sources
are aria_hpc/train/sources.py. The names below load their module on first use (PEP 562)."""

from aria_hpc.lazy import lazy_names

_LAZY = {"Bank": "reader", "BankBatch": "reader"}
__all__ = sorted(_LAZY)
__getattr__ = lazy_names(__name__, _LAZY)
