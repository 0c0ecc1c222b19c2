"""Per-region accumulation on the device: our CUDA kernel vs torch index_add_ / scatter_add_.

    python benchmarks/bench_gpu.py [--out DIR]        # on a GPU: K in {16, 256, 65536}, n up to 16M
    python benchmarks/bench_gpu.py --tiny             # anywhere (CPU: the host table stands in)
    python benchmarks/bench_gpu.py --flow [--tiny]    # benchmarks/bench_flow.py: an SD3-medium teacher's
                                                      # forward vs its sd3_half student's step, peak memory

Every method computes the same (sum, sum of squares, count) per region into a (3, K) float64
block from float32 per-sample values; times are medians over repeats (CUDA events on a GPU).
Writes bench_gpu.json (and prints a table) under --out, default $OUT or benchmarks/out.
The training-step half of the GPU benchmark (SD-1.5-sized teacher, BK-SDM student, rc vs aria)
needs the trainer and is added with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aria_hpc.regions.table import DeviceRegionStats, RegionTable, cuda_compiled


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds per call after a warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(k: int, n: int, device: torch.device, repeats: int) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(k + n)
    ids = torch.randint(0, k, (n,), generator=gen).to(device)
    values = torch.rand(n, generator=gen).to(device)
    block = torch.zeros(3, k, dtype=torch.float64, device=device)
    v64 = None

    def index_add():
        nonlocal v64
        v64 = values.double()
        block[0].index_add_(0, ids, v64)
        block[1].index_add_(0, ids, v64 * v64)
        block[2].index_add_(0, ids, torch.ones_like(v64))

    def scatter_add():
        v = values.double()
        block[0].scatter_add_(0, ids, v)
        block[1].scatter_add_(0, ids, v * v)
        block[2].scatter_add_(0, ids, torch.ones_like(v))

    row = {"K": k, "n": n, "index_add_s": timed(index_add, repeats, device),
           "scatter_add_s": timed(scatter_add, repeats, device)}
    if device.type == "cuda":
        stats = DeviceRegionStats(k, device)
        row["ours_s"] = timed(lambda: stats.record(ids, values), repeats, device)
        row["ours"] = "cuda kernel"
    else:
        table = RegionTable(k)
        ids_np, values_np = ids.numpy(), values.numpy().astype(np.float64)
        row["ours_s"] = timed(lambda: table.record(ids_np, values_np), repeats, device)
        row["ours"] = "host table (no GPU)"
    row["speedup_vs_index_add"] = row["index_add_s"] / row["ours_s"]
    row["speedup_vs_scatter_add"] = row["scatter_add_s"] / row["ours_s"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small sizes (default on a machine with no GPU)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    parser.add_argument("--flow", action="store_true", help="the flow-matching teacher / student benchmark instead")
    args = parser.parse_args()
    if args.flow:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_flow

        return bench_flow.main([*(["--tiny"] if args.tiny else []), "--repeats", str(args.repeats), "--out", args.out])
    gpu = torch.cuda.is_available() and cuda_compiled()
    device = torch.device("cuda" if gpu else "cpu")
    tiny = args.tiny or not gpu
    sizes = [256, 65536] if tiny else [256, 65536, 16 * 2**20]
    name = torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)"
    rows = [bench(k, n, device, args.repeats) for k in (16, 256, 65536) for n in sizes]
    print(f"device: {name}; ours = {rows[0]['ours']}; times in microseconds (median of {args.repeats})")
    print(f"{'K':>6} {'n':>9} | {'ours':>9} {'index_add':>10} {'scatter':>9} | {'x idx':>6} {'x sct':>6}")
    for r in rows:
        print(f"{r['K']:>6} {r['n']:>9} | {r['ours_s'] * 1e6:>9.1f} {r['index_add_s'] * 1e6:>10.1f} "
              f"{r['scatter_add_s'] * 1e6:>9.1f} | {r['speedup_vs_index_add']:>6.2f} {r['speedup_vs_scatter_add']:>6.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.json").write_text(json.dumps({"device": name, "tiny": tiny, "rows": rows}, indent=2))
    print(f"wrote {out / 'bench_gpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
