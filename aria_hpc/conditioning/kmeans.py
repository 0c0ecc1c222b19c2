"""Regions of the conditioning space: k-means over pooled prompt embeddings (faiss)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aria_hpc.errors import UserError
from aria_hpc.fsio import atomic_h5, read_h5
from aria_hpc.h5doc import describe


@dataclass
class RegionMap:
    centroids: np.ndarray  # (K, D) float32
    region: np.ndarray  # (N,) int32, region of every prompt
    sizes: np.ndarray  # (K,) int64
    representatives: np.ndarray  # (K, R) int64 prompt ids nearest each centroid, -1 padded
    attrs: dict

    @property
    def k(self) -> int:
        return len(self.centroids)


def kmeans(x: np.ndarray, k: int, *, niter: int, seed: int, spherical: bool, threads: int,
           representatives: int) -> RegionMap:
    """Deterministic for a seed at a fixed thread count (faiss reduces in per-thread order)."""
    import faiss

    if k > len(x):
        raise UserError(f"regions.k={k} is larger than the pool ({len(x)} prompts): lower regions.k")
    faiss.omp_set_num_threads(threads)
    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=spherical, verbose=False,
                      max_points_per_centroid=max(256, len(x) // k + 1))
    km.train(x)
    dist, assign = km.index.search(x, 1)
    region = assign[:, 0].astype(np.int32)
    sizes = np.bincount(region, minlength=k).astype(np.int64)
    reps = np.full((k, representatives), -1, np.int64)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, nearest = index.search(km.centroids, min(len(x), max(64, 8 * representatives)))
    for r in range(k):
        mine = [j for j in nearest[r] if region[j] == r][:representatives]
        reps[r, :len(mine)] = mine
    return RegionMap(km.centroids.copy(), region, sizes, reps,
                     {"k": k, "niter": niter, "seed": seed, "spherical": spherical, "threads": threads,
                      "objective": float(km.obj[-1]) if len(km.obj) else float("nan")})


def save_regions(regions: RegionMap, path: Path, extra_attrs: dict) -> Path:
    with atomic_h5(path) as f:
        f["centroids"] = regions.centroids
        f["region"] = regions.region
        f["sizes"] = regions.sizes
        f["representatives"] = regions.representatives
        describe(f, "regions", **regions.attrs, **extra_attrs)
    return path


def load_regions(path: str | Path) -> RegionMap:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"region map {path} does not exist: run `aria-hpc regions CONFIG` first")
    with read_h5(path, "run `aria-hpc regions CONFIG` (it writes the region map again)") as f:
        return RegionMap(f["centroids"][:], f["region"][:], f["sizes"][:], f["representatives"][:],
                         dict(f.attrs))


def composition(region: np.ndarray, split: np.ndarray, k: int) -> np.ndarray:
    """(K, 4) prompt counts per region for splits seen, under, unseen and unlabelled (-1)."""
    out = np.zeros((k, 4), np.int64)
    for column, value in enumerate((0, 1, 2, -1)):
        out[:, column] = np.bincount(region[split == value], minlength=k)
    return out


def purity(comp: np.ndarray, column: int, thresholds: tuple[float, ...] = (0.5, 0.9)) -> list[dict]:
    """How well regions isolate one split group (a column of `composition`): per threshold, the
    regions whose prompts are more than that fraction of the group, and the share of the group's
    prompts those regions hold."""
    sizes = comp.sum(axis=1)
    share = np.divide(comp[:, column], sizes, out=np.zeros(len(sizes)), where=sizes > 0)
    total = max(1, int(comp[:, column].sum()))
    return [{"threshold": th, "regions": int((share > th).sum()),
             "held": float(comp[share > th, column].sum() / total)} for th in thresholds]
