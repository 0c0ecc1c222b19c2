"""The conditioning space at 10^9 prompts, K = 65,536 regions and 512 ranks, on paper, every figure
derived from bench_scale's measurements at 10^7 with the arithmetic printed beside it.

    python benchmarks/scale_model.py [--measured benchmarks/out/scale.json] [--out docs/scale_model.md]

Stated assumptions (not measured here; a lent GPU machine would measure them): the GPU figures take
an effective 200 TFLOP/s for a text encoder's bf16 forward on an H100 (about 20% of its dense peak)
and 50 TFLOP/s for faiss's float32 k-means distance products. An encoder's forward FLOPs are taken as
2 x its non-embedding (matmul) parameters x tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

N, K, RANKS = 10**9, 65_536, 512
GPU_FLOPS = 200e12
GPU_FP32_FLOPS = 50e12
SD15_LATENT = (4, 64, 64)  # a 512x512 image through SD-1.5's VAE, fp16
SD15_UNET_MACS = 339e9  # SD-1.x UNet, one forward at 64x64 latents (BK-SDM, Kim et al. 2023, Table 1)
PROBES = 4  # teacher forwards per prompt for its signature (regions.probe_timesteps x regions.probe_noises)
SIGNATURE_N = 2 * 10**7  # the pool size issue 30 names
SIGNATURE_SAMPLE = 10**6  # signatures of a seeded sample (regions.signature_sample), the rest by the text map
ENCODERS = {  # non-embedding parameters (layers x (4 d^2 + 2 d d_ff)) and tokens per prompt
    "all-MiniLM-L6-v2 (24 tokens)": (6 * (4 * 384**2 + 2 * 384 * 1536), 24),
    "CLIP ViT-L/14 text (SD-1.5's, 77 tokens)": (12 * (4 * 768**2 + 2 * 768 * 3072), 77),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measured", default="benchmarks/out/scale.json")
    ap.add_argument("--out", default="docs/scale_model.md")
    args = ap.parse_args()
    m = json.loads(Path(args.measured).read_text())
    n_meas = m["sizes"][-1]
    row = m["rows"][str(n_meas)]
    km, dim, k_meas = row["kmeans"], row["kmeans"]["dim"], m["k"]
    lines = [f"# The conditioning space at 10^9 prompts (derived from `{args.measured}`, N = {n_meas:,})", "",
             f"Target: N = {N:.0e} prompts, K = {K:,} regions, {RANKS} ranks. Measured at N = {n_meas:,}, K = {k_meas:,}, "
             f"d = {dim}, {m['niter']} k-means iterations, 2 CPU cores ({m['machine']}).", ""]

    def add(name, value, arithmetic):
        lines.append(f"| {name} | {value} | {arithmetic} |")

    lines += ["| figure | value | arithmetic |", "|---|---|---|"]
    b = km["map_bytes_per_prompt"]
    add("region map per node", f"{b * N / 2**30:.2f} GiB",
        f"{b} B a prompt (int32 region + int32 order, measured in regions.h5) x 10^9; memory-mapped, one copy per node")
    acc = 3 * K * 8
    add("all-reduce per sync", f"{acc / 2**20:.2f} MiB (+{3 * 10 * 8} B timestep baseline)",
        f"accumulators (sum, sum of squares, count) x K x float64 = 3 x {K:,} x 8 B; a ring all-reduce moves "
        f"2 (p-1)/p of it per rank: {2 * (RANKS - 1) / RANKS * acc / 2**20:.2f} MiB")
    per_unit_train = km["kmeans_train_s"] / (km["train_points"] * k_meas * dim * m["niter"])
    sample = 256 * K
    train_s = per_unit_train * sample * K * dim * 25
    add("k-means sample", f"{sample / 1e6:.1f}M prompts, {sample * dim * 4 / 2**30:.1f} GiB (d={dim}), "
        f"{sample * 768 * 4 / 2**30:.1f} GiB (d=768)", f"256 per centroid (faiss's default) x {K:,}, float32")
    gpu_train = 2 * sample * K * dim * 25 / GPU_FP32_FLOPS
    add("k-means training time", f"{train_s / 3600:,.0f} h on 2 cores; {gpu_train / 60:.0f} GPU-minutes",
        f"measured {km['kmeans_train_s']:.0f} s for {km['train_points']:,} x {k_meas:,} x {dim} x {m['niter']} iterations "
        f"= {per_unit_train:.3g} s per point-centroid-dim-iteration; x {sample:,} x {K:,} x {dim} x 25. "
        f"GPU: 2 x that product / 50 TFLOP/s (assumed): train it on a GPU (faiss-gpu), not on CPU nodes")
    per_unit_assign = km["kmeans_assign_s"] / (n_meas * k_meas * dim)
    assign_s = per_unit_assign * N * K * dim
    add("assignment", f"{assign_s / 3600:,.0f} h on 2 cores; {assign_s / RANKS / 3600:.1f} h as an array of {RANKS} "
        f"such tasks; {2 * N * K * dim / GPU_FP32_FLOPS / 3600:.2f} GPU-hours",
        f"measured {km['kmeans_assign_s']:.0f} s for {n_meas:,} x {k_meas:,} x {dim} = {per_unit_assign:.3g} s per "
        f"prompt-centroid-dim; x 10^9 x {K:,} x {dim}; GPU: 2 x that product / 50 TFLOP/s")
    enc = m["encoder"]
    for name, (params, tokens) in ENCODERS.items():
        flops = 2 * params * tokens
        if name.startswith("all-MiniLM"):
            cpu_h = N / enc["ours_prompts_per_s_per_core"] / 3600
            achieved = enc["ours_prompts_per_s_per_core"] * flops
            add(f"embed, {name}", f"{cpu_h:,.0f} core-hours (CPU, measured rate); {N * flops / GPU_FLOPS / 3600:.1f} GPU-hours",
                f"10^9 / {enc['ours_prompts_per_s_per_core']:.0f} prompts/s/core measured "
                f"({achieved / 1e9:.1f} GFLOP/s a core achieved); GPU: 10^9 x 2 x {params / 1e6:.1f}M x {tokens} FLOPs / 200 TFLOP/s")
        else:
            add(f"embed, {name}", f"{N * flops / GPU_FLOPS / 3600:.1f} GPU-hours",
                f"10^9 x 2 x {params / 1e6:.1f}M x {tokens} = {N * flops:.2e} FLOPs / 200 TFLOP/s (assumed); "
                f"on CPU at MiniLM's achieved rate a core: {N * flops / (enc['ours_prompts_per_s_per_core'] * 2 * ENCODERS['all-MiniLM-L6-v2 (24 tokens)'][0] * 24) / 3600:,.0f} core-hours")
    cols = row["plan"]["column_bytes_per_entry"]
    out_b = 2 * SD15_LATENT[0] * SD15_LATENT[1] * SD15_LATENT[2]
    add("bank per million entries (SD-1.5 latents)", f"{(out_b + cols) * 1e6 / 2**30:.1f} GiB",
        f"output 4 x 64 x 64 fp16 = {out_b:,} B + columns {cols} B (measured from plan_bank's arrays) per entry")
    add("bank planning at 10^6 entries", f"{row['plan']['wall_s']:.1f} s, {row['plan']['peak_rss_gb']:.2f} GB",
        "measured (independent of N beyond the region map)")
    per_prompt = PROBES * 2 * SD15_UNET_MACS
    for n, what in ((SIGNATURE_N, "every prompt of 2 x 10^7"), (N, "every prompt of 10^9"),
                    (SIGNATURE_SAMPLE, f"a sample of {SIGNATURE_SAMPLE:.0e} (regions.signature_sample)")):
        add(f"teacher signatures, SD-1.5 UNet, {what}", f"{n * per_prompt / GPU_FLOPS / 3600:,.1f} GPU-hours",
            f"{PROBES} probe forwards a prompt x 2 x {SD15_UNET_MACS / 1e9:.0f}G MACs = {per_prompt / 1e12:.2f} TFLOP a prompt; "
            f"x {n:,} / 200 TFLOP/s (assumed); the shapes teacher measured 2.4 ms a forward on 2 CPU cores "
            "(46,080 forwards in 110 s, `aria-hpc signatures configs/debug.yaml`)")
    lines += ["", "Notes: the bank's `cond` column is int32, so one pool holds at most 2^31 - 1 prompts; "
              "the region order switches to int64 above that (16 B a prompt)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
