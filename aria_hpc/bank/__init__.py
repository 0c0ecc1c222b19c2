"""The teacher bank: teacher outputs cached in HDF5 shards (DESIGN.md section 6).

Importing the package imports nothing: `plan` is pure NumPy; `reader`, `writer` and `sources` bring
h5py and torch. The names below load their module on first use (PEP 562)."""

from importlib import import_module

_LAZY = {"Bank": "reader", "BankBatch": "reader", "BankSource": "sources", "LiveTeacher": "sources",
         "TeacherSource": "sources", "build_bank": "writer"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
