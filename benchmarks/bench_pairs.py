"""What a paired set costs at SD scale (issue 32): memory and read speed of 10^5 SD-1.5-sized latents, the
tiny pipeline's generation cost per image, and a paper figure for SD-1.5 on one H100.

    python benchmarks/bench_pairs.py [--count 100000] [--dir /tmp/aria_bench_pairs] [--repeats 3]
                                     [--gen-images 32] [--out benchmarks/out/pairs.json]

- build: `aria_hpc.pairs.build_shard` (write_rows_shard, sealing) of `--count` latents (4, 64, 64) in
  4 shards, each batch made by a seeded normal draw in place of the pipeline (storage is what is
  measured, not generation); its own process, so its peak RSS is its own (ru_maxrss).
- copy: the bank's copy of the set into BANK_DIR/x0.h5 (bank.paired.ensure_x0_from_pairs), its own process.
- read: PairedSet.batches(256) over the whole set, and X0Rows (what training indexes) at random
  batches of 64 rows, each against a raw read of the same file's bytes (16 MiB reads), in alternating
  back-to-back pairs (benchmarks/timing.py); page cache warm for both. Its own process too.
  Target: every peak RSS below 2 GB whatever the count.
- generate: seconds per image of `aria_hpc.pairs.Maker` on the tests' tiny SD-1.x pipeline
  (25 steps, CFG 7.5), on this CPU.
- paper: SD-1.5's UNet FLOPs per forward at 64x64 latents (torch's FlopCounterMode on meta tensors),
  x 25 steps x 2 (CFG) per image, over an H100 SXM's 989 dense bf16 TFLOP/s at 40% utilisation.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))  # sd_configs: the tests' tiny real SD pipelines

SHAPE = (4, 64, 64)  # SD-1.5 latents of 512x512 images
SHARDS = 4
H100_BF16_TFLOPS, UTILISATION = 989.0, 0.40


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def config(root: Path, count: int):
    from aria_hpc.config import load_config

    return load_config(None, [f"pairs.dir={root / 'pairs'}", f"pairs.count={count}", f"pairs.shards={SHARDS}",
                              "pairs.batch_size=256", "seed=0"])


class SyntheticMaker:
    """aria_hpc.pairs.Maker's interface, with a seeded normal draw per batch in place of the pipeline."""

    def __init__(self, count: int) -> None:
        self.ids = np.arange(count, dtype=np.int64)
        self.expect_base = {"pool_digest": "synthetic", "pipeline_digest": "synthetic", "settings": "synthetic",
                            "rows_digest": str(count)}

    def latent_shape(self):
        return SHAPE

    def make(self, start: int, stop: int) -> np.ndarray:
        return np.random.default_rng([0, start]).standard_normal((stop - start, *SHAPE), dtype=np.float32)


def phase_build(root: Path, count: int) -> dict:
    from aria_hpc import pairs

    cfg = config(root, count)
    maker = SyntheticMaker(count)
    t0 = time.perf_counter()
    for i in range(SHARDS):
        pairs.build_shard(cfg, i, maker)
    return {"seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb()}


def phase_copy(root: Path, count: int) -> dict:
    from aria_hpc import pairs
    from aria_hpc.bank.paired import ensure_x0_from_pairs

    t0 = time.perf_counter()
    pset = pairs.PairedSet(config(root, count))
    ensure_x0_from_pairs(root / "bank", pset, "bench")
    return {"seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb()}


def raw_read(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(1 << 24):
                n += len(chunk)
    return n


def phase_read(root: Path, count: int, repeats: int) -> dict:
    from timing import paired_ratio

    from aria_hpc import pairs
    from aria_hpc.bank.paired import X0Rows

    pset = pairs.PairedSet(config(root, count))
    nbytes = len(pset) * int(np.prod(SHAPE)) * 2
    seq_t, raw_t, seq_ratio = paired_ratio(lambda: sum(len(b) for _, b in pset.batches(256)),
                                           lambda: raw_read(pset.paths), repeats)
    x0 = X0Rows(root / "bank" / "x0.h5")
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, count, 64) for _ in range(200)]  # 12,800 random rows
    rand_t, raw2_t, rand_ratio = paired_ratio(lambda: [x0[b] for b in batches],
                                              lambda: raw_read([root / "bank" / "x0.h5"]), repeats)
    return {"sequential_gb_s": nbytes / seq_t / 1e9, "raw_gb_s": nbytes / raw_t / 1e9,
            "sequential_vs_raw": seq_ratio,  # raw time / sequential time: 1 = as fast as raw bytes
            "random_rows_per_s": 64 * len(batches) / rand_t, "random_batch_ms": rand_t / len(batches) * 1e3,
            "peak_rss_gb": peak_rss_gb()}


def phase_generate(root: Path, images: int) -> dict:
    import yaml
    from sd_configs import build_tiny_pipeline  # tests/sd_configs.py: a tiny real SD-1.x pipeline

    from aria_hpc.cli import main
    from aria_hpc.config import load_config
    from aria_hpc.pairs import Maker

    pipe = build_tiny_pipeline(root / "tiny_sd15", "sd15")
    (root / "captions.txt").write_text("\n".join(f"a photo of a thing number {i}" for i in range(64)) + "\n")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump({"seed": 0, "teacher": {"dir": str(pipe)},
                                    "pool": {"files": [str(root / "captions.txt")]},
                                    "embed": {"dir": str(root / "emb")}, "pairs": {"dir": str(root / "tiny_pairs")}}))
    assert main(["embed", str(path), "--quiet"]) == 0
    maker = Maker(load_config(path))
    maker.make(0, 1)  # warm-up (the first call loads the pipeline)
    t0 = time.perf_counter()
    maker.make(1, 1 + images)
    return {"seconds_per_image": (time.perf_counter() - t0) / images, "images": images, "steps": 25,
            "guidance_scale": 7.5}


def sd15_paper_figure() -> dict:
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD-1.5's UNet config
        x, text = torch.empty(1, *SHAPE), torch.empty(1, 77, 768)
    with FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor([500], device="meta"), encoder_hidden_states=text)
    per_forward = counter.get_total_flops()
    per_image = per_forward * 25 * 2
    seconds = per_image / (H100_BF16_TFLOPS * 1e12 * UTILISATION)
    return {"unet_gflop_per_forward": per_forward / 1e9, "tflop_per_image": per_image / 1e12,
            "h100_seconds_per_image": seconds, "h100_hours_for_212k": seconds * 212_000 / 3600}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--dir", default="/tmp/aria_bench_pairs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gen-images", type=int, default=32, help="images the tiny pipeline generates, timed")
    ap.add_argument("--out", default="benchmarks/out/pairs.json")
    ap.add_argument("--phase", choices=("build", "copy", "read"), help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    root = Path(args.dir)
    if args.phase:
        fn = {"build": lambda: phase_build(root, args.count), "copy": lambda: phase_copy(root, args.count),
              "read": lambda: phase_read(root, args.count, args.repeats)}[args.phase]
        print(json.dumps(fn()))
        return 0
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    result = {"count": args.count, "shape": SHAPE, "dtype": "float16"}
    for phase in ("build", "copy", "read"):
        res = subprocess.run([sys.executable, __file__, "--phase", phase, "--count", str(args.count), "--dir",
                              str(root), "--repeats", str(args.repeats)], capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        result[phase] = json.loads(res.stdout.strip().splitlines()[-1])
    result["generate_tiny_cpu"] = phase_generate(root, args.gen_images)
    result["sd15_h100_paper"] = sd15_paper_figure()
    gb = args.count * int(np.prod(SHAPE)) * 2 / 1e9
    print(f"paired set: {args.count} latents {SHAPE} fp16 ({gb:.2f} GB), {SHARDS} shards")
    print(f"{'phase':<10} {'seconds':>8} {'peak RSS GB':>11}")
    for phase in ("build", "copy", "read"):
        r = result[phase]
        print(f"{phase:<10} {r.get('seconds', float('nan')):>8.1f} {r['peak_rss_gb']:>11.2f}")
    r = result["read"]
    print(f"read: sequential {r['sequential_gb_s']:.2f} GB/s vs raw {r['raw_gb_s']:.2f} GB/s "
          f"(raw time / ours {r['sequential_vs_raw']:.2f}); random batches of 64: {r['random_batch_ms']:.1f} ms "
          f"({r['random_rows_per_s']:.0f} rows/s)")
    g, p = result["generate_tiny_cpu"], result["sd15_h100_paper"]
    print(f"generate (tiny SD-1.x pipeline, this CPU, 25 steps, CFG 7.5): {g['seconds_per_image']:.3f} s an image")
    print(f"SD-1.5 on one H100 (paper figure): {p['unet_gflop_per_forward']:.0f} GFLOP a UNet forward, "
          f"{p['tflop_per_image']:.1f} TFLOP an image, {p['h100_seconds_per_image']:.3f} s an image at "
          f"{UTILISATION:.0%} of {H100_BF16_TFLOPS:.0f} TFLOP/s; RC's 212K: {p['h100_hours_for_212k']:.1f} GPU-hours")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    return 0 if all(result[p]["peak_rss_gb"] < 2.0 for p in ("build", "copy", "read")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
