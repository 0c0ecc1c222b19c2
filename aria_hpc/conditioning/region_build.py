"""Building regions.h5 in one process, or as a job array over the embedding shards.

    aria-hpc regions CONFIG                      train, assign every shard, write regions.h5
    aria-hpc regions CONFIG --executor slurm     train here, one submitit array task per embedding
                                                 shard assigns it, then merge here
    aria-hpc regions CONFIG --centroids          (a hand-made array) train and save the centroids,
    sbatch --array=0-N slurm/regions_array.sbatch CONFIG    assign shard i,
    aria-hpc regions CONFIG --merge              then write regions.h5 from the parts

The parts live in `REGIONS_PATH.parts/` (centroids.h5, assign-IIIII-of-NNNNN.h5). Each task's rows,
chunks and tie-breaks are those of the single-process build, so the map is the same either way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from aria_hpc.conditioning.kmeans import (Assignment, RegionMap, assign_chunks, merge_assignments, save_regions,
                                          train_centroids)
from aria_hpc.errors import UserError
from aria_hpc.fsio import atomic_h5, read_h5

CENTROIDS = "centroids.h5"


def parts_dir(cfg) -> Path:
    path = Path(cfg.regions.path)
    return path.with_name(path.name + ".parts")


def part_name(index: int, shards: int) -> str:
    return f"assign-{index:05d}-of-{shards:05d}.h5"


def _store(cfg):
    from aria_hpc.conditioning.embeddings import EmbeddingStore

    return EmbeddingStore(cfg.embed.dir, cfg.embed.shards)


def save_centroids(cfg, store=None) -> Path:
    """Train on the seeded sample and save the centroids (the array's first step)."""
    store = store or _store(cfg)
    rc = cfg.regions
    centroids, attrs = train_centroids(store.pooled_rows(), rc.k, niter=rc.niter, seed=cfg.seed, spherical=rc.spherical,
                                       threads=rc.threads, train_points=rc.train_points)
    path = parts_dir(cfg) / CENTROIDS
    with atomic_h5(path) as f:
        f["centroids"] = centroids
        for k, v in {**attrs, "pool_digest": store.pool.digest, "encoder_digest": store.encoder_digest}.items():
            f.attrs[k] = v
    return path


def load_centroids(cfg, store) -> tuple[np.ndarray, dict]:
    path = parts_dir(cfg) / CENTROIDS
    fix = "run `aria-hpc regions CONFIG --centroids` first"
    if not path.is_file():
        raise UserError(f"{path} does not exist: {fix}")
    with read_h5(path, fix) as f:
        centroids, attrs = f["centroids"][:], dict(f.attrs)
    if attrs.get("pool_digest") != store.pool.digest or attrs.get("k") != cfg.regions.k or attrs.get("seed") != cfg.seed:
        raise UserError(f"{path} was trained for another pool, regions.k or seed: run `aria-hpc regions CONFIG "
                        "--centroids` again")
    return centroids, {k: v for k, v in attrs.items() if k not in ("pool_digest", "encoder_digest")}


def assign_shard(cfg, index: int) -> Path:
    """One array task: assign embedding shard `index` to the saved centroids, write its part."""
    from aria_hpc.conditioning.embeddings import shard_range

    store = _store(cfg)
    if not 0 <= index < cfg.embed.shards:
        raise UserError(f"--shard {index} is not one of embed.shards={cfg.embed.shards} (0..{cfg.embed.shards - 1})")
    centroids, attrs = load_centroids(cfg, store)
    rc = cfg.regions
    start, stop = shard_range(len(store.pool), index, cfg.embed.shards)
    part = assign_chunks(centroids, store.pooled_rows().shard_chunks(index, rc.chunk_rows), spherical=bool(attrs["spherical"]),
                         threads=rc.threads, representatives=rc.representatives, start=start, stop=stop)
    path = parts_dir(cfg) / part_name(index, cfg.embed.shards)
    with atomic_h5(path) as f:
        f["region"], f["best_d"], f["best_i"] = part.region, part.best_d, part.best_i
        f.attrs["start"], f.attrs["pool_digest"] = start, store.pool.digest
    return path


def merge_parts(cfg, store=None) -> RegionMap:
    store = store or _store(cfg)
    centroids, attrs = load_centroids(cfg, store)
    parts = []
    for index in range(cfg.embed.shards):
        path = parts_dir(cfg) / part_name(index, cfg.embed.shards)
        if not path.is_file():
            raise UserError(f"{path} is missing: run `aria-hpc regions CONFIG --shard {index}` (or the array again)")
        with read_h5(path, f"run `aria-hpc regions CONFIG --shard {index}` again") as f:
            if f.attrs["pool_digest"] != store.pool.digest:
                raise UserError(f"{path} was assigned for another pool: run the array again")
            parts.append(Assignment(int(f.attrs["start"]), f["region"][:], f["best_d"][:], f["best_i"][:]))
    return merge_assignments(centroids, attrs, parts, len(store.pool))


def _assign_job(cfg, index: int) -> str:
    return str(assign_shard(cfg, index))


def build_regions(cfg, executor: str | None = None, log: Callable[[str], None] = print) -> RegionMap:
    """regions.h5 for cfg: in this process, or with one submitit array task per embedding shard."""
    import shutil

    from aria_hpc.conditioning.kmeans import kmeans_rows

    store = _store(cfg)
    rc = cfg.regions
    extra = {"pool_digest": store.pool.digest, "encoder_digest": store.encoder_digest}
    if executor is None:
        regions = kmeans_rows(store.pooled_rows(), rc.k, niter=rc.niter, seed=cfg.seed, spherical=rc.spherical,
                              threads=rc.threads, representatives=rc.representatives, train_points=rc.train_points,
                              chunk_rows=rc.chunk_rows)
        save_regions(regions, Path(rc.path), extra)
        return regions
    from aria_hpc.launch.executor import make_executor

    save_centroids(cfg, store)
    ex = make_executor(cfg.launch, executor, Path(cfg.launch.folder) / "regions", "aria-regions", ranks=False)
    indices = list(range(cfg.embed.shards))
    jobs = ex.map_array(_assign_job, [cfg] * len(indices), indices)
    log(f"submitted {len(jobs)} {executor} assignment tasks ({', '.join(j.job_id for j in jobs[:4])}"
        f"{', ...' if len(jobs) > 4 else ''}); logs in {ex.folder}")
    for index, job in zip(indices, jobs):
        try:
            job.result()
        except Exception as exc:  # submitit re-raises the task's failure with its log
            raise UserError(f"region assignment of shard {index} failed in job {job.job_id}: "
                            f"{str(exc).splitlines()[-1]} (log: {job.paths.stderr})") from None
    regions = merge_parts(cfg, store)
    save_regions(regions, Path(rc.path), extra)
    shutil.rmtree(parts_dir(cfg), ignore_errors=True)
    return regions


def shard_count_ok(cfg) -> None:
    if os.environ.get("SLURM_ARRAY_TASK_COUNT") and int(os.environ["SLURM_ARRAY_TASK_COUNT"]) != cfg.embed.shards:
        raise UserError(f"this array has {os.environ['SLURM_ARRAY_TASK_COUNT']} tasks but embed.shards="
                        f"{cfg.embed.shards}: submit with --array=0-{cfg.embed.shards - 1}")
