"""Teacher-bank read throughput against a raw memory-mapped NumPy read of the same bytes, same process.

    python benchmarks/bench_bank.py [--gib 2.0] [--batches 200] [--repeats 3] [--dir /tmp/aria_bench_bank]
                                    [--out benchmarks/out/bank.json]

A bank of >= 2 GiB is written through the real shard writer (`write_shard`, manifest and all) with
SD-latent-sized entries (4 x 64 x 64 float16 = 32 KiB) whose outputs are random numbers: what is
measured is the read path, which does not depend on the values. Batches of 256 are drawn the way
training draws them (bank.draw with an ARIA region sampler over 256 regions: region-grouped random
rows), then read with `Bank.read(noised=False)` (outputs and per-entry columns). The baseline reads
the same rows, in the same order, from one .npy file of the same outputs with np.load(mmap_mode="r").
Both run warm (after one untimed pass), so this compares the code paths over the page cache.
Target (issue 4): bank >= 70% of the raw rate. Also reported: reading with x_t regenerated, and the
shipped teacher's forward time per entry, i.e. what one cache hit saves.

Integrity (bank/integrity.py): a reader verifies every shard before reading it. Timed apart from the
reads, alternating: the warm check (the stat-keyed cache in .verified.json: one stat() per shard) and
the cold one (`force`: every shard hashed, what the first open after a change costs). The verified
read rate of a run that reads these batches is n / (warm check + reads); target >= 0.9x of the
unverified n / reads.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from timing import median_seconds

from aria_hpc.bank import Bank
from aria_hpc.bank.fingerprint import SCHEMA_VERSION
from aria_hpc.bank.integrity import verify_shards
from aria_hpc.bank.manifest import shard_name, update_manifest
from aria_hpc.bank.paired import X0_FILE
from aria_hpc.bank.plan import RCSchedule, plan_bank, shard_plan
from aria_hpc.bank.writer import write_shard
from aria_hpc.fsio import array_digest

ENTRY_SHAPE = (4, 64, 64)
BATCH = 256
TARGET = 0.70
VERIFIED_TARGET = 0.90


def build(bank_dir: Path, entries: int, shards: int, regions: int) -> tuple[Bank, np.ndarray]:
    """A bank written by the real writer (random outputs), and the raw .npy of the same outputs in row order."""
    import h5py
    from diffusers import DDPMScheduler

    shutil.rmtree(bank_dir, ignore_errors=True)
    bank_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n_images, n_prompts = 2048, 200_000
    cond = RCSchedule(rng.integers(0, n_prompts, (n_images, 1)), rng.integers(0, regions, n_prompts), 1000, 5.0, 0.1)
    plan = plan_bank(cond, entries=entries, min_per_region=16, seed=0)
    x0 = rng.standard_normal((n_images, *ENTRY_SHAPE), dtype=np.float32)
    with h5py.File(bank_dir / X0_FILE, "w") as f:
        f["x0"] = x0
        f.attrs["x0_digest"] = array_digest(x0)
    fingerprint = {"schema_version": SCHEMA_VERSION, "teacher_digest": "benchmark (random outputs)",
                   "scheduler_config": json.dumps(dict(DDPMScheduler().config), default=str, sort_keys=True),
                   "text_encoder_digest": "-", "image_set_digest": "-", "prompt_pool_digest": "-",
                   "regions_digest": "-", "dtype": "float16",
                   "sampling": {"entries": entries, "shards": shards, "seed": 0, "lam": 5.0, "null_text_prob": 0.1,
                                "min_per_region": 16, "features": [], "space": "latent"}}
    raw_parts = []
    for i in range(shards):
        cols = shard_plan(plan, i, shards)
        out = rng.standard_normal((len(cols["entry"]), *ENTRY_SHAPE), dtype=np.float32).astype(np.float16)
        step = 1024
        batches = ((s, min(len(out), s + step), out[s:s + step], {}) for s in range(0, len(out), step))
        write_shard(bank_dir / shard_name(i), fingerprint, {"kind": "planned", "index": i}, cols, batches,
                    ENTRY_SHAPE)
        raw_parts.append(out)
    update_manifest(bank_dir, fingerprint)
    np.save(bank_dir / "raw.npy", np.concatenate(raw_parts))  # manifest order == shard order == bank rows
    return Bank(bank_dir), np.load(bank_dir / "raw.npy", mmap_mode="r")


def timed(fn, batches: list[np.ndarray], repeats: int) -> float:
    """Median seconds of reading all batches (after one untimed warm pass)."""
    for rows in batches:
        fn(rows)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for rows in batches:
            fn(rows)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def teacher_forward_per_entry(batch: int = 256, repeats: int = 3) -> dict:
    """The shipped shapes teacher's forward time per entry (16x16 pixels), CPU, no gradients."""
    from aria_hpc.models.teacher import load_teacher

    teacher = load_teacher()
    x = torch.randn(batch, 3, 16, 16)
    tok, mask = torch.randn(batch, 24, 384), torch.ones(batch, 24, dtype=torch.bool)
    t = torch.randint(0, 1000, (batch,))
    with torch.no_grad():
        seconds = median_seconds(lambda: teacher.unet(x, t, encoder_hidden_states=tok, encoder_attention_mask=mask),
                                 repeats)
    return {"batch": batch, "ms_per_entry": 1e3 * seconds / batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0, help="bank size in GiB of teacher outputs")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--regions", type=int, default=256)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/aria_bench_bank")
    ap.add_argument("--keep", action="store_true", help="keep the bank directory afterwards")
    ap.add_argument("--out", default="benchmarks/out/bank.json")
    args = ap.parse_args()

    entry_bytes = int(np.prod(ENTRY_SHAPE)) * 2
    entries = int(args.gib * 2**30 / entry_bytes)
    t0 = time.perf_counter()
    bank, raw = build(Path(args.dir), entries, args.shards, args.regions)
    build_s = time.perf_counter() - t0
    bank_gib = sum(p.stat().st_size for p in Path(args.dir).glob("shard-*.h5")) / 2**30

    rng = np.random.default_rng(1)
    q = rng.dirichlet(np.ones(args.regions))  # some ARIA allocation over the regions
    sampler = lambda m: rng.choice(args.regions, size=m, p=q)  # noqa: E731
    batches = [bank.draw(BATCH, rng, sampler) for _ in range(args.batches)]
    n = BATCH * args.batches
    gb = n * entry_bytes / 1e9

    rows = {}
    for _ in range(2):  # alternate, so neither side always runs second
        rows.setdefault("raw", []).append(timed(lambda r: np.asarray(raw[r]), batches, args.repeats))
        rows.setdefault("bank", []).append(timed(lambda r: bank.read(r, noised=False), batches, args.repeats))
    rows["bank + x_t"] = [timed(lambda r: bank.read(r), batches[: max(1, args.batches // 4)], 1) * 4]
    result = {name: {"seconds": min(s), "entries_per_s": n / min(s), "GB_per_s": gb / min(s)} for name, s in rows.items()}
    ratio = result["bank"]["entries_per_s"] / result["raw"]["entries_per_s"]
    metas = json.loads((Path(args.dir) / "manifest.json").read_text())["shards"]
    checks = {"warm": [], "cold": []}
    for _ in range(max(2, args.repeats)):  # alternating pairs
        t = time.perf_counter()
        assert verify_shards(Path(args.dir), metas) == 0
        checks["warm"].append(time.perf_counter() - t)
        t = time.perf_counter()
        verify_shards(Path(args.dir), metas, force=True)
        checks["cold"].append(time.perf_counter() - t)
    warm, cold = statistics.median(checks["warm"]), statistics.median(checks["cold"])
    verified_ratio = result["bank"]["seconds"] / (result["bank"]["seconds"] + warm)
    integrity = {"warm_check_s": warm, "cold_check_s": cold, "hash_GiB_per_s": bank_gib / cold,
                 "verified_vs_unverified": verified_ratio, "target": VERIFIED_TARGET,
                 "met": verified_ratio >= VERIFIED_TARGET}
    teacher = teacher_forward_per_entry()
    read_ms_16 = 1e3 / result["bank"]["entries_per_s"]  # per 32 KiB entry: an upper bound for 16x16 entries

    print(f"bank: {entries} entries of {ENTRY_SHAPE} float16 ({bank_gib:.2f} GiB in {args.shards} shards, "
          f"built in {build_s:.1f}s); {args.batches} region-grouped batches of {BATCH}")
    print(f"{'reader':<12} {'entries/s':>12} {'GB/s':>8} {'vs raw':>8}")
    for name, r in result.items():
        print(f"{name:<12} {r['entries_per_s']:>12,.0f} {r['GB_per_s']:>8.2f} "
              f"{r['entries_per_s'] / result['raw']['entries_per_s']:>8.2f}")
    print(f"target: bank >= {TARGET:.0%} of raw: {'met' if ratio >= TARGET else 'NOT met'} ({ratio:.2f})")
    print(f"integrity: warm check {1e3 * warm:.2f} ms for {len(metas)} shards (stat cache), cold check "
          f"{cold:.2f}s ({bank_gib / cold:.2f} GiB/s hashed); verified read rate {verified_ratio:.3f}x of unverified "
          f"over these {args.batches} batches: target >= {VERIFIED_TARGET}x "
          f"{'met' if verified_ratio >= VERIFIED_TARGET else 'NOT met'}")
    print(f"shipped teacher forward: {teacher['ms_per_entry']:.3f} ms per entry (batch {teacher['batch']}, CPU); "
          f"a bank read: {read_ms_16:.4f} ms per entry -> one hit saves {teacher['ms_per_entry'] / read_ms_16:.0f}x")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"entries": entries, "entry_shape": ENTRY_SHAPE, "bank_gib": bank_gib,
                               "batch": BATCH, "batches": args.batches, "results": result, "bank_vs_raw": ratio,
                               "target": TARGET, "met": ratio >= TARGET, "integrity": integrity, "teacher_forward": teacher,
                               "machine": platform.processor() or platform.machine(),
                               "threads": torch.get_num_threads()}, indent=2))
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
