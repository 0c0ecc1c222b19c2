"""Parameter counts of the depth-pruned transformer students on the real SD3-medium and Flux-dev
configs, built on the meta device (no weights, nothing downloaded), with the teacher's beside them.

    python scripts/transformer_students.py [--out benchmarks/out/transformer_students.json]

The configs are the `transformer/config.json` of stabilityai/stable-diffusion-3-medium-diffusers and
black-forest-labs/FLUX.1-dev, written out below.

It also prints the memory of the model states per GPU when a student trains under DeepSpeed ZeRO-2 with
bf16 mixed precision and AdamW, from the parameter counts (the ZeRO paper's accounting): bf16 weights
2 B/param on every rank; bf16 gradients 2 B and fp32 master weights + Adam moments 12 B partitioned over
the N ranks; our fp32 EMA of the student, 4 B, whole on every rank under ZeRO-2 (train/student.py
StudentEMA); the frozen bf16 teacher, 2 B/param, only where the teacher runs during training (live or
hybrid bank). Activations, the CUDA context and allocator slack come on top and are not counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SD3_MEDIUM = {"attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16, "joint_attention_dim": 4096,
              "num_attention_heads": 24, "num_layers": 24, "out_channels": 16, "patch_size": 2,
              "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "sample_size": 128}
FLUX_DEV = {"attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": True, "in_channels": 64,
            "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38,
            "patch_size": 1, "pooled_projection_dim": 768}
FAMILIES = {"SD3-medium": ("SD3Transformer2DModel", SD3_MEDIUM, ("sd3_half", "sd3_third")),
            "FLUX.1-dev": ("FluxTransformer2DModel", FLUX_DEV, ("flux_half_single", "flux_half"))}


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def zero2_states_gb(params: int, ranks: int) -> float:
    """Model-state bytes per rank of a student trained under ZeRO-2 (bf16, AdamW, fp32 EMA), in GB."""
    return (2 + (2 + 12) / ranks + 4) * params / 1e9


def main() -> int:
    import diffusers

    from aria_hpc.models.students import build_student

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/out/transformer_students.json")
    args = ap.parse_args()
    rows = []
    with torch.device("meta"):
        for name, (cls, config, presets) in FAMILIES.items():
            teacher = getattr(diffusers, cls).from_config(config)
            rows.append({"teacher": name, "model": "teacher", "params": count(teacher),
                         "blocks": [teacher.config.num_layers, teacher.config.get("num_single_layers")]})
            for preset in presets:
                student = build_student(preset, teacher)
                rows.append({"teacher": name, "model": preset, "params": count(student),
                             "blocks": [student.config.num_layers, student.config.get("num_single_layers")]})
    print("| teacher | model | joint / double blocks | single blocks | parameters | of the teacher | "
          "ZeRO-2 states, 1 GPU | 8 GPUs | + bf16 teacher |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(x["params"] for x in rows if x["teacher"] == r["teacher"] and x["model"] == "teacher")
        single = "-" if r["blocks"][1] is None else r["blocks"][1]
        r["zero2_states_gb"] = {str(n): zero2_states_gb(r["params"], n) for n in (1, 8)}
        r["teacher_bf16_gb"] = 2 * base / 1e9
        memory = ("- | - | -" if r["model"] == "teacher" else f"{r['zero2_states_gb']['1']:.1f} GB | "
                  f"{r['zero2_states_gb']['8']:.1f} GB | {r['teacher_bf16_gb']:.1f} GB")
        print(f"| {r['teacher']} | {r['model']} | {r['blocks'][0]} | {single} | {r['params'] / 1e9:.3f}B | "
              f"{r['params'] / base:.0%} | {memory} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
