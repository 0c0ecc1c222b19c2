"""The stages the demo and a study run before their members train: the embedded world's embeddings
and region map under a run's own directory, each reused when it matches the config. One home, so the
demo (aria_hpc/demo.py) and the study (launch/study.py) never import each other."""

from __future__ import annotations

from pathlib import Path

from aria_hpc.config import Config


def demo_overrides(out: Path) -> list[str]:
    return [f"embed.dir={out / 'embeddings'}", f"regions.path={out / 'embeddings' / 'regions.h5'}",
            f"bank.dir={out / 'bank'}", f"launch.folder={out / 'submitit'}"]


def ensure_embeddings(cfg: Config, log, progress=None) -> str:
    """progress(text), if given, hears each embedded batch."""
    from aria_hpc.conditioning.embeddings import build_shards, open_pool_and_encoder, stores_tokens

    pool, encoder = open_pool_and_encoder(cfg)
    per_shard = -(-len(pool) // cfg.embed.shards)
    tell = (lambda index, done: progress(f"shard {index}: {done}/{per_shard} prompts")) if progress else None
    results = list(build_shards(Path(cfg.embed.dir), pool, encoder, range(cfg.embed.shards), cfg.embed.shards,
                                batch_size=cfg.text_encoder.batch_size, store_tokens=stores_tokens(cfg, pool),
                                progress=tell))
    built = sum(r.resumed_from < r.rows for r in results)
    return f"{len(pool)} prompts, {built} of {cfg.embed.shards} shard(s) built"


def ensure_regions(cfg: Config, log) -> str:
    import h5py

    from aria_hpc.build.regions import build_regions
    from aria_hpc.conditioning.embeddings import EmbeddingStore

    rc, path = cfg.regions, Path(cfg.regions.path)
    store = EmbeddingStore(cfg.embed.dir, cfg.embed.shards)
    want = {"pool_digest": store.pool.digest, "encoder_digest": store.encoder_digest, "k": rc.k,
            "niter": rc.niter, "seed": cfg.seed, "spherical": rc.spherical_metric, "threads": rc.threads}
    if rc.features == "teacher":  # the teacher and probe the signatures were computed with
        from aria_hpc.build.signatures import signature_identity

        want.update(signature_identity(cfg))
    if not rc.signature_sample or rc.features == "text":
        want["train_points"] = min(rc.train_points, len(store.pool))
    if path.is_file():
        with h5py.File(path, "r", locking=False) as f:
            same = all(_same(f.attrs.get(k), v) for k, v in want.items())
            if same and f.attrs.get("features", "text") == rc.features:
                return f"{rc.k} {rc.features} regions reused"
    build_regions(cfg, log=log)
    return f"{rc.k} {rc.features} regions computed"


def _same(a, b) -> bool:
    return a is not None and (a == b if not isinstance(b, bool) else bool(a) == b)
