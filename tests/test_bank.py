"""The teacher bank: build (in-process, per shard, submitit array), crash safety, fingerprint, reader."""

import json
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from aria_hpc.bank import Bank, BankSource, LiveTeacher, Prefetcher, build_bank
from aria_hpc.bank.context import load_context, noised_inputs
from aria_hpc.bank.plan import Conditioning, plan_bank, shard_plan
from aria_hpc.config import load_config
from aria_hpc.errors import UserError
from conftest import ROOT, cli_env


def bank_config(tiny_world, tmp_path, *overrides):
    path, _ = tiny_world
    return load_config(path, [f"bank.dir={tmp_path / 'bank'}", *overrides])


def shard_digests(bank_dir):
    return {s["name"]: s["digest"] for s in json.loads((bank_dir / "manifest.json").read_text())["shards"]}


def test_bank_builds_then_reruns_without_teacher_forwards(tiny_world, tmp_path, aria_cli):
    path, _ = tiny_world
    first = aria_cli("bank", str(path), f"bank.dir={tmp_path / 'bank'}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "teacher forwards: 6" in first.stdout  # 600 planned + the top-up
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 3
    forwards = int(first.stdout.split("teacher forwards: ")[1].split()[0])
    assert forwards == manifest["entries"] >= 600
    again = aria_cli("bank", str(path), f"bank.dir={tmp_path / 'bank'}")
    assert again.returncode == 0 and "teacher forwards: 0" in again.stdout
    assert shard_digests(tmp_path / "bank") == {s["name"]: s["digest"] for s in manifest["shards"]}
