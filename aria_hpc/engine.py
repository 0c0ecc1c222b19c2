"""The one caller of deepspeed.initialize. The DeepSpeed dict is derived from the typed
config, never kept as a second hand-edited JSON, with the batch invariant asserted."""

from __future__ import annotations

import math
import os

import torch

from aria_hpc.config import Config


def global_batch(cfg: Config, world_size: int) -> int:
    return cfg.train.micro_batch_per_gpu * cfg.train.grad_accum * world_size


def deepspeed_config(cfg: Config, world_size: int, on_gpu: bool) -> dict:
    t = cfg.train
    config = {
        "train_batch_size": global_batch(cfg, world_size),
        "train_micro_batch_size_per_gpu": t.micro_batch_per_gpu,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": on_gpu},  # fp32 on CPU
        "steps_per_print": 10**9,  # our own metrics.jsonl / tqdm
        "wall_clock_breakdown": False,
        "checkpoint": {"use_node_local_storage": False},
    }
    if t.zero_stage == 3:
        config["zero_optimization"].update({"stage3_gather_16bit_weights_on_model_save": True})
    assert config["train_batch_size"] == (config["train_micro_batch_size_per_gpu"]
                                          * config["gradient_accumulation_steps"] * world_size)
    return config


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine") -> float:
    """The learning rate's multiplier at `step`: linear warm-up over `warmup` steps, then constant or a
    cosine decay to zero at `total` (the student's train.lr_schedule; the teacher recipe's cosine)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def lr_lambda(cfg: Config):
    t = cfg.train
    return lambda step: lr_factor(step, t.warmup_steps, t.steps, t.lr_schedule)


def skip_shm_comm_build() -> None:
    """Never build DeepSpeed's CPU shared-memory all-reduce. Its CPU backend JIT-loads that op at every
    start, inside torch's FileBaton lock (a plain file, TORCH_EXTENSIONS_DIR/deepspeed_shm_comm/lock);
    a process killed in that window leaves the file behind, and every later DeepSpeed process on the
    machine then waits for it forever, silently (the fault campaign found it: scripts/fault_campaign.py).
    Only inference_all_reduce uses the op, never training on gloo, so it is marked incompatible here
    and build_shm_op returns None."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def initialize(model: torch.nn.Module, cfg: Config, world_size: int):
    """(engine, optimizer, scheduler) for the student. torch AdamW (no JIT-built DeepSpeed ops)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        skip_shm_comm_build()
    import torch.distributed as dist

    if not dist.is_initialized():  # one process with no launcher: a group of one (no MPI discovery)
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port)}.items():
            os.environ.setdefault(key, value)
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world_size, on_gpu))
    return engine, optimizer, scheduler
