"""`aria-hpc study STUDY.yaml`: policies x seeds on each world regime at equal steps, through submitit.

A study file names its regimes (config files, e.g. configs/regimes/*.yaml), the policies, the seeds,
overrides common to every member, and ARIA variants (named override lists, each run over the same
seeds). Per regime it builds the embeddings, regions and bank once under `dir/<regime>` (reused when
they match), trains and evaluates every member that has no committed summary yet (two at a time on
the local executor: launch.array_parallelism), and copies each finished member's summary (eval.json,
config.yaml, metrics.jsonl, eval_samples.npz, summary.json: arm, seed, timings) to `docs/<regime>/<member>/`
as soon as it finishes. A rerun skips committed members, so a study can span sessions. The report (per regime:
report.md + figures; over all regimes: README.md) is written from the committed summaries only, so
`aria-hpc study STUDY.yaml --report-only` regenerates it without training.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from aria_hpc.config import read_yaml
from aria_hpc.errors import ConfigError, UserError
from aria_hpc.fsio import atomic_write_text, replaced_dir

STUDY_KEYS = {"dir", "docs", "regimes", "policies", "seeds", "overrides", "variants", "baseline", "question", "rule",
              "select"}
SELECT_KEYS = {"arms", "default", "tie"}
RULES = ("spread", "paired")
SUMMARY_FILES = ("eval.json", "config.yaml", "metrics.jsonl", "eval_samples.npz")


@dataclass
class Study:
    path: Path
    dir: Path  # work: embeddings, banks, runs
    docs: Path  # committed summaries and the report
    regimes: dict[str, Path]
    policies: list[str]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    variants: dict[str, list[str]] = field(default_factory=dict)  # ARIA variants: name -> overrides
    baseline: str = "rc"
    question: str = ""
    rule: str = "spread"  # the verdict: beyond the seed spread (v1-v3), or the paired 95% interval (v4)
    select: dict = field(default_factory=dict)  # a selection rule the report evaluates (arms, default, tie)


def load_study(path: str | Path) -> Study:
    path = Path(path)
    data = read_yaml(path, f"study file {path} does not exist (e.g. configs/studies/select.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping (dir, docs, regimes, policies, seeds, ...)")
    unknown = sorted(set(data) - STUDY_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown study key '{unknown[0]}' (known: {', '.join(sorted(STUDY_KEYS))})")
    for key in ("dir", "docs", "regimes", "seeds"):
        if not data.get(key):
            raise ConfigError(f"{path}: '{key}' is required")
    root = path.parent

    def rel(p) -> Path:  # study paths: configs relative to the study file, dir/docs to the working directory
        return Path(p) if Path(p).is_absolute() else root / p
    regimes = {str(k): rel(v) for k, v in dict(data["regimes"]).items()}
    study = Study(path, Path(data["dir"]), Path(data["docs"]), regimes, list(data.get("policies", [])),
                  [int(s) for s in data["seeds"]], list(data.get("overrides", [])),
                  {str(k): list(v or []) for k, v in dict(data.get("variants", {})).items()},
                  str(data.get("baseline", "rc")), str(data.get("question", "")), str(data.get("rule", "spread")),
                  dict(data.get("select") or {}))
    if study.rule not in RULES:
        raise ConfigError(f"{path}: rule '{study.rule}' is not one of {', '.join(RULES)}")
    bad = [p for p in study.policies if p not in ("paired", "rc", "aria")]
    if bad:
        raise ConfigError(f"{path}: policy '{bad[0]}' is not one of paired, rc, aria")
    clash = set(study.variants) & {"paired", "rc", "aria"}
    if clash:
        raise ConfigError(f"{path}: variant name '{sorted(clash)[0]}' is a policy name; give it another")
    if study.select:
        arms = [a for a, _ in regime_arms(study)]
        unknown = sorted(set(study.select) - SELECT_KEYS)
        if unknown:
            raise ConfigError(f"{path}: unknown select key '{unknown[0]}' (known: {', '.join(sorted(SELECT_KEYS))})")
        if study.rule != "paired":
            raise ConfigError(f"{path}: 'select' needs rule: paired (it ranks the arms' paired MSE ratios)")
        named = [*study.select.get("arms", []), study.select.get("default", "")]
        bad = [a for a in named if a not in arms]
        if not study.select.get("arms") or bad:
            raise ConfigError(f"{path}: select.arms and select.default must name arms of the study "
                              f"({', '.join(arms)}){f'; {bad[0]!r} is not one' if bad else ''}")
    for name in study.regimes:
        for member in regime_members(study, name):  # every member resolves before anything runs
            member.resolve()
    return study


def regime_overrides(study: Study, name: str) -> list[str]:
    from aria_hpc.launch.stages import demo_overrides

    return [*demo_overrides((study.dir / name).resolve()), *study.overrides]


def regime_arms(study: Study) -> list[tuple[str, list[str]]]:
    """(arm, overrides) of every arm: the policies, then the variants (ARIA unless a variant sets
    train.policy itself: its overrides come after)."""
    return [*((p, [f"train.policy={p}"]) for p in study.policies),
            *((v, ["train.policy=aria", *ov]) for v, ov in study.variants.items())]


def arm_inputs(study: Study, name: str, extra: list[str]) -> list[str]:
    """Where an arm's region map and bank live: the regime's own, or, for regions of teacher features,
    a map and bank of their own beside them (a bank is built over one region map)."""
    from aria_hpc.config import load_config

    cfg = load_config(study.regimes[name], [*regime_overrides(study, name), *extra])
    if cfg.regions.features == "text":
        return []
    root = (study.dir / name).resolve()
    tag = cfg.regions.features + (f"-s{cfg.regions.signature_sample}" if cfg.regions.signature_sample else "")
    return [f"regions.path={root / 'embeddings' / f'regions-{tag}.h5'}", f"bank.dir={root / f'bank-{tag}'}"]


def regime_members(study: Study, name: str):
    from aria_hpc.launch.members import Member

    base = regime_overrides(study, name)
    out = []
    arms = [(arm, [*extra, *arm_inputs(study, name, extra)]) for arm, extra in regime_arms(study)]
    for seed in study.seeds:
        for arm, extra in arms:
            run_dir = (study.dir / name / "runs" / f"{arm}-s{seed}").resolve()
            out.append(Member(f"{arm}-s{seed}", str(study.regimes[name].resolve()),
                              [*base, *extra, f"seed={seed}", f"run.dir={run_dir}"], seed=seed, run_dir=run_dir))
    return out


def regime_inputs(study: Study, name: str, members) -> list:
    """The distinct inputs (region map and bank) the members need, each as the config that builds it
    (the regime's seed: regions and banks are shared by every training seed)."""
    from aria_hpc.config import load_config

    wanted = {m.name.rsplit("-s", 1)[0] for m in members}
    out = {}
    for arm, extra in regime_arms(study):
        if arm in wanted:
            inputs = arm_inputs(study, name, extra)
            out.setdefault(tuple(inputs), load_config(study.regimes[name], [*regime_overrides(study, name), *extra,
                                                                            *inputs]))
    return list(out.values())


def summary_dir(study: Study, regime: str, member: str) -> Path:
    return study.docs / regime / member


def commit_summary(study: Study, regime: str, member, result: dict) -> Path:
    """Copy a finished member's summary under docs (written aside, then renamed into place)."""
    dest = summary_dir(study, regime, member.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replaced_dir(dest) as tmp:
        for name in SUMMARY_FILES:
            src = Path(member.run_dir) / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
        arm = member.name.rsplit("-s", 1)[0]  # the report labels a summary by its arm (policy or variant)
        (tmp / "summary.json").write_text(json.dumps({"arm": arm, "seed": member.seed,
                                                      **{k: result.get(k) for k in ("train_s", "eval_s")}}))
    return dest


def run_study(study: Study, executor: str = "local", only: list[str] | None = None, log=print) -> dict:
    from aria_hpc.build.bank import build_bank
    from aria_hpc.config import load_config
    from aria_hpc.launch.members import run_members
    from aria_hpc.launch.preflight import check_members
    from aria_hpc.launch.stages import ensure_embeddings, ensure_regions

    names = only or list(study.regimes)
    missing = [n for n in names if n not in study.regimes]
    if missing:
        raise UserError(f"--regime {missing[0]}: the study has regimes {', '.join(study.regimes)}")
    t_start = time.perf_counter()
    ran = 0
    for name in names:
        members = regime_members(study, name)
        pending = [m for m in members if not (summary_dir(study, name, m.name) / "eval.json").is_file()]
        log(f"[study] {name}: {len(members) - len(pending)} of {len(members)} members committed, {len(pending)} to run")
        if not pending:
            continue
        cfg = load_config(study.regimes[name], regime_overrides(study, name))
        log(f"[study] {name}: {ensure_embeddings(cfg, log)}")
        for inputs in regime_inputs(study, name, pending):
            log(f"[study] {name}: {ensure_regions(inputs, log)}")
            bank = build_bank(inputs, log=lambda _m: None)
            log(f"[study] {name}: bank {inputs.bank.dir}: {bank['manifest']['entries']} entries, "
                f"teacher forwards {bank['teacher_forwards']}")
        check_members(pending, executor, label=f"study member {name}/")
        wave = max(1, cfg.launch.array_parallelism) if executor != "slurm" else len(pending)
        for start in range(0, len(pending), wave):
            batch = pending[start:start + wave]
            results = run_members(batch, cfg.launch, executor, study.dir / name / "submitit", log=log)
            for m in batch:
                r = results[m.name]
                if r["state"] == "finished":
                    log(f"[study] {name}/{m.name}: committed {commit_summary(study, name, m, r['result'])}")
                    ran += 1
                else:
                    log(f"[study] {name}/{m.name}: {r['state']} ({r.get('error')}; log {r['stderr']}); "
                        "rerun the same command to retry it")
    wall = time.perf_counter() - t_start
    _log_invocation(study, executor, names, ran, wall)
    report = write_study_report(study)
    return {"members_run": ran, "wall_s": wall, "report": report}


def _log_invocation(study: Study, executor: str, regimes: list[str], ran: int, wall: float) -> None:
    path = study.docs / "invocations.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    entries.append({"command": f"aria-hpc study {study.path} --executor {executor}", "regimes": regimes,
                    "members_run": ran, "wall_s": round(wall, 1), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    study.docs.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(entries, indent=1))


def regime_table(runs, summary, baseline: str) -> tuple[list[str], dict]:
    """The pre-registered comparison of one regime: per arm, the held-out (unseen) group's output MSE
    and judge accuracy (mean ± std over seeds), seen accuracy, the held-out gap (seen - unseen
    accuracy), steps to reach the baseline's final held-out MSE, and the verdict against the baseline
    (a win only beyond the seed spread)."""
    from aria_hpc.eval.stats import METRICS, compare, format_summary, steps_to_reach

    rows = ["| arm | seeds | unseen output MSE ↓ | unseen judge acc ↑ | seen judge acc ↑ | gap seen-unseen | "
            f"steps to {baseline}'s final unseen MSE | unseen MSE vs {baseline} | unseen acc vs {baseline} |",
            "|---|---|---|---|---|---|---|---|---|"]
    facts = {}
    for label, groups in summary.items():
        unseen, seen = groups.get("unseen", {}), groups.get("seen", {})
        mse, acc, sacc = unseen.get("mse"), unseen.get("student_accuracy"), seen.get("student_accuracy")
        gap = (sacc.mean - acc.mean) if sacc and acc else None
        verdicts = []
        for metric, value in (("mse", mse), ("student_accuracy", acc)):
            base = summary.get(baseline, {}).get("unseen", {}).get(metric)
            if label == baseline or value is None or base is None:
                verdicts.append("-")
            else:
                diff, spread, basis, verdict = compare(value, base, METRICS[metric][1], label, baseline)
                verdicts.append(f"{verdict} ({diff:+.3g}; {basis} {spread:.2g})")
        reach = steps_to_reach(runs, label, baseline) if label != baseline else None
        seeds = mse.seeds if mse else 0
        rows.append(f"| {label} | {seeds} | {format_summary(mse)} | {format_summary(acc)} | {format_summary(sacc)} | "
                    f"{'-' if gap is None else f'{gap:+.3f}'} | "
                    f"{'-' if label == baseline else (reach or 'not reached')} | "
                    + " | ".join(verdicts) + " |")
        facts[label] = {"gap": gap, "steps_to_baseline": reach, "verdicts": verdicts}
    return rows, facts


def _per_seed(runs, label: str, group: str, metric: str) -> dict[int, float]:
    out = {}
    for r in runs:
        value = r.evaluation["groups"].get(group, {}).get(metric)
        if r.label == label and value is not None:
            out[int(r.evaluation["seed"])] = value["mean"]
    return out


def final_sample_share(runs, label: str, group: str) -> float | None:
    """The share of all training samples whose condition is in `group` (mean over the label's seeds,
    from the last record of metrics.jsonl that counts them)."""
    shares = []
    for r in runs:
        if r.label == label:
            last = next((m["sample_share"] for m in reversed(r.metrics) if "sample_share" in m), None)
            if last is not None:
                shares.append(last.get(group, 0.0))
    return sum(shares) / len(shares) if shares else None


def sample_share_rows(runs) -> list[str]:
    """Each split group's share of all training samples per arm (mean over seeds, at the end of
    training; `null` is the unconditional draws of classifier-free guidance), the protocol's reach
    measure for every group, not only the held-out one."""
    everything = ("seen", "under", "unseen", "null")
    shares = {label: {g: final_sample_share(runs, label, g) for g in everything}
              for label in sorted({r.label for r in runs})}
    groups = [g for g in everything if any(s[g] for s in shares.values())]
    rows = ["| arm | " + " | ".join(f"{g} share of all samples" for g in groups) + " |",
            "|---|" + "---|" * len(groups)]
    for label, s in shares.items():
        cells = [s[g] for g in groups]
        if any(c is not None for c in cells):
            rows.append(f"| {label} | " + " | ".join("-" if c is None else f"{c:.2%}" for c in cells) + " |")
    return rows


def mean_draw_share(runs, label: str, group: str) -> float | None:
    """The share of random-condition draws the label's allocation gave `group`, averaged over the
    records of training (`group_share` in metrics.jsonl) and then over seeds: where the allocation
    moved, not only where it ended."""
    per_seed = []
    for r in runs:
        if r.label == label:
            values = [m["group_share"].get(group, 0.0) for m in r.metrics if "group_share" in m]
            if values:
                per_seed.append(sum(values) / len(values))
    return sum(per_seed) / len(per_seed) if per_seed else None


def paired_table(runs, baseline: str) -> tuple[list[str], dict]:
    """The v4 comparison of one regime (docs/study/v4/PROTOCOL.md): per arm against the baseline, seed
    by seed, the held-out (unseen) output MSE with its ratio and 95% t interval of the per-seed
    difference, the seen MSE ratio beside it (an edge that is the same on seen is a general one),
    the held-out judge accuracy difference and interval, the gap (seen - unseen accuracy) and the
    share of the baseline's gap closed, the held-out share of random-condition draws (mean over
    training) and of all training samples, steps to the baseline's final held-out MSE, and the v3
    rule's verdict for continuity."""
    from aria_hpc.eval.paired import gap_closure, paired
    from aria_hpc.eval.stats import METRICS, compare, format_summary, steps_to_reach, summarise

    summary = summarise(runs)
    rows = [f"| arm | seeds | unseen MSE ↓ | unseen MSE / {baseline} | seen MSE / {baseline} | Δ unseen MSE, 95% CI | "
            f"Δ unseen acc, 95% CI | gap seen-unseen acc | gap closed | unseen share of RC draws | "
            f"unseen share of all samples | steps to {baseline}'s final unseen MSE | paired verdict (MSE) | "
            "v3 rule (MSE) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    facts = {}
    base_gap = None
    if baseline in summary:
        b = summary[baseline]
        if "student_accuracy" in b.get("seen", {}) and "student_accuracy" in b.get("unseen", {}):
            base_gap = b["seen"]["student_accuracy"].mean - b["unseen"]["student_accuracy"].mean
    base_gap_ci = paired(_per_seed(runs, baseline, "seen", "student_accuracy"),
                         _per_seed(runs, baseline, "unseen", "student_accuracy"))
    for label, groups in summary.items():
        mse = groups.get("unseen", {}).get("mse")
        acc, sacc = groups.get("unseen", {}).get("student_accuracy"), groups.get("seen", {}).get("student_accuracy")
        gap = sacc.mean - acc.mean if acc and sacc else None
        share, draws = final_sample_share(runs, label, "unseen"), mean_draw_share(runs, label, "unseen")
        cells = {"ratio": "-", "seen_ratio": "-", "dmse": "-", "dacc": "-", "closed": "-", "reach": "-",
                 "verdict": "-", "v3": "-"}
        fact = {"gap": gap, "unseen_sample_share": share, "unseen_draw_share": draws}
        if label != baseline and baseline in summary:
            pm = paired(_per_seed(runs, label, "unseen", "mse"), _per_seed(runs, baseline, "unseen", "mse"))
            ps = paired(_per_seed(runs, label, "seen", "mse"), _per_seed(runs, baseline, "seen", "mse"))
            pa = paired(_per_seed(runs, label, "unseen", "student_accuracy"),
                        _per_seed(runs, baseline, "unseen", "student_accuracy"))
            if pm:
                cells.update(ratio=f"{pm.ratio:.3f}", dmse=f"{pm.diff_mean:+.4f} [{pm.lo:+.4f}, {pm.hi:+.4f}]",
                             verdict=pm.verdict(higher_better=False))
                fact.update(mse_ratio=pm.ratio, mse_diff=pm.diff_mean, mse_ci=(pm.lo, pm.hi), verdict=cells["verdict"],
                            paired_seeds=pm.seeds)
            if ps:
                cells["seen_ratio"] = f"{ps.ratio:.3f}"
                fact["seen_mse_ratio"] = ps.ratio
            if pa:
                cells["dacc"] = f"{pa.diff_mean:+.3f} [{pa.lo:+.3f}, {pa.hi:+.3f}]"
                fact.update(acc_diff=pa.diff_mean, acc_ci=(pa.lo, pa.hi), acc_verdict=pa.verdict(higher_better=True))
            if gap is not None and base_gap is not None:
                fact["gap_closed"] = gap_closure(gap, base_gap)
                cells["closed"] = f"{fact['gap_closed']:+.0%}"
            base = summary[baseline].get("unseen", {}).get("mse")
            if mse and base:
                cells["v3"] = compare(mse, base, METRICS["mse"][1], label, baseline)[3]
            reach = steps_to_reach(runs, label, baseline)
            cells["reach"] = str(reach or "not reached")
            fact["steps_to_baseline"] = reach
        rows.append(f"| {label} | {mse.seeds if mse else 0} | {format_summary(mse)} | {cells['ratio']} | "
                    f"{cells['seen_ratio']} | {cells['dmse']} | {cells['dacc']} | "
                    f"{'-' if gap is None else f'{gap:+.3f}'} | {cells['closed']} | "
                    f"{'-' if draws is None else f'{draws:.2%}'} | {'-' if share is None else f'{share:.2%}'} | "
                    f"{cells['reach']} | {cells['verdict']} | {cells['v3']} |")
        facts[label] = fact
    if base_gap_ci and base_gap_ci.lo <= 0 <= base_gap_ci.hi:
        rows += ["", f"{baseline}'s gap (seen - unseen accuracy, paired by seed) is {base_gap_ci.diff_mean:+.3f} "
                 f"[{base_gap_ci.lo:+.3f}, {base_gap_ci.hi:+.3f}]: its interval includes 0, so the gap-closed column "
                 "divides by noise here; the held-out MSE columns carry the comparison."]
    return rows, facts


def select_arm(ratios: dict[str, dict[str, float]], arms: list[str], default: str, tie: float) -> tuple[str, dict]:
    """A study's selection rule (study v4's, docs/study/v4/PROTOCOL.md): among `arms`, the one with the
    lowest mean over regimes of its held-out MSE ratio to the baseline; `default` wins when its mean is
    within `tie` of the lowest. ratios: regime -> arm -> ratio. Returns (chosen, arm -> mean)."""
    means = {a: sum(r[a] for r in ratios.values()) / len(ratios) for a in arms}
    best = min(arms, key=lambda a: means[a])
    return (default if means[default] - means[best] <= tie else best), means


def selection_lines(study: Study, facts: dict[str, dict], complete: bool) -> list[str]:
    """The report's section on the study's selection rule: each arm's held-out MSE ratio per regime,
    their mean, and the arm chosen (provisional until every member of every regime is committed)."""
    arms, default, tie = study.select["arms"], study.select["default"], float(study.select.get("tie", 0.0))
    ratios = {r: {a: f[a]["mse_ratio"] for a in arms if "mse_ratio" in f.get(a, {})} for r, f in facts.items()}
    lines = ["## Selection rule", "",
             f"Among {', '.join(arms)}: the lowest mean over regimes of the held-out MSE ratio to {study.baseline} "
             f"(paired by seed); {default} when its mean is within {tie:g} of the lowest.", "",
             f"| arm | {' | '.join(study.regimes)} | mean |", "|---|" + "---|" * (len(study.regimes) + 1)]
    have_all = all(len(ratios.get(r, {})) == len(arms) for r in study.regimes)
    chosen, means = select_arm({r: ratios[r] for r in study.regimes}, arms, default, tie) if have_all else ("", {})
    for a in arms:
        cells = [f"{ratios[r][a]:.3f}" if a in ratios.get(r, {}) else "-" for r in study.regimes]
        lines.append(f"| {a} | {' | '.join(cells)} | {f'{means[a]:.3f}' if a in means else '-'} |")
    if not have_all:
        return [*lines, "", "Chosen: none yet (an arm has no paired ratio on some regime).", ""]
    overrides = dict(regime_arms(study))[chosen][1:]
    state = "chosen" if complete else "provisional (not every member is committed; the rule applies only to all)"
    return [*lines, "", f"**{chosen}**: {state}; its overrides: `{overrides}`.", ""]


def committed_tables(config: str | Path, studies: list[Path], root: str | Path) -> list[tuple[str, list[str]]]:
    """The committed multi-seed table of every study regime that runs `config`: (title, table rows) per
    study file in `studies` (docs paths taken relative to `root`, the checkout), from the committed
    summaries only. What the demo prints beside its own single-seed run."""
    from aria_hpc.eval.stats import load_runs, summarise

    config, root, out = Path(config).resolve(), Path(root).resolve(), []

    def shown(p: Path) -> Path:
        return p.relative_to(root) if p.is_relative_to(root) else p
    for path in (Path(p).resolve() for p in studies):
        study = load_study(path)
        docs = study.docs if study.docs.is_absolute() else root / study.docs
        for name, regime in study.regimes.items():
            dirs = sorted(d for d in (docs / name).glob("*") if (d / "eval.json").is_file())
            if regime.resolve() != config or not dirs:
                continue
            runs = load_runs(dirs)
            rows, _ = regime_table(runs, summarise(runs), study.baseline)
            seeds = sorted({json.loads((d / "summary.json").read_text())["seed"] for d in dirs
                            if (d / "summary.json").is_file()})
            out.append((f"{shown(path)}, regime {name}: {len(dirs)} committed members, seeds {seeds} "
                        f"(report {shown(docs / name / 'report.md')})", rows))
    return out


def write_study_report(study: Study) -> Path:
    """Per regime with committed summaries: report.md + figures; over all: docs/README.md."""
    from aria_hpc.eval.report import write_report
    from aria_hpc.eval.stats import load_runs, summarise

    lines = [f"# Study: {study.path.name}", ""]
    if study.question:
        lines += [study.question.strip(), ""]
    selection_facts, complete = {}, True
    lines += [f"Regenerate: `aria-hpc study {study.path} --report-only` (from the summaries under {study.docs}, no "
              f"training). Policies {study.policies}, variants {study.variants or '{}'}, seeds {study.seeds}. "
              + ("A verdict is the 95% Student-t interval of the per-seed difference against the baseline (paired "
                 "by seed): better or worse only when it excludes 0." if study.rule == "paired" else
                 "A difference is a win or a loss only beyond the std over seeds, with >= 3 seeds on both sides."), ""]
    for name, config in study.regimes.items():
        dirs = sorted(d for d in (study.docs / name).glob("*") if (d / "eval.json").is_file())
        lines += [f"## {name} ({config.name})", ""]
        if not dirs:
            lines += ["No member committed yet.", ""]
            complete = False
            continue
        write_report(dirs, study.docs / name, baseline=study.baseline)
        runs = load_runs(dirs)
        rows, facts = (paired_table(runs, study.baseline) if study.rule == "paired"
                       else regime_table(runs, summarise(runs), study.baseline))
        if study.rule == "paired":
            atomic_write_text(study.docs / name / "paired.json", json.dumps(facts, indent=1, default=str))
            selection_facts[name] = facts
            rows += ["", *sample_share_rows(runs)]
        complete = complete and len(dirs) == len(study.seeds) * len(regime_arms(study))
        train_s = [json.loads((d / "summary.json").read_text()).get("train_s") or 0 for d in dirs
                   if (d / "summary.json").is_file()]
        lines += [*rows, "", f"{len(dirs)} members; training {sum(train_s) / 60:.1f} min in all "
                  f"({max(train_s, default=0):.0f} s the longest). Full report: "
                  f"[{name}/report.md]({name}/report.md).", ""]
    if study.select:
        lines += selection_lines(study, selection_facts, complete)
    inv = study.docs / "invocations.json"
    if inv.is_file():
        entries = json.loads(inv.read_text())
        lines += ["## Invocations", "", "| command | regimes | members run | wall s | when |", "|---|---|---|---|---|"]
        lines += [f"| `{e['command']}` | {', '.join(e['regimes'])} | {e['members_run']} | {e['wall_s']} | {e['time']} |"
                  for e in entries]
    study.docs.mkdir(parents=True, exist_ok=True)
    out = study.docs / "README.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
