"""A bank's fingerprint: everything its entries were computed from (teacher weights, noise schedule,
text encoder, paired set, prompt pool, region map, sampling parameters). A bank is reused only by a
config whose fingerprint matches; the differing fields are named one by one.
"""

from __future__ import annotations

import json

from aria_hpc.config import Config
from aria_hpc.fsio import array_digest

SCHEMA_VERSION = 1


def scheduler_fingerprint(scheduler) -> str:
    """The schedule's config as JSON; diffusers' bookkeeping left out (its version, and the list of
    defaulted keys, which it builds from a set: its order differs between processes)."""
    skip = ("_diffusers_version", "_use_default_values")
    return json.dumps({k: v for k, v in dict(scheduler.config).items() if k not in skip}, sort_keys=True, default=str)


def fingerprint_diff(have: dict, want: dict) -> list[str]:
    """Names of the fingerprint fields that differ (sampling parameters named one by one)."""
    out = []
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(key)
    return out


def bank_fingerprint(cfg: Config, teacher, store, regions, image_set: str) -> dict:
    """The fingerprint of the bank `cfg` describes, from its loaded teacher, embedding store, region
    map and paired-set digest (paired.image_set_digest)."""
    from aria_hpc.fsio import directory_digest

    b = cfg.bank
    sampling = {"entries": b.entries, "shards": b.shards, "seed": cfg.seed, "lam": cfg.rc.lam,
                "null_text_prob": cfg.rc.null_text_prob, "min_per_region": b.min_per_region,
                "features": list(b.features), "space": "latent" if b.vae_dir else "pixel"}
    if teacher.time is not None:  # a flow teacher's training density decides the banked timesteps
        sampling["time"] = cfg.teacher.time_settings()
    return {
        "schema_version": SCHEMA_VERSION,
        "teacher_digest": directory_digest(teacher.path / teacher.component),
        "scheduler_config": scheduler_fingerprint(teacher.scheduler),
        "text_encoder_digest": store.encoder_digest,
        "image_set_digest": image_set,
        "prompt_pool_digest": store.pool.digest,
        "regions_digest": array_digest(regions.region),
        "dtype": "float16",
        "sampling": sampling,
    }
