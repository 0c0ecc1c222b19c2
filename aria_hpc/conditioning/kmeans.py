"""Regions of the conditioning space: k-means over pooled prompt embeddings (faiss)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aria_hpc.errors import UserError
from aria_hpc.fsio import read_h5
from aria_hpc.h5doc import describe
from aria_hpc.integrity import sealed_h5


@dataclass
class RegionMap:
    centroids: np.ndarray  # (K, D) float32
    region: np.ndarray  # (N,) int32, region of every prompt
    sizes: np.ndarray  # (K,) int64
    representatives: np.ndarray  # (K, R) int64 prompt ids nearest each centroid, -1 padded
    attrs: dict
    order: np.ndarray | None = None  # (N,) int32 prompt ids grouped by region (stable), as saved

    @property
    def k(self) -> int:
        return len(self.centroids)


class ArrayRows:
    """An in-memory (N, D) array as a row source (what `kmeans_rows` reads from)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.x[ids]

    def chunks(self, rows: int):
        for start in range(0, len(self.x), rows):
            yield start, self.x[start:start + rows]


def train_sample_ids(n: int, train_points: int, seed: int) -> np.ndarray:
    """The prompts k-means trains on: all of them up to train_points, else a seeded uniform sample
    without replacement, in pool order."""
    if n <= train_points:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 0x4B4D]).choice(n, train_points, replace=False))


def train_centroids(source, k: int, *, niter: int, seed: int, spherical: bool, threads: int,
                    train_points: int = 1 << 62) -> tuple[np.ndarray, dict]:
    """k-means centroids (K, D) trained on a seeded sample of at most train_points rows, and their
    attrs. Deterministic for a seed at a fixed thread count (faiss reduces in per-thread order)."""
    import faiss

    n = len(source)
    if k > n:
        raise UserError(f"regions.k={k} is larger than the pool ({n} prompts): lower regions.k")
    faiss.omp_set_num_threads(threads)
    sample = np.ascontiguousarray(source.rows(train_sample_ids(n, train_points, seed)), dtype=np.float32)
    km = faiss.Kmeans(sample.shape[1], k, niter=niter, seed=seed, spherical=spherical, verbose=False,
                      max_points_per_centroid=max(256, len(sample) // k + 1))
    km.train(sample)
    return km.centroids.copy(), {"k": k, "niter": niter, "seed": seed, "spherical": spherical, "threads": threads,
                                 "train_points": int(min(n, train_points)),
                                 "objective": float(km.obj[-1]) if len(km.obj) else float("nan")}


@dataclass
class Assignment:
    """Rows [start, stop) assigned to regions: their region ids and the R nearest rows seen per region."""

    start: int
    region: np.ndarray  # (stop - start,) int32
    best_d: np.ndarray  # (K, R) float32 squared distance to the centroid, inf padded
    best_i: np.ndarray  # (K, R) int64 row ids, -1 padded


def assign_chunks(centroids: np.ndarray, chunks, *, spherical: bool, threads: int, representatives: int,
                  start: int, stop: int) -> Assignment:
    """Assign the rows of (start, chunk) pairs covering [start, stop) to their nearest centroid, in
    chunks (inner product when spherical, as faiss's spherical k-means assigns, else L2)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(centroids.shape[1]) if spherical else faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    k = len(centroids)
    out = Assignment(start, np.empty(stop - start, np.int32), np.full((k, representatives), np.inf, np.float32),
                     np.full((k, representatives), -1, np.int64))
    for first, chunk in chunks:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        r = index.search(chunk, 1)[1][:, 0]
        out.region[first - start:first - start + len(chunk)] = r
        # distance of each row to its own centroid (smaller is nearer, whatever the index measures)
        dist = ((chunk - centroids[r]) ** 2).sum(1)
        _keep_nearest(out.best_d, out.best_i, r, dist, first + np.arange(len(chunk)))
    return out


def merge_assignments(centroids: np.ndarray, attrs: dict, parts: list[Assignment], n: int) -> RegionMap:
    """The region map of every row from assignments covering [0, n) (any order; the result does not
    depend on how the rows were split, so a job array gives the single-process map)."""
    k, r = parts[0].best_d.shape
    region = np.empty(n, np.int32)
    best_d, best_i = np.full((k, r), np.inf, np.float32), np.full((k, r), -1, np.int64)
    covered = 0
    for part in sorted(parts, key=lambda p: p.start):
        if part.start != covered:
            raise UserError(f"the region assignment parts leave rows {covered}..{part.start} unassigned: "
                            "run the missing `aria-hpc regions CONFIG --shard i` tasks")
        region[part.start:part.start + len(part.region)] = part.region
        covered = part.start + len(part.region)
        _keep_nearest(best_d, best_i, np.repeat(np.arange(k), r), part.best_d.ravel(), part.best_i.ravel())
    if covered != n:
        raise UserError(f"the region assignment parts cover {covered} of {n} rows: run the missing "
                        "`aria-hpc regions CONFIG --shard i` tasks")
    return RegionMap(centroids, region, np.bincount(region, minlength=k).astype(np.int64), best_i, dict(attrs))


def kmeans_rows(source, k: int, *, niter: int, seed: int, spherical: bool, threads: int, representatives: int,
                train_points: int = 1 << 62, chunk_rows: int = 1 << 16, timings: dict | None = None) -> RegionMap:
    """Train on a seeded sample, then assign every row in chunks of chunk_rows (memory: the sample,
    one chunk, and the (N,) int32 map); with every row in the sample it is exactly the in-memory
    k-means. `timings` gets train_s and assign_s."""
    import time

    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    centroids, attrs = train_centroids(source, k, niter=niter, seed=seed, spherical=spherical, threads=threads,
                                       train_points=train_points)
    t1 = time.perf_counter()
    part = assign_chunks(centroids, source.chunks(chunk_rows), spherical=spherical, threads=threads,
                         representatives=representatives, start=0, stop=len(source))
    timings.update(train_s=t1 - t0, assign_s=time.perf_counter() - t1)
    return merge_assignments(centroids, attrs, [part], len(source))


def _keep_nearest(best_d: np.ndarray, best_i: np.ndarray, region: np.ndarray, dist: np.ndarray,
                  ids: np.ndarray) -> None:
    """Merge a chunk's (region, distance, id) into the per-region R nearest, in place (ties: lower id)."""
    k, r = best_d.shape
    all_region = np.concatenate([np.repeat(np.arange(k), r), region])
    all_d = np.concatenate([best_d.ravel(), dist.astype(np.float32)])
    all_i = np.concatenate([best_i.ravel(), ids])
    order = np.lexsort((np.where(all_i < 0, np.iinfo(np.int64).max, all_i), all_d, all_region))
    all_region, all_d, all_i = all_region[order], all_d[order], all_i[order]
    first = np.searchsorted(all_region, np.arange(k))
    rank = np.arange(len(all_region)) - first[all_region]
    take = rank < r
    best_d[all_region[take], rank[take]] = all_d[take]
    best_i[all_region[take], rank[take]] = all_i[take]


def kmeans(x: np.ndarray, k: int, *, niter: int, seed: int, spherical: bool, threads: int,
           representatives: int, train_points: int = 1 << 62) -> RegionMap:
    """k-means of an in-memory array (kmeans_rows over it)."""
    return kmeans_rows(ArrayRows(x), k, niter=niter, seed=seed, spherical=spherical, threads=threads,
                       representatives=representatives, train_points=train_points)


def save_regions(regions: RegionMap, path: Path, extra_attrs: dict) -> Path:
    """regions.h5. `region` and `order` are int32 and contiguous (no chunks, no filters), so readers
    memory-map them: the ranks of a node share one copy in the page cache (8 bytes a prompt)."""
    id_type = np.int32 if len(regions.region) < 2**31 else np.int64
    with sealed_h5(path) as f:
        f["centroids"] = regions.centroids
        f["region"] = np.asarray(regions.region, dtype=np.int32)
        f["order"] = np.argsort(regions.region, kind="stable").astype(id_type)
        f["sizes"] = regions.sizes
        f["representatives"] = regions.representatives
        describe(f, "regions", **regions.attrs, **extra_attrs)
    return path


def load_regions(path: str | Path) -> RegionMap:
    from aria_hpc.integrity import verify

    path = Path(path)
    if not path.is_file():
        raise UserError(f"region map {path} does not exist: run `aria-hpc regions CONFIG` first")
    fix = "run `aria-hpc regions CONFIG` (it writes the region map again)"
    verify(path, "region map", fix)  # a damaged map is named as such, never as a bank that does not match
    with read_h5(path, fix) as f:
        region, order = (_mapped(path, f, name) for name in ("region", "order"))
        return RegionMap(f["centroids"][:], region, f["sizes"][:], f["representatives"][:], dict(f.attrs), order)


def _mapped(path: Path, f, name: str) -> np.ndarray | None:
    """A contiguous dataset as a read-only memory map of the file (read into memory when it is
    chunked or filtered, as in files written before the map was memory-mapped); None when absent."""
    if name not in f:
        return None
    ds = f[name]
    offset = ds.id.get_offset()
    if offset is None or ds.chunks is not None or ds.size == 0:
        return ds[:]
    return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)


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
