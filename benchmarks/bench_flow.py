"""A flow-matching teacher's forward against its depth-pruned student's training step, and the memory
of the two, on one device.

    python benchmarks/bench_flow.py [--tiny] [--preset sd3_half] [--batch N] [--repeats 20] [--out DIR]
    python benchmarks/bench_gpu.py --flow            # the same, from the GPU benchmark

--tiny (the default without a GPU): the tiny SD3-class transformer of the tests (3 joint blocks, 8x8x16
latents) in float32 on the CPU. On a GPU: the real SD3-medium transformer config (24 joint blocks,
2.03B parameters; random weights, nothing downloaded) in bfloat16 at 1024 px (128x128x16 latents).

Timed, as alternating back-to-back pairs (benchmarks/timing.py): the teacher's forward under no_grad
(what a bank entry or a live-teacher draw costs) against the student's training step (forward,
backward, AdamW step), both through models.flow.FlowDenoiser at the same batch, conditioning and
timesteps. The ratio teacher forward / student step is what a cached bank saves per step. On a GPU
it also records the peak memory of each pass (torch.cuda.max_memory_allocated). Writes
bench_flow.json under --out (default $OUT or benchmarks/out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from timing import paired_ratio  # noqa: E402

TINY_SD3 = {"sample_size": 8, "patch_size": 2, "in_channels": 16, "num_layers": 3, "attention_head_dim": 8,
            "num_attention_heads": 2, "joint_attention_dim": 48, "caption_projection_dim": 16,
            "pooled_projection_dim": 32, "out_channels": 16, "pos_embed_max_size": 8}


def run(tiny: bool, preset: str, batch: int, repeats: int) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformer_students import SD3_MEDIUM

    from aria_hpc.models.flow import FlowDenoiser, FlowTime
    from aria_hpc.models.students import build_student

    gpu = torch.cuda.is_available() and not tiny
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    config = TINY_SD3 if tiny else SD3_MEDIUM
    time = FlowTime.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0))
    torch.manual_seed(0)
    teacher = FlowDenoiser(SD3Transformer2DModel(**config), time).eval().requires_grad_(False)
    student = build_student(preset, teacher).train().requires_grad_(True)
    teacher, student = teacher.to(device, dtype), student.to(device, dtype)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    side, tokens = config["sample_size"], 333 if not tiny else 16  # SD3: 77 CLIP + 256 T5 tokens
    x_t = torch.randn(batch, config["in_channels"], side, side, generator=g).to(device, dtype)
    t = torch.from_numpy(time.sample(np.random.default_rng(0), batch))
    cond = {"encoder_hidden_states": torch.randn(batch, tokens, config["joint_attention_dim"], generator=g).to(device, dtype),
            "added_cond_kwargs": {"text_embeds": torch.randn(batch, config["pooled_projection_dim"], generator=g).to(device, dtype)}}
    with torch.no_grad():
        target = teacher(x_t, t, **cond).sample

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            teacher(x_t, t, **cond)
        sync()

    def step():
        loss = (student(x_t, t, **cond).sample.float() - target.float()).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()

    peaks = {}
    for name, fn in (("teacher_forward", forward), ("student_step", step)):
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        fn()
        if gpu:
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30
    step_s, forward_s, ratio = paired_ratio(step, forward, repeats)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"device": torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)",
            "config": "tiny SD3-class" if tiny else "SD3-medium", "dtype": str(dtype).replace("torch.", ""),
            "preset": preset, "batch": batch, "latent": [config["in_channels"], side, side], "repeats": repeats,
            "teacher_params": count(teacher), "student_params": count(student),
            "teacher_forward_s": forward_s, "student_step_s": step_s,
            "forward_over_step": ratio, "peak_memory_gib": peaks or None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny SD3-class config (the default without a GPU)")
    parser.add_argument("--preset", default="sd3_half", choices=["sd3_half", "sd3_third"])
    parser.add_argument("--batch", type=int, default=None, help="samples per pass (tiny: 16; SD3-medium: 4)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    args = parser.parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    r = run(tiny, args.preset, args.batch or (16 if tiny else 4), args.repeats)
    print(f"device: {r['device']}; {r['config']} teacher ({r['teacher_params'] / 1e6:.2f}M params), {r['preset']} student "
          f"({r['student_params'] / 1e6:.2f}M), batch {r['batch']} of {r['latent']} latents, {r['dtype']}, "
          f"median of {r['repeats']} alternating pairs")
    print("| pass | seconds | peak memory (GiB) |")
    print("|---|---|---|")
    for name, key in (("teacher forward (no grad)", "teacher_forward"), ("student training step", "student_step")):
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib'][key]:.1f}"
        print(f"| {name} | {r[key + '_s']:.4f} | {peak} |")
    print(f"teacher forward / student step: {r['forward_over_step']:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_flow.json").write_text(json.dumps(r, indent=1))
    print(f"wrote {out / 'bench_flow.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
