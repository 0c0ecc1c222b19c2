"""The one place that reads rank and world size (deepspeed launcher, torchrun, SLURM, or none).

Everything else asks this module; with no launcher it falls back to one process, rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int
    source: str  # "env" (deepspeed launcher / torchrun), "slurm" or "single"


def world_info(environ: dict[str, str] | None = None) -> WorldInfo:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return WorldInfo(int(env["RANK"]), int(env["WORLD_SIZE"]),
                         int(env.get("LOCAL_RANK", env["RANK"])), "env")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return WorldInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                         int(env.get("SLURM_LOCALID", 0)), "slurm")
    return WorldInfo(0, 1, 0, "single")


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(array: np.ndarray) -> None:
    """In-place sum of a float64 NumPy array over all ranks, zero-copy; no-op on one process."""
    if not is_distributed():
        return
    import torch
    import torch.distributed as dist

    dist.all_reduce(torch.from_numpy(array), op=dist.ReduceOp.SUM)


def all_reduce_max(array: np.ndarray) -> np.ndarray:
    """Element-wise maximum of a float64 NumPy array over all ranks (a copy; itself on one process)."""
    out = np.array(array, dtype=np.float64)
    if is_distributed():
        import torch
        import torch.distributed as dist

        dist.all_reduce(torch.from_numpy(out), op=dist.ReduceOp.MAX)
    return out


def all_gather_object(obj) -> list:
    """Every rank's obj, in rank order ([obj] on one process)."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def first_problem(problem: str | None) -> str | None:
    """The lowest rank's problem (None when no rank has one), the same on every rank."""
    return next((p for p in all_gather_object(problem) if p), None)


def agree(problem: str | None) -> None:
    """Every rank raises AgreedError with the lowest rank's problem when any rank has one (printed
    once, by rank 0); returns on every rank when none has."""
    from aria_hpc.errors import AgreedError

    problem = first_problem(problem)
    if problem:
        raise AgreedError(problem)


def any_rank(flag: bool) -> bool:
    """True on every rank when the flag is set on any."""
    count = np.array([1.0 if flag else 0.0])
    all_reduce_sum_(count)
    return bool(count[0] > 0)


def init(backend: str | None = None) -> WorldInfo:
    """Join the process group described by the environment (no-op for one process)."""
    info = world_info()
    if info.world_size == 1:
        return info
    import torch
    import torch.distributed as dist

    from aria_hpc.errors import UserError

    if info.source == "slurm":  # DeepSpeed reads these too
        for key, value in (("RANK", info.rank), ("WORLD_SIZE", info.world_size), ("LOCAL_RANK", info.local_rank)):
            os.environ.setdefault(key, str(value))
        if "MASTER_ADDR" not in os.environ and "SLURM_JOB_NODELIST" in os.environ:  # srun without slurm/ scripts
            os.environ["MASTER_ADDR"] = slurm_first_host(os.environ["SLURM_JOB_NODELIST"])
        if "MASTER_PORT" not in os.environ and "SLURM_JOB_ID" in os.environ:
            os.environ["MASTER_PORT"] = str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000)
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise UserError(f"world size {info.world_size} but {' and '.join(missing)} not set: start "
                            "through the deepspeed launcher, torchrun or the slurm/ scripts")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    return info


def shutdown() -> None:
    """Leave the process group cleanly: wait for every rank, then destroy it. Exiting with the group
    alive lets a peer's exit tear down gloo's connections under a running background thread (the
    process then aborts with "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def slurm_first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (what slurm/train.sbatch uses as MASTER_ADDR)."""
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = nodelist.split(",")[0]
    return head.split("[")[0] + head.split("[")[1].split("-")[0].split(",")[0] if "[" in head else head


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()
