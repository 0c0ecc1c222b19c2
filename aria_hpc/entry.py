"""Argument and exit-code plumbing for the two console entries, the `aria-hpc` console script (cli.main)
and `python -m aria_hpc.train` (what the deepspeed launcher and srun start; the training command is
aria_hpc/train/command.py). Both parse with `parse_args` and map errors to exit codes with
`exit_code`, written here only:

- UserError: one line on stderr (`aria-hpc: error: ...`; an error every rank agreed on is printed by
  rank 0 only), exit 2;
- Preempted: the checkpoint is saved, exit 75 (EX_TEMPFAIL: run the same command again).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from aria_hpc.errors import PREEMPTED_EXIT, AgreedError, Preempted, UserError


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args that also takes key=value overrides after the options
    (`aria-hpc bank CFG --shard 1 train.lr=1e-4`), appended to args.overrides."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def exit_code(command: Callable[[], int]) -> int:
    """Run a command; its return value, or the exit code of the error it raised."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models load from local directories only
    try:
        return command()
    except UserError as exc:
        from aria_hpc.distributed import world_info

        if not isinstance(exc, AgreedError) or world_info().rank == 0:
            print(f"aria-hpc: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Preempted as exc:
        print(f"aria-hpc: {exc}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT
