"""The CLI surface is pinned, and the simulate job runs end to end in a subprocess."""

import json

import yaml

from aria_hpc.cli import build_parser

SUBCOMMANDS = ["simulate", "embed", "signatures", "pairs", "regions", "bank", "train", "teacher", "eval", "report", "sweep", "demo",
               "study"]


def test_cli_surface_is_pinned():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == SUBCOMMANDS


def test_help(aria_cli):
    res = aria_cli("--help")
    assert res.returncode == 0 and "simulate" in res.stdout


def test_simulate_writes_config_and_metrics(aria_cli, tmp_path):
    run_dir = tmp_path / "run"
    res = aria_cli("simulate", "configs/debug.yaml", f"run.dir={run_dir}", "train.steps=60", "train.log_every=20")
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"] == 60
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40, 60]
    assert len(records[-1]["allocation"]) == 16
    assert abs(sum(records[-1]["allocation"]) - 1.0) < 1e-9
