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

from aria_hpc.config import Config

import os
from pathlib import Path
from typing import Callable

import numpy as np

from aria_hpc.conditioning.kmeans import (
    Assignment,
    RegionMap,
    assign_chunks,
    merge_assignments,
    save_regions,
    train_centroids,
)
from aria_hpc.errors import UserError
from aria_hpc.fsio import atomic_h5, read_h5

CENTROIDS = "centroids.h5"


def parts_dir(cfg: Config) -> Path:
    path = Path(cfg.regions.path)
    return path.with_name(path.name + ".parts")


def part_name(index: int, shards: int) -> str:
    return f"assign-{index:05d}-of-{shards:05d}.h5"


def _store(cfg: Config):
    from aria_hpc.conditioning.embeddings import EmbeddingStore

    return EmbeddingStore(cfg.embed.dir, cfg.embed.shards)


def feature_rows(cfg: Config, store):
    """What k-means clusters (regions.features): the pooled text embeddings or the teacher signatures."""
    if cfg.regions.features == "teacher":
        from aria_hpc.build.signatures import signature_rows

        return signature_rows(cfg)
    return store.pooled_rows()


def map_attrs(cfg: Config, store) -> dict:
    """The region map's identity beyond k-means' own attrs: the pool and encoder, and for teacher
    features the teacher and probe the signatures came from."""
    extra = {"pool_digest": store.pool.digest, "encoder_digest": store.encoder_digest, "features": cfg.regions.features}
    if cfg.regions.features == "teacher":
        from aria_hpc.build.signatures import signature_identity

        extra.update(signature_identity(cfg))
    return extra


def save_centroids(cfg: Config, store=None) -> Path:
    """Train on the seeded sample and save the centroids (the array's first step)."""
    store = store or _store(cfg)
    rc = cfg.regions
    centroids, attrs = train_centroids(feature_rows(cfg, store), rc.k, niter=rc.niter, seed=cfg.seed,
                                       spherical=rc.spherical_metric,
                                       threads=rc.threads, train_points=rc.train_points)
    path = parts_dir(cfg) / CENTROIDS
    with atomic_h5(path) as f:
        f["centroids"] = centroids
        for k, v in {**attrs, **map_attrs(cfg, store)}.items():
            f.attrs[k] = v
    return path


def load_centroids(cfg: Config, store) -> tuple[np.ndarray, dict]:
    path = parts_dir(cfg) / CENTROIDS
    fix = "run `aria-hpc regions CONFIG --centroids` first"
    if not path.is_file():
        raise UserError(f"{path} does not exist: {fix}")
    with read_h5(path, fix) as f:
        centroids, attrs = f["centroids"][:], dict(f.attrs)
    if (attrs.get("pool_digest") != store.pool.digest or attrs.get("k") != cfg.regions.k
            or attrs.get("seed") != cfg.seed or attrs.get("features", "text") != cfg.regions.features):
        raise UserError(f"{path} was trained for another pool, regions.k, regions.features or seed: run `aria-hpc "
                        "regions CONFIG --centroids` again")
    extra = map_attrs(cfg, store)
    return centroids, {k: v for k, v in attrs.items() if k not in extra}


def assign_shard(cfg: Config, index: int) -> Path:
    """One array task: assign embedding shard `index` to the saved centroids, write its part."""
    from aria_hpc.conditioning.embeddings import shard_range

    store = _store(cfg)
    if not 0 <= index < cfg.embed.shards:
        raise UserError(f"--shard {index} is not one of embed.shards={cfg.embed.shards} (0..{cfg.embed.shards - 1})")
    centroids, attrs = load_centroids(cfg, store)
    rc = cfg.regions
    start, stop = shard_range(len(store.pool), index, cfg.embed.shards)
    part = assign_chunks(centroids, feature_rows(cfg, store).shard_chunks(index, rc.chunk_rows),
                         spherical=bool(attrs["spherical"]), threads=rc.threads, representatives=rc.representatives,
                         start=start, stop=stop)
    path = parts_dir(cfg) / part_name(index, cfg.embed.shards)
    with atomic_h5(path) as f:
        f["region"], f["best_d"], f["best_i"] = part.region, part.best_d, part.best_i
        f.attrs["start"], f.attrs["pool_digest"] = start, store.pool.digest
    return path


def merge_parts(cfg: Config, store=None) -> RegionMap:
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


def _assign_job(cfg: Config, index: int) -> str:
    return str(assign_shard(cfg, index))


def build_regions(cfg: Config, executor: str | None = None, log: Callable[[str], None] = print) -> RegionMap:
    """regions.h5 for cfg: in this process, or with one submitit array task per embedding shard.
    Teacher features first build the signatures they need (the same executor)."""
    import shutil

    from aria_hpc.conditioning.kmeans import kmeans_rows

    store = _store(cfg)
    rc = cfg.regions
    if rc.features == "teacher":
        from aria_hpc.build.signatures import build_signatures

        if rc.signature_sample:
            regions = sampled_teacher_regions(cfg, store, log)
            save_regions(regions, Path(rc.path), map_attrs(cfg, store))
            return regions
        forwards = build_signatures(cfg, executor, log)
        log(f"teacher signatures: {forwards} teacher forwards")
    if executor is None:
        regions = kmeans_rows(feature_rows(cfg, store), rc.k, niter=rc.niter, seed=cfg.seed,
                              spherical=rc.spherical_metric, threads=rc.threads, representatives=rc.representatives,
                              train_points=rc.train_points, chunk_rows=rc.chunk_rows)
        save_regions(regions, Path(rc.path), map_attrs(cfg, store))
        return regions
    from aria_hpc.jobs import run_array

    save_centroids(cfg, store)
    run_array(cfg, executor, _assign_job, list(range(cfg.embed.shards)), "regions", "assignment",
              "region assignment of shard {index}", log)
    regions = merge_parts(cfg, store)
    save_regions(regions, Path(rc.path), map_attrs(cfg, store))
    shutil.rmtree(parts_dir(cfg), ignore_errors=True)
    return regions


def sampled_teacher_regions(cfg: Config, store, log: Callable[[str], None] = print) -> RegionMap:
    """The sample path of teacher features: signatures of a seeded sample of regions.signature_sample
    prompts (k-means trains on them), a ridge map from the text embedding fitted on 80% of the sample
    predicts everyone else's signature, and every prompt goes to its nearest centroid (the sampled
    ones by their own signature). The map's agreement (the share of the held-back 20% whose predicted
    signature falls in the region of their true one) is kept in the map's attrs."""
    from aria_hpc.conditioning.kmeans import ArrayRows
    from aria_hpc.build.signatures import MappedRows, Prober, fit_text_map, sample_ids

    rc = cfg.regions
    ids = sample_ids(len(store.pool), rc.signature_sample, cfg.seed)
    prober = Prober(cfg)
    sig = np.concatenate([prober(ids[a:a + rc.signature_batch_size])
                          for a in range(0, len(ids), rc.signature_batch_size)])
    log(f"teacher signatures of {len(ids)} sampled prompts: {prober.forwards} teacher forwards")
    centroids, attrs = train_centroids(ArrayRows(sig), rc.k, niter=rc.niter, seed=cfg.seed, spherical=False,
                                       threads=rc.threads, train_points=rc.train_points)
    text = store.pooled_rows().rows(ids)
    fit = np.random.default_rng([cfg.seed, 0xF17]).random(len(ids)) < 0.8
    w, b = fit_text_map(text[fit], sig[fit])
    check = assign_chunks(centroids, [(0, text[~fit] @ w + b), (int((~fit).sum()), sig[~fit])], spherical=False,
                          threads=rc.threads, representatives=1, start=0, stop=2 * int((~fit).sum())).region
    half = len(check) // 2
    agreement = float((check[:half] == check[half:]).mean()) if half else float("nan")
    w, b = fit_text_map(text, sig)  # the map used: fitted on the whole sample
    part = assign_chunks(centroids, MappedRows(store.pooled_rows(), w, b, ids, sig).chunks(rc.chunk_rows),
                         spherical=False, threads=rc.threads, representatives=rc.representatives, start=0,
                         stop=len(store.pool))
    log(f"text-to-signature map: {agreement:.1%} of {half} held-back sampled prompts land in their signature's region")
    return merge_assignments(centroids, {**attrs, "map_agreement": agreement, "map_checked": half}, [part],
                             len(store.pool))


def shard_count_ok(cfg: Config) -> None:
    if os.environ.get("SLURM_ARRAY_TASK_COUNT") and int(os.environ["SLURM_ARRAY_TASK_COUNT"]) != cfg.embed.shards:
        raise UserError(f"this array has {os.environ['SLURM_ARRAY_TASK_COUNT']} tasks but embed.shards="
                        f"{cfg.embed.shards}: submit with --array=0-{cfg.embed.shards - 1}")


def summary_lines(cfg: Config, store, regions, elapsed: float) -> list[str]:
    """What `aria-hpc regions` prints about a region map: the k-means run, every region's size, split
    composition and representative prompt, and how pure the held-out and under-represented groups'
    regions are."""
    from aria_hpc.conditioning.kmeans import composition, purity

    rc = cfg.regions
    comp = composition(regions.region, store.pool.split, rc.k)
    reps = store.pool.text(regions.representatives[:, 0][regions.representatives[:, 0] >= 0])
    lines = [f"k-means ({rc.features} features): {len(store.pool)} x {regions.centroids.shape[1]} into {rc.k} regions "
             f"in {elapsed:.1f}s "
             f"(trained on {regions.attrs['train_points']}) "
             f"(objective {regions.attrs['objective']:.4g})"]
    labelled = comp[:, 3].sum() == 0
    header = f"{'region':>6} {'size':>6} " + (f"{'seen':>6} {'under':>6} {'unseen':>6} " if labelled else "")
    lines.append(header + "representative prompt")
    rep_iter = iter(reps)
    for r in range(rc.k):
        rep = next(rep_iter) if regions.representatives[r, 0] >= 0 else ""
        split_cols = f"{comp[r, 0]:>6} {comp[r, 1]:>6} {comp[r, 2]:>6} " if labelled else ""
        lines.append(f"{r:>6} {regions.sizes[r]:>6} {split_cols}{rep}")
    if labelled:  # how pure the regions of the held-out and under-represented groups are
        for column, name in ((2, "unseen"), (1, "under")):
            parts = [f">{p['threshold']:.0%} {name}: {p['regions']} regions holding {p['held']:.0%}"
                     for p in purity(comp, column)]
            lines.append(f"{name}: {comp[:, column].sum()} prompts ({comp[:, column].sum() / max(1, comp.sum()):.1%} "
                         f"of the pool); " + "; ".join(parts))
    return lines
