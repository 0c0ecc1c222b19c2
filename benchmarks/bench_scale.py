"""The conditioning space at scale: wall time and peak RSS of every stage for a pool of N prompts.

    python benchmarks/bench_scale.py [--sizes 100000 1000000 10000000] [--k 4096] [--niter 10]
                                     [--dir /tmp/aria_bench_scale] [--out benchmarks/out/scale.json]

Each (stage, N) runs in its own process, so its peak RSS (ru_maxrss) is that stage's alone. The pool
is synthetic and deterministic: generated strings in 4 text files, 1% of them repeats of an earlier
prompt. The pooled embeddings are synthetic too (384-d like all-MiniLM-L6-v2, a mixture of 4,096
Gaussian components, unit norm, fp16 in the embedding store's own shard format), so the benchmark
measures our stages, not the encoder. Stages:

- materialise: prompts.h5 from the text files, deduplicated (above pool.dedup_memory_max = 5M prompts
  the external, partition-file path);
- kmeans train / assign: regions.train_points = 1M seeded sample, K regions; assignment streams over
  the shards in chunks of 65,536; index build: the int32 order (argsort) and the region map written;
- draws: region draws per second through the memory-mapped index (RegionTable.sample + prompts_in,
  batches of 4,096), what the trainer does every step;
- plan: bank planning (plan_bank, 10^6 entries, 8 per region at least).

The growth exponent b of time ~ N^b is fitted over the sizes; N log N corresponds to b = 1 + log(log
N_max / log N_min) / log(N_max / N_min) (1.07 for 10^5..10^7). Targets at 10^7 on 2 cores / 24 GB:
peak RSS < 6 GB for every stage, b no larger than N log N's.

Separately: text-encoder throughput (all-MiniLM-L6-v2, max length 24, one thread) of TextEncoder.encode
against a plain transformers loop doing the same work, alternating pairs (timing.paired_ratio), and
the cost of encoding one training batch's prompts on the fly (no stored token states) against a
training step of the demo's student at the same batch.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM = 384
COMPONENTS = 4096
STAGES = ("materialise", "kmeans_train", "kmeans_assign", "index_build", "draws", "plan")
RSS_TARGET_GB = 6.0


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ---- synthetic inputs (not timed) -------------------------------------------------------------

def write_prompts(d: Path, n: int) -> list[str]:
    """4 text files of n prompts in all; every 100th repeats an earlier one (1% duplicates)."""
    adjectives = ["red", "small", "ancient", "shiny", "wooden", "quiet", "striped", "glass"]
    nouns = ["cat", "tower", "bicycle", "river", "lamp", "garden", "robot", "violin"]
    files = [d / f"prompts-{i}.txt" for i in range(4)]
    if all(f.exists() for f in files):
        return [str(f) for f in files]
    d.mkdir(parents=True, exist_ok=True)
    per = (n + 3) // 4
    i = 0
    for f in files:
        with open(f, "w") as out:
            lines = []
            for _ in range(min(per, n - i)):
                j = i - 50 if i % 100 == 99 else i  # a repeat of an earlier prompt (one that is no repeat)
                lines.append(f"a {adjectives[j % 8]} {nouns[(j // 8) % 8]} seen from angle {j}\n")
                i += 1
                if len(lines) >= 100_000:
                    out.writelines(lines)
                    lines.clear()
            out.writelines(lines)
    return [str(f) for f in files]


def write_embeddings(embed_dir: Path, shards: int) -> None:
    """Shards in the store's format with synthetic pooled embeddings for the materialised pool."""
    import h5py

    from aria_hpc.conditioning.embeddings import shard_name, shard_range
    from aria_hpc.conditioning.pool import PromptPool

    pool = PromptPool(embed_dir / "prompts.h5")
    n = len(pool)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(COMPONENTS, DIM)).astype(np.float32)
    for index in range(shards):
        path = embed_dir / shard_name(index, shards)
        if path.exists():
            continue
        start, stop = shard_range(n, index, shards)
        tmp = path.with_name(path.name + ".partial")
        with h5py.File(tmp, "w") as f:
            for k, v in {"pool_digest": pool.digest, "encoder_digest": "synthetic", "start": start, "stop": stop,
                         "max_length": 24, "store_tokens": False, "complete": True}.items():
                f.attrs[k] = v
            ds = f.create_dataset("pooled", (stop - start, DIM), dtype=np.float16, chunks=(4096, DIM))
            chunk_rng = np.random.default_rng([1, index])
            for a in range(0, stop - start, 262_144):
                m = min(262_144, stop - start - a)
                x = centres[chunk_rng.integers(0, COMPONENTS, m)] + chunk_rng.normal(size=(m, DIM)).astype(np.float32) * 0.7
                ds[a:a + m] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
        tmp.rename(path)


# ---- one stage in this process --------------------------------------------------------------

def run_stage(stage: str, n: int, work: Path, k: int, niter: int) -> dict:
    from aria_hpc.conditioning.embeddings import EmbeddingStore
    from aria_hpc.conditioning.kmeans import kmeans_rows, load_regions, save_regions
    from aria_hpc.conditioning.pool import PromptPool, materialise_pool

    embed_dir, shards = work / "emb", max(1, n // 1_000_000)
    out: dict = {}
    t0 = time.perf_counter()
    if stage == "materialise":
        files = write_prompts(work / "text", n)
        t0 = time.perf_counter()
        pool = PromptPool(materialise_pool(embed_dir, files, "prompt", None))
        out.update(prompts=len(pool), duplicates=pool.dropped["duplicate"])
    elif stage == "kmeans":  # train + assign + index build, timed apart (one process: one peak RSS)
        write_embeddings(embed_dir, shards)
        store = EmbeddingStore(embed_dir, shards)
        timings: dict = {}
        t0 = time.perf_counter()
        regions = kmeans_rows(store.pooled_rows(), k, niter=niter, seed=0, spherical=True, threads=2,
                              representatives=3, train_points=1_000_000, chunk_rows=65536, timings=timings)
        t1 = time.perf_counter()
        save_regions(regions, work / "regions.h5", {"pool_digest": store.pool.digest})
        out.update(kmeans_train_s=timings["train_s"], kmeans_assign_s=timings["assign_s"],
                   index_build_s=time.perf_counter() - t1, nonempty_regions=int((regions.sizes > 0).sum()),
                   train_points=int(regions.attrs["train_points"]), dim=int(regions.centroids.shape[1]),
                   map_bytes_per_prompt=(regions.region.dtype.itemsize + np.dtype(np.int32 if n < 2**31 else np.int64).itemsize))
    elif stage == "draws":
        from aria_hpc.regions.sampler import RegionIndex, draw_conditions
        from aria_hpc.regions.table import RegionTable

        regions = load_regions(work / "regions.h5")
        index = RegionIndex(regions.region, k, regions.order, regions.sizes)
        table = RegionTable(k, index.base)
        t0 = time.perf_counter()
        draws, steps = 0, 0
        while time.perf_counter() - t0 < 5.0:
            draw_conditions(table, index, 4096, seed=0, rank=0, step=steps)
            draws, steps = draws + 4096, steps + 1
        out.update(draws_per_s=draws / (time.perf_counter() - t0))
    elif stage == "plan":
        from aria_hpc.bank.plan import RCSchedule, plan_bank

        regions = load_regions(work / "regions.h5")
        rng = np.random.default_rng(0)
        captions = rng.integers(0, len(regions.region), (100_000, 1))
        cond = RCSchedule(captions, regions.region, 1000, 5.0, 0.1, regions.order, regions.sizes)
        plan = plan_bank(cond, entries=1_000_000, min_per_region=8, seed=0)
        out.update(entries=int(len(plan["entry"])),
                   column_bytes_per_entry=int(sum(v.dtype.itemsize for v in plan.values())))
    out.update(wall_s=time.perf_counter() - t0, peak_rss_gb=peak_rss_gb())
    return out


def child(stage: str, n: int, work: Path, k: int, niter: int) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", stage, "--n", str(n), "--dir", str(work), "--k", str(k),
                          "--niter", str(niter)], capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"stage {stage} at N={n} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- encoder throughput, and encoding on the fly against a training step ----------------------

def encoder_throughput(repeats: int) -> dict:
    import torch
    from timing import paired_ratio
    from transformers import AutoModel, AutoTokenizer

    from aria_hpc.conditioning.encoders import TextEncoder

    torch.set_num_threads(1)
    prompts = [f"a watercolour painting of a {w} number {i}" for i, w in enumerate(["fox", "barn", "cloud", "kite"] * 256)]
    ours = TextEncoder(max_length=24)
    tok = AutoTokenizer.from_pretrained(ours.model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(ours.model_dir, local_files_only=True).eval()

    def plain():
        for s in range(0, len(prompts), 256):
            b = tok(prompts[s:s + 256], padding="max_length", truncation=True, max_length=24, return_tensors="pt")
            with torch.no_grad():
                h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()

    ours_s, plain_s, speedup = paired_ratio(lambda: ours.encode(prompts, 256), plain, repeats)
    return {"prompts": len(prompts), "ours_prompts_per_s_per_core": len(prompts) / ours_s,
            "plain_prompts_per_s_per_core": len(prompts) / plain_s, "ours_over_plain_time": 1 / speedup}


def encode_vs_step(batch: int, repeats: int) -> dict:
    """Encoding a batch's prompts (MiniLM, 2 threads) against one optimizer step of the demo's student."""
    import torch
    from timing import median_seconds

    from aria_hpc.conditioning.encoders import TextEncoder
    from aria_hpc.models.students import build_student
    from aria_hpc.models.teacher import load_teacher
    from aria_hpc.models.unet_input import UNetCond

    torch.set_num_threads(2)
    enc = TextEncoder(max_length=24)
    prompts = [f"a blue ring, shape number {i}" for i in range(batch)]
    teacher = load_teacher().unet
    student = build_student("no_inner_attn", teacher).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    c = teacher.config
    x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size)
    t = torch.randint(0, 1000, (batch,))
    e = enc.encode(prompts)
    cond = UNetCond(torch.from_numpy(e.tokens), torch.from_numpy(e.mask))

    def step():
        with torch.no_grad():
            target = teacher(x, t, **cond.kwargs()).sample
        loss = (student(x, t, **cond.kwargs()).sample - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    encode_s = median_seconds(lambda: enc.encode(prompts), repeats)
    step_s = median_seconds(step, repeats)
    return {"batch": batch, "encode_s": encode_s, "step_s": step_s, "encode_over_step": encode_s / step_s}


def fit_exponent(sizes: list[int], seconds: list[float]) -> float | None:
    if len(sizes) < 2 or min(seconds) <= 0:
        return None
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/aria_bench_scale")
    ap.add_argument("--out", default="benchmarks/out/scale.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    if args.child:
        print(json.dumps(run_stage(args.child, args.n, Path(args.dir), args.k, args.niter)))
        return 0

    rows: dict[int, dict] = {}
    for n in args.sizes:
        work = Path(args.dir) / f"n{n}"
        r = {"materialise": child("materialise", n, work, args.k, args.niter),
             "kmeans": child("kmeans", n, work, args.k, args.niter)}
        r["draws"] = child("draws", n, work, args.k, args.niter)
        r["plan"] = child("plan", n, work, args.k, args.niter)
        rows[n] = r
        print(f"N={n:,}: done", flush=True)

    def seconds(r: dict, stage: str) -> float:
        return {"materialise": r["materialise"]["wall_s"], "kmeans_train": r["kmeans"]["kmeans_train_s"],
                "kmeans_assign": r["kmeans"]["kmeans_assign_s"], "index_build": r["kmeans"]["index_build_s"],
                "draws": 4096 / r["draws"]["draws_per_s"], "plan": r["plan"]["wall_s"]}[stage]

    def rss(r: dict, stage: str) -> float:
        return r[{"kmeans_train": "kmeans", "kmeans_assign": "kmeans", "index_build": "kmeans"}.get(stage, stage)]["peak_rss_gb"]

    sizes = list(rows)
    nlogn = 1 + math.log(math.log(sizes[-1]) / math.log(sizes[0])) / math.log(sizes[-1] / sizes[0]) if len(sizes) > 1 else None
    print(f"\n{'stage':<14}" + "".join(f"{'N=' + format(n, ','):>26}" for n in sizes) + f"{'exponent b':>12}")
    print(f"{'':<14}" + "".join(f"{'seconds / peak RSS GB':>26}" for _ in sizes))
    table = {}
    for stage in STAGES:
        secs = [seconds(rows[n], stage) for n in sizes]
        b = fit_exponent(sizes, secs)
        table[stage] = {"seconds": secs, "peak_rss_gb": [rss(rows[n], stage) for n in sizes], "exponent": b}
        cells = "".join(f"{s:>16.3g} / {rss(rows[n], stage):>6.2f}" for s, n in zip(secs, sizes))
        print(f"{stage:<14}{cells}{'' if b is None else format(b, '>12.2f')}")
    print(f"(draws: seconds per batch of 4,096 draws; {rows[sizes[-1]]['draws']['draws_per_s']:,.0f} draws/s at N={sizes[-1]:,})")
    if nlogn:
        print(f"N log N over these sizes is b = {nlogn:.2f}")
    largest = sizes[-1]
    worst = max(rss(rows[largest], s) for s in STAGES)
    print(f"peak RSS at N={largest:,}: {worst:.2f} GB (target < {RSS_TARGET_GB} GB)")

    enc = encoder_throughput(args.repeats)
    print(f"\nencoder (all-MiniLM-L6-v2, max length 24, 1 thread): ours {enc['ours_prompts_per_s_per_core']:.0f} "
          f"prompts/s, plain transformers {enc['plain_prompts_per_s_per_core']:.0f} prompts/s "
          f"(ours takes {enc['ours_over_plain_time']:.3f}x the plain loop's time; alternating pairs)")
    fly = encode_vs_step(32, args.repeats)
    print(f"encoding a batch of {fly['batch']} prompts on the fly: {fly['encode_s'] * 1e3:.1f} ms against a training "
          f"step of {fly['step_s'] * 1e3:.1f} ms ({fly['encode_over_step']:.2f}x; 2 threads)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sizes": sizes, "k": args.k, "niter": args.niter, "rows": {str(n): rows[n] for n in sizes},
                               "table": table, "nlogn_exponent": nlogn, "encoder": enc, "encode_vs_step": fly,
                               "machine": platform.processor() or platform.machine()}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
