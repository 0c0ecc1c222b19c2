"""The teacher-signature variants tried before study v4 chose one (docs/study/v4/signatures.md): the
held-out group's purity of k-means regions at K = 32, 64, 256 over each feature, on one regime.

    python scripts/signature_variants.py NAME configs/regimes/REGIME.yaml [PHASE]   # embeds under runs/study/v4/PHASE/NAME

Variants: text (pooled text embedding, cosine), x0 (the teacher's x0 estimates on the probes, randomly
projected), mid (the mid-block output averaged over space), and both standardised (_z).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_hpc.build.signatures import Prober, x0_estimate  # noqa: E402
from aria_hpc.conditioning.embeddings import EmbeddingStore  # noqa: E402
from aria_hpc.conditioning.kmeans import composition, kmeans, purity  # noqa: E402
from aria_hpc.config import load_config  # noqa: E402
from aria_hpc.launch.stages import demo_overrides, ensure_embeddings  # noqa: E402


def main(name: str, regime: str, phase: str = "select") -> dict:
    torch.set_num_threads(1)
    out = Path(f"runs/study/v4/{phase}/{name}").resolve()
    cfg = load_config(regime, demo_overrides(out))
    print(ensure_embeddings(cfg, print), flush=True)
    store = EmbeddingStore(cfg.embed.dir, cfg.embed.shards)
    prober = Prober(cfg)  # its probes (and the mid-block hook of the default signature_block)
    x0s, mids = [], []
    with torch.no_grad():
        for a in range(0, len(store.pool), 256):
            ids = np.arange(a, min(a + 256, len(store.pool)))
            cond, n = prober.ctx.cond(ids), len(ids)
            px, pm = [], []
            for p, t in enumerate(prober.t):
                x_t = prober.x_t[p:p + 1].expand(n, -1, -1, -1)
                o = prober.teacher.unet(x_t, torch.full((n,), t, dtype=torch.long), **cond.kwargs()).sample.float()
                px.append(x0_estimate(o, x_t, prober.abar[p], prober.prediction).flatten(1))
                pm.append(prober._captured["block"].float().mean((2, 3)))
            x0s.append(torch.cat(px, 1).numpy())
            mids.append(torch.cat(pm, 1).numpy())
    x0, mid = np.concatenate(x0s), np.concatenate(mids)
    projection = np.random.default_rng([cfg.regions.signature_seed, 0x516]).standard_normal((x0.shape[1], 256)) / 16

    def z(a):
        return (a - a.mean(0)) / (a.std(0) + 1e-6)
    variants = {"text": (store.pooled(), True), "x0": (x0 @ projection, False), "x0_z": (z(x0) @ projection, False),
                "mid": (mid, False), "mid_z": (z(mid), False)}
    result = {}
    for variant, (features, spherical) in variants.items():
        for k in (32, 64, 256):
            regions = kmeans(np.ascontiguousarray(features, dtype=np.float32), k, niter=25, seed=0,
                             spherical=spherical, threads=1, representatives=1)
            result[f"{variant}/{k}"] = purity(composition(regions.region, store.pool.split, k), 2)
            print(name, variant, k, [(p["threshold"], p["regions"], round(p["held"], 3))
                                     for p in result[f"{variant}/{k}"]], flush=True)
    (out.parent / f"signature_variants_{name}.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main(*sys.argv[1:4])
