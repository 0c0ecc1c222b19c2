"""`aria-hpc report RUN_DIR... [--out DIR]`: markdown + PNG figures comparing policies per split group.

The statistics are eval/stats.py's, the figures eval/figures.py's; this module writes the markdown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aria_hpc.eval.figures import (
    plot_curves,
    plot_groups,
    plot_heatmaps,
    plot_mechanism,
    plot_oracle,
    plot_samples,
    plot_timesteps,
)
from aria_hpc.eval.stats import (
    GROUPS,
    METRICS,
    compare,
    format_summary,
    load_runs,
    oracle_points,
    steps_to_reach,
    summarise,
)
from aria_hpc.fsio import atomic_write_text


def headline(summary: dict, baseline: str = "rc") -> list[str]:
    """Markdown table rows: per group and metric, every label's value and the verdict against the baseline."""
    labels = list(summary)
    others = [lab for lab in labels if lab != baseline] if baseline in summary else []
    head = ["group", "metric", *labels, *[f"{o} vs {baseline}" for o in others]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in GROUPS:
        for metric, (title, higher) in METRICS.items():
            cells = [summary[lab].get(group, {}).get(metric) for lab in labels]
            if all(c is None for c in cells):
                continue
            verdicts = []
            for o in others:
                a, b = summary[o].get(group, {}).get(metric), summary[baseline].get(group, {}).get(metric)
                if a is None or b is None:
                    verdicts.append("-")
                    continue
                diff, spread, basis, verdict = compare(a, b, higher, o, baseline)
                verdicts.append(f"{verdict} ({diff:+.3g}; {basis} {spread:.2g})")
            arrow = "↑" if higher else "↓"
            rows.append("| " + " | ".join([group, f"{title} {arrow}", *map(format_summary, cells), *verdicts]) + " |")
    return rows


def write_report(run_dirs: list[str | Path], out_dir: str | Path, baseline: str = "rc") -> dict:
    runs = load_runs(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs)
    table = headline(summary, baseline)
    figures = {"groups": plot_groups(summary, out / "groups.png"),
               "heatmaps": plot_heatmaps(runs, out / "regions.png"),
               "timesteps": plot_timesteps(runs, out / "mse_by_timestep.png"),
               "curves": plot_curves(runs, out / "curves.png"),
               "mechanism": plot_mechanism(runs, out / "mechanism.png"),
               "oracle": plot_oracle(runs, out / "oracle.png", baseline)}
    for g in GROUPS[:4]:
        figures[f"samples_{g}"] = plot_samples(runs, g, out / f"samples_{g}.png")
    seeds = {lab: sum(r.label == lab for r in runs) for lab in summary}
    lines = ["# ARIA vs RC: distilled students per split group", "",
             f"Runs: {len(runs)} ({', '.join(f'{lab}: {n} seed(s)' for lab, n in seeds.items())}). "
             f"Evaluation: {runs[0].evaluation['eval']}.", "",
             "A difference is a win or a loss only when it exceeds the spread: the std over seeds when both "
             "sides have >= 2 seeds, otherwise 2 x the evaluation's standard error (about 95%); smaller "
             "differences read *within noise*. With one seed the evaluation's error does not include "
             "seed-to-seed variation of training, so a single-seed win or loss is provisional: "
             "`aria-hpc demo --full` (3 seeds) measures that spread. ↑ higher is better, ↓ lower is better.", "",
             "## Policy comparison", "", *table, ""]
    teacher = {g: v["teacher_accuracy"]["mean"] for g, v in runs[0].evaluation["groups"].items()
               if "teacher_accuracy" in v}
    if teacher:
        lines += ["The teacher's own samples of the same prompts, read by the same judge: "
                  + ", ".join(f"{g} {a:.3f}" for g, a in teacher.items()) + ".", ""]
    lines += ["## Per split group", "", "![groups](groups.png)", "", "![mse by timestep](mse_by_timestep.png)", ""]
    if figures["curves"]:
        lines += ["## Learning curves", "",
                  "Held-out output MSE per split group during training (the fixed group set, no sampling; mean "
                  "over seeds, band min..max). Steps to reach the baseline's final unseen MSE: "
                  + ", ".join(f"{lab} {steps_to_reach(runs, lab, baseline) or 'not reached'}"
                              for lab in summary if lab != baseline) + ".", "", "![curves](curves.png)", ""]
    if figures["mechanism"]:
        lines += ["## Mechanism", "",
                  "Top: the share of random-condition draws each policy gives a group (RC: its pool share). "
                  "Bottom: the group's tracked discrepancy over the pool-weighted mean (above 1: the tracker sees "
                  "the group as worse than average).", "", "![mechanism](mechanism.png)", ""]
    if figures["oracle"]:
        lines += ["## The oracle's ceiling", "",
                  "The held-out concept's output MSE and judge-accuracy gap against the share of all samples an "
                  "oracle is told to spend on it (0 = the baseline, its pool share under RC); mean over seeds, "
                  "every seed a dot: "
                  + "; ".join(f"{100 * s:g}%: MSE {np.mean(p['mse']):.4f}, gap {np.mean(p['gap']):+.3f} "
                              f"({len(p['mse'])} seeds)" for s, p in oracle_points(runs, baseline).items()
                              if p["mse"] and p["gap"]) + ".", "", "![oracle](oracle.png)", ""]
    if figures["heatmaps"]:
        lines += ["## Region estimate and allocation over training", "",
                  "Regions sorted by their dominant split; right: how far each policy's allocation q_k leaves "
                  "the pool share pi_k (RC is 0 everywhere by construction).", "", "![regions](regions.png)", ""]
    lines += ["## Samples", ""]
    for g in GROUPS[:4]:
        if figures[f"samples_{g}"]:
            lines += [f"![samples {g}](samples_{g}.png)", ""]
    lines += ["## Runs", "", "| run | label | seed | steps | eval s |", "|---|---|---|---|---|"]
    for r in runs:
        t = sum(r.evaluation.get("timings", {}).values())
        lines.append(f"| {r.path} | {r.label} | {r.evaluation['seed']} | {r.evaluation['steps']} | {t:.0f} |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return {"report": out / "report.md", "table": table, "figures": {k: v for k, v in figures.items() if v}}
