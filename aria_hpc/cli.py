"""aria-hpc: one console script, thin subcommands (parse, load config, call one function)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aria_hpc.config import Config, dump_yaml, load_config, save_resolved
from aria_hpc.errors import UserError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. aria.alpha=0.5")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _resolve(args: argparse.Namespace) -> Config | None:
    cfg = load_config(args.config, args.overrides)
    print(dump_yaml(cfg), end="")
    return None if args.dry_run else cfg


def cmd_simulate(args: argparse.Namespace) -> int:
    from aria_hpc.regions.simulate import run_simulation

    cfg = _resolve(args)
    if cfg is None:
        return 0
    run_dir = Path(cfg.run.dir)
    save_resolved(cfg, run_dir)
    print(f"{'step':>6} {'q(planted)':>11} {'pi(planted)':>12} {'truth':>7} {'estimate':>9} "
          f"{'max err':>8} {'predicted':>10}")
    with open(run_dir / "metrics.jsonl", "w") as log:
        for rec in run_simulation(cfg):
            log.write(json.dumps(rec) + "\n")
            print(f"{rec['step']:>6} {rec['planted_share_q']:>11.3f} {rec['planted_share_pi']:>12.3f} "
                  f"{rec['planted_truth']:>7.3f} {rec['planted_estimate']:>9.3f} "
                  f"{rec['max_tracking_error']:>8.3f} {rec['predicted_error']:>10.3f}")
    print(f"wrote {run_dir / 'metrics.jsonl'} and {run_dir / 'config.yaml'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aria-hpc",
        description="ARIA / Random Conditioning distillation of text-conditioned diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("simulate", help="run ARIA's allocation loop on a synthetic discrepancy landscape")
    _add_config_args(p)
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"aria-hpc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
