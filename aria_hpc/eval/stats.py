"""Statistics over evaluated runs: runs grouped by label (the policy, plus any config value other than
the seed and paths in which runs differ), per label, split group and metric a mean over seeds and a
spread, and the verdict of one label against another. The spread is the standard deviation over seeds
when both compared labels have >= 2 seeds, otherwise the evaluation's own sampling error (2 x the
combined standard error, about a 95% interval); a smaller difference is "within noise". Learning-curve
and oracle series for the figures and the study come from here too."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aria_hpc.config import LABEL_IGNORED, matches
from aria_hpc.errors import UserError
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
