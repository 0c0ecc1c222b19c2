"""Training throughput for every policy, with the teacher bank and with the live teacher, in one run.

    python benchmarks/bench_train.py [--config configs/debug.yaml] [--steps 30] [--dir /tmp/aria_bench_train]
                                     [--out benchmarks/out/train.json] [key=value ...]

Setup (not timed): the prompt pool is embedded, split into regions and a bank is built through the
real CLI code into --dir, for the config's teacher (the shipped shapes teacher by default). Then the
real training loop (`aria_hpc.train.loop.train`, DeepSpeed on one CPU rank) runs `--steps` steps for
each of paired / rc / aria x bank / live teacher; samples/s is the median of the logged rates after
the first interval. Separately timed passes on one batch: the teacher's forward (no grad) and the
student's training step (forward, backward, optimizer), giving the ideal bank speed-up
(t_teacher + t_student) / t_student. Targets (issue 5): ARIA's step time <= 1.03x RC's (bank);
bank speed-up over the live teacher >= 0.8x the ideal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import numpy as np
import torch

from aria_hpc.config import load_config
from timing import median_seconds

TARGET_ARIA_OVERHEAD = 1.03
TARGET_BANK_FRACTION = 0.8


def setup(base: list[str], work: Path) -> list[str]:
    """Embeddings, regions and a bank for the config, built once; the overrides that point at them."""
    from aria_hpc.bank import build_bank
    from aria_hpc.cli import main

    paths = [f"embed.dir={work / 'emb'}", f"regions.path={work / 'emb' / 'regions.h5'}", f"bank.dir={work / 'bank'}",
             "bank.shards=1"]
    cfg = load_config(base[0], [*base[1:], *paths])
    if not (work / "emb" / "regions.h5").is_file():
        assert main(["embed", base[0], *base[1:], *paths, "--quiet"]) == 0
        assert main(["regions", base[0], *base[1:], *paths]) == 0
    build_bank(cfg, log=lambda _m: None)
    return paths


def run_policy(base: list[str], paths: list[str], work: Path, policy: str, source: str, steps: int) -> dict:
    import shutil

    from aria_hpc.train.loop import train

    run_dir = work / f"run-{policy}-{source}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [*base[1:], *paths, f"run.dir={run_dir}", f"train.policy={policy}", f"train.steps={steps}",
                 "train.log_every=5", "train.checkpoint_every=100000", "train.export=false",
                 "aria.warmup_steps=5"]
    if source == "live":
        overrides.append("bank.dir=null")
    train(load_config(base[0], overrides), log=lambda _m: None)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records[1:]] or [records[0]["samples_per_s"]]
    return {"samples_per_s": statistics.median(rates), "teacher_forwards": records[-1]["teacher_forwards"],
            "bank_hits": records[-1]["bank_hits"]}


def separate_passes(base: list[str], paths: list[str], repeats: int = 5) -> dict:
    """Median seconds of the teacher forward and of one student training step, on one micro-batch."""
    from aria_hpc.bank.context import load_context
    from aria_hpc.models.students import build_student

    cfg = load_config(base[0], [*base[1:], *paths])
    ctx = load_context(cfg)
    n = cfg.train.micro_batch_per_gpu
    unet = ctx.teacher.unet
    c = unet.config
    x = torch.randn(n, c.in_channels, c.sample_size, c.sample_size)
    t = torch.randint(0, 1000, (n,))
    tokens, mask = ctx.tokens(np.arange(n))
    student = build_student(cfg.student.preset, unet).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def teacher_pass():
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=tokens, encoder_attention_mask=mask)

    def student_pass():
        out = student(x, t, encoder_hidden_states=tokens, encoder_attention_mask=mask).sample
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return {"teacher_s": median_seconds(teacher_pass, repeats), "student_s": median_seconds(student_pass, repeats),
            "batch": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/debug.yaml")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dir", default="/tmp/aria_bench_train")
    ap.add_argument("--out", default="benchmarks/out/train.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    base = [args.config, *args.overrides]
    paths = setup(base, work)

    results = {}
    for source in ("bank", "live"):
        for policy in ("paired", "rc", "aria"):
            results[f"{policy}/{source}"] = run_policy(base, paths, work, policy, source, args.steps)
    passes = separate_passes(base, paths)
    ideal = (passes["teacher_s"] + passes["student_s"]) / passes["student_s"]
    aria_overhead = results["rc/bank"]["samples_per_s"] / results["aria/bank"]["samples_per_s"]
    bank_speedup = results["aria/bank"]["samples_per_s"] / results["aria/live"]["samples_per_s"]

    print(f"{args.steps} steps per run, micro-batch {passes['batch']}, 1 CPU rank (DeepSpeed, gloo)")
    print(f"{'policy/source':<14} {'samples/s':>10} {'teacher fwd':>12} {'bank hits':>10}")
    for name, r in results.items():
        print(f"{name:<14} {r['samples_per_s']:>10.1f} {r['teacher_forwards']:>12} {r['bank_hits']:>10}")
    print(f"separate passes: teacher forward {passes['teacher_s'] * 1e3:.0f} ms, student step "
          f"{passes['student_s'] * 1e3:.0f} ms -> ideal bank speed-up {ideal:.2f}x")
    print(f"ARIA step time vs RC (bank): {aria_overhead:.3f}x (target <= {TARGET_ARIA_OVERHEAD}): "
          f"{'met' if aria_overhead <= TARGET_ARIA_OVERHEAD else 'NOT met'}")
    print(f"bank vs live teacher (aria): {bank_speedup:.2f}x = {bank_speedup / ideal:.2f} of ideal "
          f"(target >= {TARGET_BANK_FRACTION}): {'met' if bank_speedup >= TARGET_BANK_FRACTION * ideal else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "overrides": args.overrides, "steps": args.steps,
                               "results": results, "passes": passes, "ideal_bank_speedup": ideal,
                               "aria_vs_rc_step_time": aria_overhead, "bank_speedup": bank_speedup,
                               "targets": {"aria_vs_rc": TARGET_ARIA_OVERHEAD, "bank_fraction_of_ideal":
                                           TARGET_BANK_FRACTION},
                               "machine": platform.processor() or platform.machine(),
                               "threads": torch.get_num_threads()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
