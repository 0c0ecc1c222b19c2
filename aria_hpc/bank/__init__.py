"""The teacher bank: teacher outputs cached in HDF5 shards (docs/design.md section 5).

Importing the package imports nothing: `plan` is pure NumPy; `reader`, `writer` and `sources` bring
h5py and torch. The names below load their module on first use (PEP 562)."""

from aria_hpc.lazy import lazy_names

_LAZY = {"Bank": "reader", "BankBatch": "reader", "BankSource": "sources", "LiveTeacher": "sources",
         "TeacherSource": "sources", "build_bank": "writer"}
__all__ = sorted(_LAZY)
__getattr__ = lazy_names(__name__, _LAZY)
