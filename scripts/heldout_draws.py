"""Where the allocation sends random-condition draws: per arm of a committed study regime, the held-out
(unseen) group's share of draws and its tracked discrepancy over the pool-weighted mean, as the range
over every logged step after ARIA's warm-up and over all seeds (metrics.jsonl: group_share,
group_estimate, estimate_mean; the series the report's mechanism figure plots). What README's
headline table quotes in its last column.

    python scripts/heldout_draws.py docs/study/v3/confirm/shape_diluted [more regime dirs ...]
"""

import argparse
from pathlib import Path

from aria_hpc.eval.stats import curve_series, load_runs


def value_range(series: tuple, after_step: int) -> tuple[float, float]:
    """(min, max) of a curve_series entry over its steps after `after_step` and over seeds."""
    steps, values = series
    kept = values[:, steps > after_step]
    return float(kept.min()), float(kept.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("regimes", nargs="+", type=Path, help="committed regime directories (docs/study/...)")
    parser.add_argument("--after-step", type=int, default=100, help="skip steps up to this one (ARIA's warm-up)")
    parser.add_argument("--group", default="unseen")
    args = parser.parse_args()
    print("| regime | arm | share of random-condition draws | tracked discrepancy / mean |")
    print("|---|---|---|---|")
    for regime in args.regimes:
        runs = load_runs(sorted(p for p in regime.glob("*-s*") if (p / "eval.json").is_file()))
        shares = curve_series(runs, "group_share", args.group)  # paired logs none: no row
        ratios = curve_series(runs, "group_estimate", args.group, over="estimate_mean")
        for arm, series in shares.items():
            share = value_range(series, args.after_step)
            ratio = value_range(ratios[arm], args.after_step) if arm in ratios else (float("nan"),) * 2
            print(f"| {regime} | {arm} | {share[0]:.2%}-{share[1]:.2%} | {ratio[0]:.2f}-{ratio[1]:.2f} |")


if __name__ == "__main__":
    main()
