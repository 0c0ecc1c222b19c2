"""Distillation training: `python -m aria_hpc.train CONFIG [key=value ...]` (what the deepspeed
launcher and srun start) and `aria-hpc train`."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from aria_hpc.cli import parse_args
    from aria_hpc.config import dump_yaml, load_config
    from aria_hpc.distributed import world_info
    from aria_hpc.errors import AgreedError, UserError
    from aria_hpc.train.loop import PREEMPTED_EXIT, Preempted, train

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m aria_hpc.train", description=__doc__)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parse_args(parser, argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if world_info().rank == 0:
            print(dump_yaml(cfg), end="", flush=True)
        if args.dry_run:
            return 0
        result = train(cfg, log=lambda msg: print(msg, flush=True))
        from aria_hpc.distributed import shutdown

        shutdown()
    except UserError as exc:
        if not isinstance(exc, AgreedError) or world_info().rank == 0:
            print(f"aria-hpc: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Preempted as exc:
        print(f"aria-hpc: {exc}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT
    if world_info().rank == 0:
        print(f"trained {result['steps']} steps (last loss {result['loss']:.5f}); run dir {result['run_dir']}"
              + (f"; student {result['student']}" if result["student"] else ""), flush=True)
    return 0
