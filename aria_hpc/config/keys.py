"""Flat views of a config, and the one place that knows which keys may differ between two of them.

A flat config maps dotted keys to values (``train.lr``). A pattern ending in "." stands for every key
under that section (``eval.``), any other pattern for one key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aria_hpc.config.schema import Config, TeacherRecipeConfig

# What may change between a checkpoint and its resume: run length and bookkeeping, and eval.*, which
# never affects training.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.region_log_every", "train.checkpoint_every",
                     "train.curve_every", "train.keep_checkpoints", "train.export", "run.dir", "launch.folder",
                     "launch.partition", "launch.timeout_min", "eval.")
# What `aria-hpc eval RUN_DIR` may override: never what the run trained with.
EVAL_OVERRIDES = ("eval.", "judge.")
# Keys that moved to another section, old spelling -> new. Files and checkpoints written with the old
# spelling still load: the loader renames the keys (and says so, but for a run's own config.yaml).
MOVED = {f"teacher.{f.name}": f"teacher_recipe.{f.name}" for f in dataclasses.fields(TeacherRecipeConfig)}
# Keys that were removed, and why. Files, overrides and checkpoints that still spell one load: the
# key is dropped (with a note, but for a run's own config.yaml) and never counts as a difference.
REMOVED = {"bank.prefetch": "no code read it; training reads each batch when it draws it"}
# What a report does not name a run by (the seed is a repeat; the policy is the label itself).
LABEL_IGNORED = ("seed", "run.dir", "train.policy", "launch.", "eval.", "judge.")


def matches(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether a dotted key is one of the patterns or lies under one of their sections."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def flatten(cfg: Config) -> dict[str, Any]:
    """The config as {dotted key: value}, in field order."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(dataclasses.asdict(cfg), "")
    return out


def changed_keys(now: dict[str, Any], then: dict[str, Any], may_differ: tuple[str, ...] = ()) -> list[str]:
    """The sorted keys whose values differ between two flat configs, but for the `may_differ`
    patterns. A key `then` lacks was added to the schema since: it had its default then; a key it
    spells the old way (MOVED) is compared under its new name; a REMOVED key is left out."""
    then = {**flatten(Config()), **{MOVED.get(k, k): v for k, v in then.items() if k not in REMOVED}}
    return sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k) and not matches(k, may_differ))
