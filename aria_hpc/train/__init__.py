"""Distillation training: `python -m aria_hpc.train CONFIG [key=value ...]` (what the deepspeed
launcher and srun start) and `aria-hpc train`; both run aria_hpc.train.command.train_command."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from aria_hpc.entry import exit_code, parse_args
    from aria_hpc.train.command import train_command

    parser = argparse.ArgumentParser(prog="python -m aria_hpc.train", description=__doc__)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parse_args(parser, argv)
    return exit_code(lambda: train_command(args.config, args.overrides, args.dry_run))
