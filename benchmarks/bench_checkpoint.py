"""What checkpoint digests cost: save and resume with digests against without, in alternating
back-to-back pairs in one process (benchmarks/timing.py), and the hash's throughput.

    python benchmarks/bench_checkpoint.py [--repeats 3] [--sd] [--dir /tmp/aria_bench_ckpt] [--out benchmarks/out/checkpoint.json]

States (what DeepSpeed's mp_rank file holds at ZeRO-0: the module's fp32 weights and AdamW's two moments):
- demo: the demo's student (no_inner_attn from the shipped shapes teacher, 1.28M parameters);
- sd (--sd): an SD-1.5-sized UNet2DConditionModel built on CPU (860M parameters, 3.4 GB of fp32
  weights; weights only, no optimizer state: it does not train).
Save: `torch.save(state, path)` (what DeepSpeed's torch engine does) against `digests.save_hashed`
(the same records through a hashing file object, without the zip CRC-32 that the sha256 replaces).
Resume: `torch.load` against `file_digest` + `torch.load` (resume hashes each file before loading it). Hash throughput: `file_digest` of the saved file
(page cache warm). Target (issue 31): save with digests <= 1.15x without on the SD-sized state.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import paired_ratio  # noqa: E402

from aria_hpc.train.digests import file_digest, save_hashed  # noqa: E402


def demo_state() -> dict:
    from aria_hpc.models.students import build_student
    from aria_hpc.models.teacher import load_teacher

    torch.manual_seed(0)
    student = build_student("no_inner_attn", load_teacher().unet)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    student(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), encoder_hidden_states=torch.randn(2, 4, 384)).sample.sum().backward()
    opt.step()
    return {"module": student.state_dict(), "optimizer": opt.state_dict()}


def sd_state() -> dict:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD-1.5's UNet config
    return {"module": unet.state_dict()}


def measure(name: str, state: dict, root: Path, repeats: int) -> dict:
    plain, hashed = root / f"{name}-plain.pt", root / f"{name}-hashed.pt"
    save_t, save_base_t, save_ratio = paired_ratio(lambda: save_hashed(state, hashed), lambda: torch.save(state, plain),
                                                   repeats)
    size = hashed.stat().st_size
    load_t, load_base_t, load_ratio = paired_ratio(
        lambda: (file_digest(hashed), torch.load(hashed, weights_only=False)),
        lambda: torch.load(plain, weights_only=False), repeats)
    t0 = time.perf_counter()
    file_digest(hashed)
    hash_s = time.perf_counter() - t0
    params = sum(v.numel() for v in state["module"].values())
    for p in (plain, hashed):
        p.unlink()
    return {"state": name, "parameters": params, "bytes": size, "save_s": save_base_t, "save_digest_s": save_t,
            "save_ratio": 1 / save_ratio, "resume_s": load_base_t, "resume_digest_s": load_t,
            "resume_ratio": 1 / load_ratio, "hash_gb_per_s": size / hash_s / 1e9}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sd", action="store_true", help="also the SD-1.5-sized UNet (3.4 GB on disk)")
    ap.add_argument("--dir", default="/tmp/aria_bench_ckpt")
    ap.add_argument("--out", default="benchmarks/out/checkpoint.json")
    args = ap.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    rows = [measure("demo student + AdamW", demo_state(), root, args.repeats)]
    if args.sd:
        rows.append(measure("SD-1.5-sized UNet (fp32)", sd_state(), root, args.repeats))
    print(f"{'state':<26} {'params':>12} {'bytes':>14} {'save s':>8} {'+digest':>8} {'ratio':>6} "
          f"{'resume s':>9} {'+digest':>8} {'ratio':>6} {'hash GB/s':>9}")
    for r in rows:
        print(f"{r['state']:<26} {r['parameters']:>12,} {r['bytes']:>14,} {r['save_s']:>8.3f} {r['save_digest_s']:>8.3f} "
              f"{r['save_ratio']:>6.3f} {r['resume_s']:>9.3f} {r['resume_digest_s']:>8.3f} {r['resume_ratio']:>6.3f} "
              f"{r['hash_gb_per_s']:>9.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.machine(), "repeats": args.repeats, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
