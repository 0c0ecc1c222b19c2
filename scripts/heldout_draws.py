"""Where the allocation sends random-condition draws: per arm of a committed study regime, the held-out
(unseen) group's share of draws and its tracked discrepancy over the pool-weighted mean, as the range
over every logged step after ARIA's warm-up and over all seeds (metrics.jsonl: group_share,
group_estimate, estimate_mean). What README's headline table quotes in its last column.

    python scripts/heldout_draws.py docs/study/v3/confirm/shape_diluted [more regime dirs ...]
"""

import argparse
import json
from pathlib import Path


def arm_ranges(regime_dir: Path, after_step: int, group: str) -> dict[str, dict[str, tuple[float, float]]]:
    arms: dict[str, dict[str, list[float]]] = {}
    for member in sorted(p for p in regime_dir.glob("*-s*") if (p / "metrics.jsonl").is_file()):
        arm = member.name.rsplit("-s", 1)[0]
        rows = [json.loads(line) for line in (member / "metrics.jsonl").read_text().splitlines() if line.strip()]
        logged = [r for r in rows if "group_share" in r and r["step"] > after_step]
        a = arms.setdefault(arm, {"share": [], "ratio": []})
        a["share"] += [r["group_share"][group] for r in logged]
        a["ratio"] += [r["group_estimate"][group] / r["estimate_mean"] for r in logged if r.get("estimate_mean")]
    return {arm: {k: (min(v), max(v)) for k, v in a.items() if v} for arm, a in arms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("regimes", nargs="+", type=Path, help="committed regime directories (docs/study/...)")
    parser.add_argument("--after-step", type=int, default=100, help="skip steps up to this one (ARIA's warm-up)")
    parser.add_argument("--group", default="unseen")
    args = parser.parse_args()
    print("| regime | arm | share of random-condition draws | tracked discrepancy / mean |")
    print("|---|---|---|---|")
    for regime in args.regimes:
        for arm, r in arm_ranges(regime, args.after_step, args.group).items():
            if "share" not in r:
                continue  # paired: no random-condition draws
            share, ratio = r["share"], r.get("ratio", (float("nan"),) * 2)
            print(f"| {regime} | {arm} | {share[0]:.2%}-{share[1]:.2%} | {ratio[0]:.2f}-{ratio[1]:.2f} |")


if __name__ == "__main__":
    main()
