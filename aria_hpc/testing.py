"""Tiny real components for tests and the fault campaign (as transformers' and diffusers' testing
utilities): a randomly initialised BERT with MiniLM's tokenizer, and the shapes world embedded with it
beside a tiny pixel teacher. Both are saved like real model directories and loaded through the real
loading code."""

from __future__ import annotations

import shutil
from pathlib import Path


def build_tiny_bert(out: str | Path) -> Path:
    """A tiny BERT (hidden 32, one layer) with all-MiniLM-L6-v2's tokenizer, saved with save_pretrained."""
    import torch
    from transformers import BertConfig, BertModel

    from aria_hpc.conditioning.encoders import default_text_encoder_dir

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = default_text_encoder_dir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, out / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    return out


def build_tiny_world(root: str | Path, bert_dir: str | Path) -> Path:
    """The shapes world embedded with the tiny BERT, split into 8 regions, and a tiny pixel teacher
    with random weights (a valid frozen teacher for caching and fault tests). Returns the config path."""
    import torch
    import yaml

    from aria_hpc.cli import main
    from aria_hpc.conditioning.encoders import TextEncoder
    from aria_hpc.models.teacher import build_scheduler, build_unet, save_teacher

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"seed": 0, "text_encoder": {"dir": str(bert_dir), "max_length": 12, "batch_size": 2048},
           "embed": {"dir": str(root / "emb")}, "regions": {"path": str(root / "emb" / "regions.h5"), "k": 8,
                                                             "niter": 5},
           "teacher": {"dir": str(root / "teacher")},
           "bank": {"dir": str(root / "bank"), "entries": 600, "shards": 3, "batch_size": 64, "min_per_region": 4},
           "launch": {"folder": str(root / "submitit"), "timeout_min": 5, "cpus_per_task": 1}}
    path = root / "world.yaml"
    path.write_text(yaml.safe_dump(cfg))
    if main(["embed", str(path), "--quiet"]) != 0 or main(["regions", str(path)]) != 0:
        raise RuntimeError("building the tiny world: embed or regions failed")
    torch.manual_seed(0)
    encoder = TextEncoder(bert_dir, 12)
    unet = build_unet([8, 16], layers_per_block=1, norm_num_groups=8, attention_head_dim=4, resolution=16,
                      cross_attention_dim=encoder.dim)
    save_teacher(root / "teacher", unet, build_scheduler(1000, "squaredcos_cap_v2", "v_prediction"),
                 {"world": "shapes", "resolution": 16,
                  "text_encoder": {"dir": str(bert_dir), "digest": encoder.digest, "max_length": 12,
                                   "dim": encoder.dim, "pooling": encoder.kind}})
    return path
