"""`aria-hpc study`: a tiny diluted-holdout regime end to end through submitit's local executor,
committed summaries, a rerun that skips them, and a report regenerated without training."""

import json
import shutil

import pytest
import yaml

from aria_hpc.errors import ConfigError


def write_study(tmp_path, tiny_world, **extra):
    path, _ = tiny_world
    cfg = yaml.safe_load(path.read_text())
    cfg.update(train={"steps": 4, "micro_batch_per_gpu": 8, "log_every": 2, "region_log_every": 2,
                      "checkpoint_every": 2, "curve_every": 2},
               aria={"warmup_steps": 2, "sync_every": 2},
               eval={"per_region": 2, "per_group": 3, "per_split_group": 8, "sample_steps": 2, "grid": 2},
               launch={"cpus_per_task": 1, "array_parallelism": 2, "timeout_min": 10},
               world={"unseen_pairs": [], "under_pairs": ["green ring", "magenta diamond", "white triangle"],
                      "heldout_colours": ["orange"], "heldout_share": 0.02})
    regime = tmp_path / "diluted.yaml"
    regime.write_text(yaml.safe_dump(cfg))
    study = {"dir": str(tmp_path / "work"), "docs": str(tmp_path / "docs"), "regimes": {"diluted": "diluted.yaml"},
             "policies": ["rc", "aria"], "seeds": [0, 1], **extra}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    return tmp_path / "study.yaml"


@pytest.mark.slow
def test_study_end_to_end_resumable_and_regenerable(tiny_world, tmp_path, aria_cli):
    """rc, aria and ARIA on teacher regions (its own signatures, region map and bank), paired by seed."""
    teacher_regions = ["regions.features=teacher", "regions.probe_noises=1", "regions.probe_timesteps=[0.9]",
                       "regions.signature_batch_size=2048"]
    study = write_study(tmp_path, tiny_world, variants={"aria_teacher": teacher_regions}, rule="paired")
    proc = aria_cli("study", str(study), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    docs = tmp_path / "docs"
    for member in ("rc-s0", "aria-s0", "rc-s1", "aria-s1", "aria_teacher-s0", "aria_teacher-s1"):
        assert (docs / "diluted" / member / "eval.json").is_file()
        assert json.loads((docs / "diluted" / member / "summary.json").read_text())["arm"] == member[:-3]
    work = tmp_path / "work" / "diluted"
    assert (work / "embeddings" / "regions-teacher.h5").is_file() and (work / "bank-teacher" / "manifest.json").is_file()
    assert (work / "embeddings" / "signatures" / "shard-00000-of-00001.h5").is_file()
    readme = (docs / "README.md").read_text()
    assert "| rc | 2 |" in readme and "| aria_teacher | 2 |" in readme and "steps to rc's final unseen MSE" in readme
    assert "95% Student-t interval of the per-seed difference" in readme and "unseen share of all samples" in readme
    assert "| arm | seen share of all samples |" in readme and "unseen share of RC draws" in readme
    paired = json.loads((docs / "diluted" / "paired.json").read_text())
    assert paired["aria_teacher"]["paired_seeds"] == [0, 1] and paired["aria"]["verdict"] in ("better", "worse",
                                                                                               "within noise")
    assert 0 <= paired["rc"]["unseen_sample_share"] < 0.1  # diluted orange: 1.2% of the pool (32 samples here)
    report = (docs / "diluted" / "report.md").read_text()
    assert "![curves](curves.png)" in report and (docs / "diluted" / "mechanism.png").stat().st_size > 1000
    metrics = [json.loads(line) for line in (docs / "diluted" / "aria-s0" / "metrics.jsonl").read_text().splitlines()]
    assert "unseen" in metrics[-1]["curve_mse"] and "unseen" in metrics[-1]["group_share"]

    from aria_hpc.launch.study import committed_tables  # what the demo prints beside its own run

    [(title, rows)] = committed_tables(tmp_path / "diluted.yaml", [study], tmp_path)
    assert "regime diluted: 6 committed members, seeds [0, 1]" in title and rows[2].startswith("| aria | 2 |")
    assert committed_tables(tmp_path / "study.yaml", [study], tmp_path) == []  # no study runs that file

    again = aria_cli("study", str(study), timeout=600)  # everything committed: nothing runs
    assert again.returncode == 0 and "6 of 6 members committed, 0 to run" in again.stdout, again.stdout[-2000:]
    shutil.rmtree(tmp_path / "work")  # the report needs only the committed summaries
    before = (docs / "diluted" / "report.md").read_text()
    regen = aria_cli("study", str(study), "--report-only")
    assert regen.returncode == 0, regen.stderr
    assert (docs / "diluted" / "report.md").read_text() == before


def test_study_file_errors(tiny_world, tmp_path):
    from aria_hpc.launch.study import load_study

    with pytest.raises(ConfigError, match="unknown study key 'policy'"):
        load_study(write_study(tmp_path, tiny_world, policy=["rc"]))
    with pytest.raises(ConfigError, match="rule 'majority' is not one of spread, paired"):
        load_study(write_study(tmp_path, tiny_world, rule="majority"))
    with pytest.raises(ConfigError, match="is a policy name"):
        load_study(write_study(tmp_path, tiny_world, variants={"rc": ["aria.alpha=2"]}))
    with pytest.raises(ConfigError, match="unknown config key 'aria.alpah'"):
        load_study(write_study(tmp_path, tiny_world, variants={"a2": ["aria.alpah=2"]}))
    study = load_study(write_study(tmp_path, tiny_world, variants={"a2": ["aria.alpha=2"]}))
    from aria_hpc.launch.study import regime_members

    names = [m.name for m in regime_members(study, "diluted")]
    assert names == ["rc-s0", "aria-s0", "a2-s0", "rc-s1", "aria-s1", "a2-s1"]


def test_heldout_draws_reads_the_range_over_steps_and_seeds(tmp_path):
    """scripts/heldout_draws.py (README's draw-share column): min-max over seeds and logged steps after
    the warm-up; a member without random-condition draws (paired) has no row."""
    import subprocess
    import sys

    from conftest import ROOT

    def member(name, rows):  # a committed summary: eval.json, summary.json (its arm), metrics.jsonl
        (tmp_path / name).mkdir()
        arm, seed = name.rsplit("-s", 1)
        (tmp_path / name / "eval.json").write_text(json.dumps({"policy": arm, "groups": {}}))
        (tmp_path / name / "summary.json").write_text(json.dumps({"arm": arm, "seed": int(seed)}))
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def logged(step, share, estimate):
        return {"step": step, "group_share": {"unseen": share}, "group_estimate": {"unseen": estimate},
                "estimate_mean": 0.5}
    member("aria-s0", [logged(100, 0.9, 5.0), logged(200, 0.02, 0.6), logged(300, 0.04, 1.0)])
    member("aria-s1", [{"step": 150, "loss": 1.0}, logged(100, 0.01, 0.1), logged(200, 0.03, 0.4),
                       logged(300, 0.03, 0.5)])
    member("paired-s0", [{"step": 200, "loss": 1.0}])
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "heldout_draws.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[2:] == [f"| {tmp_path} | aria | 2.00%-4.00% | 0.80-2.00 |"]


def test_paired_interval_and_gap_closure_with_known_values():
    from aria_hpc.eval.paired import gap_closure, paired, t_quantile

    p = paired({0: 1.0, 1: 2.0, 2: 3.0, 9: 5.0}, {0: 0.0, 1: 0.0, 2: 0.0})  # seed 9 has no partner
    assert p.seeds == [0, 1, 2] and p.diff_mean == 2.0
    half = 4.303 * 1.0 / 3 ** 0.5  # t_{0.975, 2} x sd 1 / sqrt(3)
    assert abs(p.lo - (2 - half)) < 1e-9 and abs(p.hi - (2 + half)) < 1e-9 and p.verdict(higher_better=False) == "within noise"
    tight = paired({s: 0.9 + 0.01 * s for s in range(5)}, {s: 1.0 + 0.012 * s for s in range(5)})
    assert tight.hi < 0 and tight.verdict(higher_better=False) == "better" and tight.verdict(True) == "worse"
    assert abs(tight.ratio - (0.92 / 1.024)) < 1e-9
    assert paired({0: 1.0}, {0: 2.0}) is None and t_quantile(100) == 1.96
    assert abs(gap_closure(0.05, 0.10) - 0.5) < 1e-12 and abs(gap_closure(0.15, 0.10) + 0.5) < 1e-12


def test_the_oracle_figure_plots_gap_and_mse_against_the_told_share(tmp_path):
    from aria_hpc.eval.figures import plot_oracle
    from aria_hpc.eval.stats import Run, oracle_points

    def run(label, share, seed, mse, seen, unseen):
        groups = {"unseen": {"mse": {"mean": mse}, "student_accuracy": {"mean": unseen}},
                  "seen": {"student_accuracy": {"mean": seen}}}
        return Run(tmp_path, {"rc.oracle_share": share}, {"groups": groups, "seed": seed}, [], label)
    runs = [run("rc", 0.0, s, 0.03, 0.99, 0.90) for s in (0, 1)] + \
           [run("oracle_10", 0.1, s, 0.02, 0.99, 0.97 + 0.01 * s) for s in (0, 1)] + [run("aria", 0.0, 0, 0.01, 1, 1)]
    points = oracle_points(runs)
    assert list(points) == [0.0, 0.1] and points[0.0]["mse"] == [0.03, 0.03]  # aria is neither
    assert [round(g, 3) for g in points[0.1]["gap"]] == [0.02, 0.01]
    assert plot_oracle(runs, tmp_path / "oracle.png").stat().st_size > 1000
    assert plot_oracle(runs[:2], tmp_path / "none.png") is None  # no oracle arm: no figure


def test_the_selection_rule_picks_the_lowest_mean_ratio_and_breaks_ties_toward_the_default(tiny_world, tmp_path):
    """Study v4's rule (docs/study/v4/PROTOCOL.md): lowest mean held-out MSE ratio over regimes; today's
    aria when within the tie of it; provisional until every member is committed; bad rules refused."""
    from aria_hpc.launch.study import load_study, select_arm, selection_lines

    ratios = {"rings": {"aria": 0.93, "reach": 0.80, "teacher": 0.97}, "orange": {"aria": 1.00, "reach": 1.05,
                                                                                 "teacher": 1.17}}
    chosen, means = select_arm(ratios, ["aria", "reach", "teacher"], "aria", 0.01)
    assert chosen == "reach" and abs(means["reach"] - 0.925) < 1e-12 and abs(means["aria"] - 0.965) < 1e-12
    assert select_arm(ratios, ["aria", "reach", "teacher"], "aria", 0.05)[0] == "aria"  # 0.04 apart: a tie

    rule = {"arms": ["aria", "reach"], "default": "aria", "tie": 0.01}
    study = load_study(write_study(tmp_path, tiny_world, rule="paired", variants={"reach": ["aria.reach=0.1"]},
                                   select=rule))
    facts = {"diluted": {"aria": {"mse_ratio": 0.95}, "reach": {"mse_ratio": 0.90}}}
    lines = selection_lines(study, facts, complete=False)
    assert "| reach | 0.900 | 0.900 |" in lines and any(line.startswith("**reach**: provisional") for line in lines)
    assert "**reach**: chosen; its overrides: `['aria.reach=0.1']`." in selection_lines(study, facts, complete=True)
    assert "Chosen: none yet" in "\n".join(selection_lines(study, {"diluted": {"aria": {"mse_ratio": 1.0}}}, True))
    with pytest.raises(ConfigError, match="'oracle' is not one"):
        load_study(write_study(tmp_path, tiny_world, rule="paired", select={"arms": ["aria", "oracle"]}))
    with pytest.raises(ConfigError, match="'select' needs rule: paired"):
        load_study(write_study(tmp_path, tiny_world, select={"arms": ["aria"]}))
    with pytest.raises(ConfigError, match="unknown select key 'tiebreak'"):
        load_study(write_study(tmp_path, tiny_world, rule="paired", select={"arms": ["aria"], "tiebreak": 1}))


def test_the_paired_table_says_when_the_baselines_gap_is_noise(tmp_path):
    """Gap closure divides by the baseline's gap: the table says when that gap's paired interval
    includes 0 (diluted orange), and says nothing when it excludes 0."""
    from aria_hpc.eval.stats import Run
    from aria_hpc.launch.study import paired_table

    def run(label, seed, seen, unseen, metrics=()):
        groups = {"unseen": {"mse": {"mean": 0.01 + 0.001 * seed, "se": 0.001},
                             "student_accuracy": {"mean": unseen, "se": 0.01}},
                  "seen": {"mse": {"mean": 0.01, "se": 0.001}, "student_accuracy": {"mean": seen, "se": 0.01}}}
        return Run(tmp_path, {}, {"groups": groups, "seed": seed}, list(metrics), label)
    noisy = [run("rc", s, 0.95, u) for s, u in enumerate((0.96, 0.94, 0.955))] + \
            [run("aria", s, 0.95, 0.95) for s in range(3)]
    rows, _ = paired_table(noisy, "rc")
    assert rows[-1].startswith("rc's gap (seen - unseen accuracy, paired by seed) is -0.002 [-0.")
    assert "its interval includes 0" in rows[-1]
    # the held-out share of random-condition draws is averaged over training, then over seeds
    draws = [{"group_share": {"unseen": 0.02}}, {"step": 1}, {"group_share": {"unseen": 0.04}}]
    clear = [run("rc", s, 0.99, u) for s, u in enumerate((0.90, 0.91, 0.92))] + \
            [run("aria", s, 0.99, 0.95, draws[: 3 - s]) for s in range(3)]
    rows, facts = paired_table(clear, "rc")
    assert not any("includes 0" in row for row in rows) and abs(facts["aria"]["gap_closed"] - 0.5) < 1e-9
    assert abs(facts["aria"]["unseen_draw_share"] - (0.03 + 0.02 + 0.02) / 3) < 1e-12
    assert facts["rc"]["unseen_draw_share"] is None and "| +50% | 2.33% |" in rows[3]

    from aria_hpc.launch.study import sample_share_rows  # every group's share of all samples, per arm
    ends = [{"sample_share": {"seen": 0.9, "unseen": 0.02}}, {"sample_share": {"seen": 0.8, "unseen": 0.04}}]
    shares = sample_share_rows([run("rc", 0, 0.99, 0.9, ends[:1]), run("rc", 1, 0.99, 0.9, ends),
                                run("aria", 0, 0.99, 0.9)])
    assert shares[0] == "| arm | seen share of all samples | unseen share of all samples |"
    assert shares[2:] == ["| rc | 85.00% | 3.00% |"]  # an arm that logged no shares has no row
