"""`aria-hpc report RUN_DIR... [--out DIR]`: markdown + PNG figures comparing policies per split group.

Runs are grouped by label: the policy, plus any config value (other than the seed and paths) in which
runs differ. Per label and group a metric has a mean over seeds and a spread: the standard deviation
over seeds when both compared labels have >= 2 seeds, otherwise the evaluation's own sampling error
(2 x the combined standard error, about a 95% interval). A difference smaller than that spread is
labelled "within noise" rather than a win or a loss.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aria_hpc.config import LABEL_IGNORED, matches
from aria_hpc.errors import UserError
from aria_hpc.fsio import atomic_write_text
from aria_hpc.splits import REPORT_GROUPS

GROUPS = REPORT_GROUPS
# metric key in eval.json groups -> (column title, higher is better)
METRICS = {
    "mse": ("output MSE", False),
    "student_accuracy": ("judge accuracy", True),
    "frechet": ("Frechet (judge features)", False),
    "student_clip_score": ("CLIP score", True),
    "fid_student_vs_teacher": ("FID vs teacher", False),
}


@dataclass
class Run:
    path: Path
    config: dict
    evaluation: dict
    metrics: list[dict]
    label: str = ""


@dataclass
class Summary:
    mean: float
    spread_seeds: float | None  # std over seeds (None with one seed)
    se: float  # evaluation standard error of the mean over seeds
    seeds: int
    values: list[float] = field(default_factory=list)


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    import yaml

    from aria_hpc.config import flatten, load_config

    runs = []
    for d in map(Path, run_dirs):
        if not (d / "eval.json").is_file():
            raise UserError(f"{d} has no eval.json: run `aria-hpc eval {d}` first")
        cfg = load_config(d / "config.yaml", stored=True) if (d / "config.yaml").is_file() else None
        config = flatten(cfg) if cfg else yaml.safe_load("{}")
        metrics = []
        if (d / "metrics.jsonl").is_file():
            metrics = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        runs.append(Run(d, config, json.loads((d / "eval.json").read_text()), metrics))
    if not runs:
        raise UserError("give at least one run directory")
    _label(runs)
    for r in runs:  # a study's summary names its arm (policy or ARIA variant) itself
        if (r.path / "summary.json").is_file():
            r.label = json.loads((r.path / "summary.json").read_text()).get("arm", r.label)
    return runs


def _label(runs: list[Run]) -> None:
    keys = sorted({k for r in runs for k in r.config})
    differ = [k for k in keys if not matches(k, LABEL_IGNORED)
              and len({json.dumps(r.config.get(k), default=str) for r in runs}) > 1]
    for r in runs:
        extra = ",".join(f"{k.split('.')[-1]}={r.config.get(k)}" for k in differ)
        r.label = r.evaluation["policy"] + (f"[{extra}]" if extra else "")


def summarise(runs: list[Run]) -> dict[str, dict[str, dict[str, Summary]]]:
    """label -> group -> metric -> Summary over the label's runs (seeds)."""
    out: dict = {}
    for label in dict.fromkeys(r.label for r in runs):
        mine = [r for r in runs if r.label == label]
        out[label] = {}
        for group in GROUPS:
            for metric in METRICS:
                vals = [r.evaluation["groups"].get(group, {}).get(metric) for r in mine]
                vals = [v for v in vals if v is not None]
                if not vals:
                    continue
                means = [v["mean"] for v in vals]
                se = math.sqrt(sum(v["se"] ** 2 for v in vals)) / len(vals)
                out[label].setdefault(group, {})[metric] = Summary(
                    float(np.mean(means)), float(np.std(means, ddof=1)) if len(means) > 1 else None, se,
                    len(means), means)
    return out


VERDICT_SEEDS = 3  # a comparison between policies is a claim about seeds: "better" / "worse" need this many


def compare(a: Summary, b: Summary, higher_better: bool, name_a: str, name_b: str) -> tuple[float, float, str, str]:
    """(difference a - b, the spread it is judged against, how that spread was measured, verdict).
    "within noise" when the difference is inside the spread (the larger std over seeds, or with one
    seed twice the evaluation's combined SE); beyond it, "better" / "worse" only when both sides have
    VERDICT_SEEDS seeds, and "ahead" / "behind" (not a verdict) with fewer."""
    diff = a.mean - b.mean
    if a.spread_seeds is not None and b.spread_seeds is not None:
        spread, basis = max(a.spread_seeds, b.spread_seeds), "seed std"
    else:
        spread, basis = 2 * math.hypot(a.se, b.se), "1 seed, 2 x eval SE"
    if abs(diff) <= spread:
        return diff, spread, basis, "within noise"
    better = (diff > 0) == higher_better
    if min(a.seeds, b.seeds) >= VERDICT_SEEDS:
        return diff, spread, basis, f"{name_a} {'better' if better else 'worse'}"
    seeds = min(a.seeds, b.seeds)
    return diff, spread, basis, (f"{name_a} {'ahead' if better else 'behind'} ({seeds} seed{'s' * (seeds > 1)}: "
                                 "not a verdict)")


def format_summary(s: Summary | None) -> str:
    if s is None:
        return "-"
    spread = f" ± {s.spread_seeds:.3g}" if s.spread_seeds is not None else f" (SE {s.se:.2g})"
    return f"{s.mean:.4g}{spread}"


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


# ---- figures -------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def region_order(composition: np.ndarray) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Regions sorted by their dominant split group; (order, [(first row of a group block, name)])."""
    comp = np.asarray(composition, dtype=np.float64)
    dominant = comp.argmax(1)
    share = comp[np.arange(len(comp)), dominant] / np.maximum(comp.sum(1), 1)
    order = np.lexsort((-share, dominant))
    blocks = [(int(np.searchsorted(dominant[order], g)), GROUPS[g]) for g in np.unique(dominant)]
    return order, blocks


def plot_heatmaps(runs: list[Run], path: Path) -> Path | None:
    """Per label (its first run): the region estimate m_k and the allocation q_k / pi_k over training."""
    plt = _plt()
    shown = [next(r for r in runs if r.label == lab) for lab in dict.fromkeys(r.label for r in runs)]
    shown = [r for r in shown if any("allocation" in m for m in r.metrics)]
    if not shown:
        return None
    fig, axes = plt.subplots(len(shown), 2, figsize=(11, 3.2 * len(shown)), squeeze=False)
    for row, run in zip(axes, shown):
        recs = [m for m in run.metrics if "allocation" in m]
        steps = [m["step"] for m in recs]
        comp = np.asarray(run.evaluation["regions"]["composition"], dtype=np.float64)
        pi = comp.sum(1) / comp.sum()
        order, blocks = region_order(comp)
        est = np.array([m["region_estimate"] for m in recs])[:, order].T
        tilt = np.log2(np.maximum(np.array([m["allocation"] for m in recs]), 1e-12) / np.maximum(pi, 1e-12))[:, order].T
        for ax, data, title, cmap, kw in (
                (row[0], est, "estimate m_k (normalised discrepancy)", "viridis", {}),
                (row[1], tilt, "allocation log2(q_k / pi_k)", "coolwarm", {"vmin": -2, "vmax": 2})):
            im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap, **kw,
                           extent=(steps[0] - 0.5, steps[-1] + 0.5, len(order) - 0.5, -0.5))
            for start, name in blocks:
                ax.axhline(start - 0.5, color="k", lw=0.8)
                ax.text(steps[0], start + 0.5, name, fontsize=7, va="top", color="w" if cmap == "viridis" else "k")
            ax.set_title(f"{run.label}: {title}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("region (by dominant split)")
            fig.colorbar(im, ax=ax)
    return _save(plt, fig, path)


def plot_groups(summary: dict, path: Path) -> Path:
    """Per metric, bars per split group and label: mean over seeds, error bar = spread, dots = seeds."""
    plt = _plt()
    labels = list(summary)
    groups = [g for g in GROUPS[:4] if any(g in summary[lab] for lab in labels)]
    metrics = [m for m in METRICS if any(m in summary[lab].get(g, {}) for lab in labels for g in groups)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    width = 0.8 / len(labels)
    for ax, metric in zip(axes[0], metrics):
        for i, lab in enumerate(labels):
            xs = np.arange(len(groups)) + (i - (len(labels) - 1) / 2) * width
            s = [summary[lab].get(g, {}).get(metric) for g in groups]
            ax.bar(xs, [v.mean if v else np.nan for v in s], width, label=lab,
                   yerr=[(v.spread_seeds if v and v.spread_seeds is not None else 2 * v.se if v else 0) for v in s],
                   capsize=3)
            for x, v in zip(xs, s):
                if v and len(v.values) > 1:
                    ax.plot([x] * len(v.values), v.values, "k.", ms=3)
        title, higher = METRICS[metric]
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.set_title(f"{title} ({'higher' if higher else 'lower'} is better)", fontsize=9)
    axes[0][0].legend(fontsize=8)
    return _save(plt, fig, path)


def plot_timesteps(runs: list[Run], path: Path) -> Path:
    plt = _plt()
    def curve(r: Run, g: str):
        return r.evaluation["groups"].get(g, {}).get("mse_by_timestep")

    groups = [g for g in GROUPS[:4] if any(curve(r, g) for r in runs)]
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(4 * max(1, len(groups)), 3.2), squeeze=False,
                             sharey=True)
    for ax, g in zip(axes[0], groups):
        for lab in dict.fromkeys(r.label for r in runs):
            curves = np.array([curve(r, g) for r in runs if r.label == lab and curve(r, g)], dtype=np.float64)
            if not len(curves):
                continue
            ax.plot((np.arange(curves.shape[1]) + 0.5) / curves.shape[1], np.nanmean(curves, 0), marker=".", label=lab)
        ax.set_title(f"{g}: output MSE by timestep", fontsize=9)
        ax.set_xlabel("t / T")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    return _save(plt, fig, path)


def plot_samples(runs: list[Run], group: str, path: Path) -> Path | None:
    """Rows: the teacher, then each label's first run; columns: the group's first prompts."""
    plt = _plt()
    shown = [next(r for r in runs if r.label == lab) for lab in dict.fromkeys(r.label for r in runs)]
    grids = [np.load(r.path / "eval_samples.npz") for r in shown if (r.path / "eval_samples.npz").is_file()]
    if len(grids) != len(shown) or f"{group}/teacher" not in grids[0]:
        return None
    rows = [("teacher", grids[0][f"{group}/teacher"])]
    rows += [(r.label, g[f"{group}/student"]) for r, g in zip(shown, grids)]
    prompts = grids[0][f"{group}/prompts"]
    cols = len(prompts)
    if cols == 0:
        return None
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols, 1.45 * len(rows) + 0.4), squeeze=False)
    for i, (name, images) in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.imshow(((images[j].astype(np.float32).transpose(1, 2, 0) + 1) / 2).clip(0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
            if i == 0:
                ax.set_title("\n".join(_wrap(str(prompts[j]), 22)), fontsize=5)
    fig.suptitle(f"{group} prompts: teacher vs students (same DDIM seed)", fontsize=9)
    return _save(plt, fig, path)


def curve_series(runs: list[Run], key: str, group: str,
                 over: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (steps, values (seeds, steps)) of a per-group metrics.jsonl field (curve_mse,
    group_share, group_estimate), divided by the record's field `over` if given, over the steps
    every seed of the label logged."""
    out = {}
    for label in dict.fromkeys(r.label for r in runs):
        per_seed = [{m["step"]: m[key][group] / (m[over] if over else 1.0) for m in r.metrics
                     if group in m.get(key, {}) and (over is None or m.get(over))}
                    for r in runs if r.label == label]
        common = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
        if common:
            out[label] = (np.array(common), np.array([[d[s] for s in common] for d in per_seed]))
    return out


def steps_to_reach(runs: list[Run], label: str, baseline: str = "rc", group: str = "unseen") -> int | None:
    """The first logged step at which `label`'s held-out curve (mean over seeds) is at or below
    `baseline`'s final value (mean over seeds); None if it never gets there."""
    series = curve_series(runs, "curve_mse", group)
    if label not in series or baseline not in series:
        return None
    target = float(series[baseline][1][:, -1].mean())
    steps, values = series[label]
    hit = np.flatnonzero(values.mean(axis=0) <= target)
    return int(steps[hit[0]]) if len(hit) else None


def _band(ax, steps, values, label):
    mean = values.mean(axis=0)
    ax.plot(steps, mean, label=f"{label} ({len(values)} seed{'s' if len(values) > 1 else ''})")
    if len(values) > 1:
        lo, hi = values.min(axis=0), values.max(axis=0)
        ax.fill_between(steps, lo, hi, alpha=0.2)


def plot_curves(runs: list[Run], path: Path) -> Path | None:
    """Held-out output MSE against step per split group: mean over seeds, band = min..max."""
    groups = [g for g in ("unseen", "under", "seen") if curve_series(runs, "curve_mse", g)]
    if not groups:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, g in zip(axes[0], groups):
        for label, (steps, values) in curve_series(runs, "curve_mse", g).items():
            _band(ax, steps, values, label)
        ax.set_title(f"{g}: held-out output MSE")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_mechanism(runs: list[Run], path: Path) -> Path | None:
    """Per split group: each policy's share of random-condition draws, and the group's tracked
    discrepancy relative to the pool-weighted mean, against step."""
    groups = [g for g in ("unseen", "under") if curve_series(runs, "group_share", g)]
    if not groups:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 6), squeeze=False)
    for j, g in enumerate(groups):
        for label, (steps, values) in curve_series(runs, "group_share", g).items():
            _band(axes[0, j], steps, 100 * values, label)
        axes[0, j].set_title(f"{g}: % of random-condition draws")
        for label, (steps, values) in curve_series(runs, "group_estimate", g, over="estimate_mean").items():
            _band(axes[1, j], steps, values, label)
        axes[1, j].axhline(1.0, color="grey", lw=0.8)
        axes[1, j].set_title(f"{g}: tracked discrepancy / pool mean")
        for ax in axes[:, j]:
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line][:3]


# ---- the report ------------------------------------------------------------------------------------


def oracle_points(runs: list[Run], baseline: str = "rc") -> dict[float, dict[str, list[float]]]:
    """share of all samples told to the oracle (0 = the baseline) -> per-seed held-out MSE and gap
    (seen - held-out judge accuracy), for the baseline and every oracle arm (rc.oracle_share > 0)."""
    out: dict[float, dict[str, list[float]]] = {}
    for r in runs:
        share = float(r.config.get("rc.oracle_share") or 0.0)
        if r.label != baseline and share == 0:
            continue
        g = r.evaluation["groups"]
        point = out.setdefault(share, {"mse": [], "gap": []})
        if "mse" in g.get("unseen", {}):
            point["mse"].append(g["unseen"]["mse"]["mean"])
        if "student_accuracy" in g.get("unseen", {}) and "student_accuracy" in g.get("seen", {}):
            point["gap"].append(g["seen"]["student_accuracy"]["mean"] - g["unseen"]["student_accuracy"]["mean"])
    return dict(sorted(out.items()))


def plot_oracle(runs: list[Run], path: Path, baseline: str = "rc") -> Path | None:
    """The oracle's ceiling: held-out MSE and gap against the share of all samples it is told (0 = rc);
    mean over seeds with every seed as a dot."""
    points = oracle_points(runs, baseline)
    if len(points) < 2:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, title in ((axes[0], "mse", "held-out output MSE"), (axes[1], "gap", "gap: seen - held-out accuracy")):
        xs = [100 * s for s in points]
        means = [float(np.mean(p[key])) if p[key] else np.nan for p in points.values()]
        ax.plot(xs, means, "o-")
        for x, p in zip(xs, points.values()):
            ax.scatter([x] * len(p[key]), p[key], s=10, alpha=0.5, color="grey")
        ax.set_xlabel("share of all samples on the held-out concept (%)")
        ax.set_title(title)
    return _save(plt, fig, path)


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
