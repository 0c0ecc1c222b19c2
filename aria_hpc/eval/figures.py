"""The report's figures (PNG, matplotlib's Agg backend): per split group, MSE by timestep, learning
curves, the mechanism (draw shares and tracked discrepancy), the oracle's ceiling, region heat maps
and samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aria_hpc.eval.stats import GROUPS, METRICS, Run, curve_series, oracle_points


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
