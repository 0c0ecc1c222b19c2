"""Evaluation, report and demo: known answers on tiny runs, rendered figures, a tiny demo end to end."""

import json
import re
import shutil
import time

import numpy as np
import pytest
import torch
import yaml

from aria_hpc.eval.metrics import frechet_distance, frechet_with_se, mean_se, stratified_timesteps
from aria_hpc.eval.stats import Summary, compare

TINY_EVAL = ["eval.per_region=8", "eval.per_group=4", "eval.sample_steps=2", "eval.grid=3"]


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, 2.0, 0, 0, 0, 0])
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, abs=1e-9)  # covariances equal: ||mu||^2
    b = rng.standard_normal((150, 6)) * 2.0
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    # isotropic Gaussians, exact covariances: tr(S1 + S2 - 2 sqrt(S1 S2)) = d (1 + 4 - 4) = d
    exact_a, exact_b = np.eye(6), 4 * np.eye(6)
    za = rng.standard_normal((100000, 6))
    assert frechet_distance(za @ np.sqrt(exact_a), za @ np.sqrt(exact_b)) == pytest.approx(6.0, rel=0.02)
    with pytest.raises(ValueError):
        frechet_distance(a[:1], a[:1])
    assert frechet_with_se(a, a)["mean"] == pytest.approx(0.0, abs=1e-9)
    # fewer samples than features (FID: 2048 features, tens of images): the sample-space form agrees
    # with the d x d eigendecompositions, and the two paths meet at n = d
    wide_a, wide_b = rng.standard_normal((40, 300)), rng.standard_normal((30, 300)) * 1.5 + 0.2
    sa, sb = np.cov(wide_a, rowvar=False), np.cov(wide_b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)).sum()
    mu = wide_a.mean(0) - wide_b.mean(0)
    assert frechet_distance(wide_a, wide_b) == pytest.approx(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * cross, rel=1e-6)
    assert frechet_distance(wide_a, wide_a) == pytest.approx(0.0, abs=1e-8)


def test_mean_se_and_timesteps():
    assert mean_se(np.array([1.0, 3.0])) == {"mean": 2.0, "se": 1.0, "n": 2}
    assert mean_se(np.array([]))["n"] == 0
    t = stratified_timesteps(np.random.default_rng(0), 100, 1000)
    assert sorted(np.bincount(t // 100, minlength=10)) == [10] * 10  # every bin covered evenly


def test_within_noise_verdicts():
    seeds_a, seeds_b = Summary(1.0, 0.2, 0.01, 3), Summary(1.1, 0.05, 0.01, 3)
    assert compare(seeds_a, seeds_b, False, "aria", "rc")[2:] == ("seed std", "within noise")
    assert compare(Summary(0.5, 0.05, 0.01, 3), seeds_b, False, "aria", "rc")[3] == "aria better"
    assert compare(Summary(0.5, 0.05, 0.01, 3), seeds_b, True, "aria", "rc")[3] == "aria worse"
    one_a, one_b = Summary(1.0, None, 0.1, 1), Summary(1.2, None, 0.1, 1)
    assert compare(one_a, one_b, False, "aria", "rc")[2:] == ("1 seed, 2 x eval SE", "within noise")
    assert compare(Summary(0.5, None, 0.1, 1), one_b, False, "aria", "rc")[3] == "aria ahead (1 seed: not a verdict)"
    two = Summary(0.5, 0.05, 0.01, 2)  # beyond the spread, but 2 seeds are not a verdict either
    assert compare(two, seeds_b, True, "aria", "rc")[3] == "aria behind (2 seeds: not a verdict)"


@pytest.fixture(scope="module")
def twin_runs(tiny_world, tmp_path_factory):
    """Two run directories of the tiny world: one whose student IS the teacher, one perturbed."""
    from aria_hpc.config import load_config, save_resolved
    from aria_hpc.models.teacher import load_teacher

    path, root = tiny_world
    base = tmp_path_factory.mktemp("eval_runs")
    runs = {}
    for name, policy, noise in (("same", "rc", 0.0), ("perturbed", "aria", 0.05)):
        run_dir = base / name
        cfg = load_config(path, [f"run.dir={run_dir}", "bank.dir=null", f"train.policy={policy}", *TINY_EVAL])
        save_resolved(cfg, run_dir)
        unet = load_teacher(cfg.teacher.dir).unet
        torch.manual_seed(1)
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(noise * torch.randn_like(p))
        unet.save_pretrained(run_dir / "student")
        steps = [{"step": s, "loss": 0.1, "region_estimate": list(np.linspace(0.5, 1.5, 8) * s / 4),
                  "allocation": list(np.full(8, 1 / 8))} for s in (2, 4)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
        runs[name] = run_dir
    return runs


def test_student_equal_to_teacher_has_zero_mse_and_identical_samples(twin_runs, aria_cli):
    from aria_hpc.eval.evaluate import evaluate_run

    result = evaluate_run(twin_runs["same"], log=lambda _m: None)
    groups = result["groups"]
    assert set(groups) == {"seen", "under", "unseen", "all"}
    for name in ("seen", "under", "unseen"):
        g = groups[name]
        assert g["mse"]["mean"] == 0.0 and g["mse"]["n"] > 0
        assert g["pixel_mse"]["mean"] == 0.0
        assert g["student_accuracy"] == g["teacher_accuracy"]
        assert g["frechet"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert all(v == 0.0 for v in result["regions"]["mse"] if v == v)
    grids = np.load(twin_runs["same"] / "eval_samples.npz")
    assert grids["unseen/teacher"].shape[0] == 3 and np.array_equal(grids["unseen/teacher"], grids["unseen/student"])

    # a different student: non-zero MSE on the very same held-out set (the set depends on eval.seed only)
    other = evaluate_run(twin_runs["perturbed"], log=lambda _m: None)
    assert all(other["groups"][g]["mse"]["mean"] > 0 for g in ("seen", "under", "unseen"))
    assert other["regions"]["n"] == result["regions"]["n"]
    again = evaluate_run(twin_runs["perturbed"], log=lambda _m: None)
    assert again["groups"]["unseen"]["mse"] == other["groups"]["unseen"]["mse"]

    # the CLI prints the per-group table
    proc = aria_cli("eval", str(twin_runs["same"]), "eval.grid=2")
    assert proc.returncode == 0, proc.stderr
    assert "unseen" in proc.stdout and "eval.json" in proc.stdout


def test_eval_bad_input(twin_runs, tmp_path, aria_cli):
    proc = aria_cli("eval", str(tmp_path))
    assert proc.returncode == 2 and "no config.yaml" in proc.stderr
    proc = aria_cli("eval", str(twin_runs["same"]), "train.lr=1")
    assert proc.returncode == 2 and "eval.* and judge.*" in proc.stderr
    half = tmp_path / "half"
    shutil.copytree(twin_runs["same"], half)
    shutil.rmtree(half / "student")
    before = (half / "eval.json").read_bytes() if (half / "eval.json").exists() else None
    proc = aria_cli("eval", str(half))
    assert proc.returncode == 2 and "no exported student" in proc.stderr
    assert ((half / "eval.json").read_bytes() if (half / "eval.json").exists() else None) == before
    proc = aria_cli("report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "aria-hpc eval" in proc.stderr


def test_report_renders_figures_and_the_comparison(twin_runs, tmp_path, aria_cli):
    import matplotlib.image

    from aria_hpc.eval.evaluate import evaluate_run

    for run_dir in twin_runs.values():
        if not (run_dir / "eval.json").exists():
            evaluate_run(run_dir, log=lambda _m: None)
    out = tmp_path / "report"
    proc = aria_cli("report", *map(str, twin_runs.values()), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    assert "| unseen | output MSE ↓ |" in text and "aria vs rc" in text
    # the perturbed student is far from the teacher: a real difference, not noise, on output MSE
    row = next(line for line in text.splitlines() if line.startswith("| unseen | output MSE"))
    assert "aria behind (1 seed: not a verdict)" in row
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {"groups.png", "regions.png", "mse_by_timestep.png", "samples_unseen.png"}
    for png in pngs:
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 100 and image.std() > 0.01, png  # rendered, not blank


@pytest.mark.slow
def test_tiny_demo_end_to_end_and_reuse(tiny_world, tmp_path, aria_cli):
    path, root = tiny_world
    cfg = yaml.safe_load(path.read_text())
    cfg.update(train={"steps": 4, "micro_batch_per_gpu": 8, "log_every": 2, "region_log_every": 2,
                      "checkpoint_every": 2},
               aria={"warmup_steps": 2, "sync_every": 2},
               eval={"per_region": 8, "per_group": 3, "sample_steps": 2, "grid": 2},
               launch={"cpus_per_task": 1, "array_parallelism": 2, "timeout_min": 10})
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "demo"
    proc = aria_cli("demo", "--config", str(config), "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[demo] train+eval" in proc.stdout and "[demo] total" in proc.stdout
    assert re.search(r"\[demo\] rc-s0: train \d+s \(start-up \d+s, steps \d+s, .*\) eval \d+s \(load", proc.stdout)
    assert "| unseen | output MSE" in proc.stdout
    assert "This run: seed(s) [0], fewer than 3, so not a verdict" in proc.stdout
    assert "No committed study runs this config" in proc.stdout  # a tmp config: no study names it
    for policy in ("rc", "aria"):
        assert (out / "runs" / f"{policy}-s0" / "eval.json").is_file()
    assert (out / "report" / "report.md").is_file() and (out / "report" / "regions.png").stat().st_size > 1000
    bank_line = next(line for line in proc.stdout.splitlines() if line.startswith("[demo] bank"))
    assert "teacher forwards: 0" not in bank_line  # the first run builds the bank

    again = aria_cli("demo", "--config", str(config), "--out", str(out), timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    bank_line = next(line for line in again.stdout.splitlines() if line.startswith("[demo] bank"))
    assert "teacher forwards: 0" in bank_line
    assert "regions reused" in again.stdout and "0 of 1 shard(s) built" in again.stdout


def test_demo_heartbeat_fills_only_silence():
    from aria_hpc.demo import Heartbeat

    lines = []
    with Heartbeat("[demo] bank", lines.append, every=0.1) as beat:  # a stage that says nothing itself
        beat.update("shard 0: 5/10 entries")
        time.sleep(0.55)
    assert len(lines) >= 3 and all(re.fullmatch(r"\[demo\] bank: \d+s, shard 0: 5/10 entries", ln) for ln in lines), lines
    lines.clear()
    with Heartbeat("[demo] train", lines.append, every=0.3) as beat:  # one that talks: nothing added
        for _ in range(8):
            beat.log("member line")
            time.sleep(0.05)
    assert lines == ["member line"] * 8


def test_learning_curve_series_and_steps_to_the_baseline(tmp_path):
    from aria_hpc.eval.figures import plot_curves, plot_mechanism
    from aria_hpc.eval.stats import Run, curve_series, steps_to_reach

    def run(label, curve, share):
        records = [{"step": s, "curve_mse": {"unseen": v}, "group_share": {"unseen": share},
                    "group_estimate": {"unseen": 2 * v}, "estimate_mean": v} for s, v in zip((100, 200, 300), curve)]
        return Run(tmp_path, {}, {}, records, label)

    runs = [run("rc", [3, 2, 1.0], 0.01), run("rc", [3, 2, 1.2], 0.01), run("aria", [2, 1.2, 0.5], 0.02),
            run("aria", [2.5, 1.0, 0.6], 0.03)]
    steps, values = curve_series(runs, "curve_mse", "unseen")["aria"]
    assert steps.tolist() == [100, 200, 300] and values.shape == (2, 3)
    assert np.allclose(curve_series(runs, "group_estimate", "unseen", over="estimate_mean")["rc"][1], 2.0)
    assert steps_to_reach(runs, "aria") == 200  # aria's mean 1.1 at step 200 <= rc's final mean 1.1
    assert steps_to_reach(runs, "rc", baseline="aria") is None
    assert plot_curves(runs, tmp_path / "c.png").stat().st_size > 1000
    assert plot_mechanism(runs, tmp_path / "m.png").stat().st_size > 1000
