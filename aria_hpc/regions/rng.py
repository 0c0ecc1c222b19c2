"""Counter-based random numbers shared bit for bit by the C++ table and the NumPy code.

A draw is a pure function of (key, counter): ``splitmix64(key + (counter + 1) * GOLDEN)``. Keys come
from integer tuples such as (seed, rank, step, stream), never from ``hash()`` of strings, so a
resumed run makes exactly the draws an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def derive_key(*parts: int) -> int:
    """A 64-bit key from a tuple of non-negative integers, e.g. (seed, rank, step, stream)."""
    key = 0
    for part in parts:
        if part < 0:
            raise ValueError(f"key parts must be >= 0, got {part}")
        key = int(splitmix64(np.uint64((key + 0x9E3779B97F4A7C15 + (part & _MASK64)) & _MASK64)))
    return key


def counter_uniform(key: int, counters: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) with 53 random bits for the given counters (any integer array)."""
    counters = np.asarray(counters, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = splitmix64(np.uint64(key) + (counters + np.uint64(1)) * GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def uniforms(key: int, n: int) -> np.ndarray:
    """Uniforms for counters 0..n-1."""
    return counter_uniform(key, np.arange(n, dtype=np.uint64))
