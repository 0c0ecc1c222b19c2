"""The compiled extension (csrc/, built as aria_hpc._C), imported here and nowhere else; aria_hpc/_C.pyi
types it. The region statistics table (regions/table.py) holds its RegionTable; the bank reader gathers
rows from memory-mapped shards with ``gather_rows``.
"""

from __future__ import annotations

import numpy as np

from aria_hpc import _C as core


def gather_rows(src: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[i] = src[rows[i]] for C-contiguous row arrays of one dtype: one memcpy per row, GIL
    released (the bank reader's gather from memory-mapped shards straight into a batch)."""
    core.gather_rows(src, np.ascontiguousarray(rows, dtype=np.int64), out)


def cuda_compiled() -> bool:
    """Whether aria_hpc._C was built with the CUDA accumulation kernel (ARIA_CUDA=AUTO/ON + nvcc)."""
    return bool(getattr(core, "cuda_compiled", False))
