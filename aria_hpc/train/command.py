"""The training command: `aria-hpc train`, `python -m aria_hpc.train` (what the deepspeed launcher
and srun start) and sweep / study members (launch/members.py) all train through `train_config`."""

from __future__ import annotations

import os
import signal

from aria_hpc.config import Config

FAULT_STEP = "ARIA_FAULT_SIGKILL_AFTER_STEP"  # the resume tests' fault injection


def fault_hook():
    """With ARIA_FAULT_SIGKILL_AFTER_STEP=n set (tests only): a hook by which rank 0 kills itself with a
    real SIGKILL after step n, before that step's checkpoint. Else None: the loop runs no hook."""
    after = os.environ.get(FAULT_STEP)
    if not after:
        return None

    def kill_after(done: int, rank: int) -> None:
        if done == int(after) and rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    return kill_after


def train_config(cfg: Config, log=print) -> dict:
    """Train cfg on every rank of the launch (resuming from RUN_DIR/checkpoints/latest)."""
    from aria_hpc.train.loop import train

    return train(cfg, log=log, after_step=fault_hook())


def train_command(config: str, overrides: list[str], dry_run: bool = False) -> int:
    """`aria-hpc train` / `python -m aria_hpc.train`: print the resolved config (rank 0), train, leave
    the process group, print where everything went."""
    from aria_hpc.config import dump_yaml, load_config
    from aria_hpc.distributed import shutdown, world_info

    cfg = load_config(config, overrides)
    rank0 = world_info().rank == 0
    if rank0:
        print(dump_yaml(cfg), end="", flush=True)
    if dry_run:
        return 0
    result = train_config(cfg, log=lambda msg: print(msg, flush=True))
    shutdown()
    if rank0:
        print(f"trained {result['steps']} steps (last loss {result['loss']:.5f}); run dir {result['run_dir']}"
              + (f"; student {result['student']}" if result["student"] else ""), flush=True)
    return 0
