"""Checks a sweep or study runs before it submits anything, so that a member that can never start
is refused in one line (exit 2) instead of pending for good or failing an hour later.

- Inputs: every member's bank, embeddings, region map and teacher exist and belong together (the
  same loaders training uses, without building a model).
- Resources (--executor slurm): what a member asks for (nodes, CPUs, memory, GPUs a node) against
  the largest node of its partition as `sinfo` reports it. A request no node of the partition can
  meet stays pending for good (reason PartitionConfig, or Resources forever).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aria_hpc.config import Config, LaunchConfig
from aria_hpc.errors import ConfigError, UserError
from aria_hpc.jobs import nodes_problem, tasks_per_node


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: int
    cpus: int  # the most CPUs of any one node
    mem_mb: int  # the most memory of any one node
    gpus: int  # the most GPUs of any one node
    default: bool


def parse_gres_gpus(gres: str) -> int:
    """GPUs in a sinfo %G field: 'gpu:4', 'gpu:a100:8(S:0-1)', '(null)'."""
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if m:
            total += int(m.group(1))
    return total


def read_partitions(text: str | None = None) -> dict[str, Partition]:
    """Partitions from `sinfo -h -N -o %P|%N|%c|%m|%G` (one line per node and partition)."""
    if text is None:
        try:
            res = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G"], capture_output=True, text=True,
                                 timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(f"cannot ask SLURM for its partitions (sinfo: {exc}): run on a login node, or "
                            "use --executor local") from None
        if res.returncode != 0:
            raise UserError(f"sinfo failed ({res.stderr.strip() or res.returncode}): is slurmctld up? "
                            "(scripts/slurm_local.sh start on this machine)")
        text = res.stdout
    nodes: dict[str, dict[str, tuple[int, int, int]]] = {}
    default = None
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        part, node, cpus, mem, gres = fields
        if part.endswith("*"):
            part = default = part[:-1]
        mem_mb = int(re.sub(r"\D", "", mem) or 0)
        nodes.setdefault(part, {})[node] = (int(cpus), mem_mb, parse_gres_gpus(gres))
    return {p: Partition(p, len(n), max(v[0] for v in n.values()), max(v[1] for v in n.values()),
                         max(v[2] for v in n.values()), p == default) for p, n in nodes.items()}


def resource_problem(launch: LaunchConfig, partitions: dict[str, Partition]) -> str | None:
    """What a member asks for that its partition cannot give, or None."""
    if launch.partition:
        part = partitions.get(launch.partition)
        if part is None:
            return (f"launch.partition={launch.partition} is not a partition of this cluster (sinfo has "
                    f"{', '.join(sorted(partitions)) or 'none'}): set launch.partition to one of them")
    else:
        part = next((p for p in partitions.values() if p.default), None)
        if part is None:
            return "the cluster has no default partition: set launch.partition"
    tasks = tasks_per_node(launch)
    cpus = tasks * launch.cpus_per_task
    asks = (f"{launch.nodes} node(s) x {tasks} task(s) x {launch.cpus_per_task} CPU(s) = {cpus} CPUs, "
            f"{launch.mem_gb} GB and {launch.gpus_per_node} GPU(s) a node")
    has = (f"partition {part.name} has {part.nodes} node(s), at most {part.cpus} CPUs, "
           f"{part.mem_mb / 1024:.1f} GB and {part.gpus} GPU(s) a node")
    short = [what for what, bad in (
        ("launch.nodes", launch.nodes > part.nodes),
        ("launch.cpus_per_task / launch.tasks_per_node", cpus > part.cpus),
        ("launch.mem_gb", launch.mem_gb * 1024 > part.mem_mb),
        ("launch.gpus_per_node", launch.gpus_per_node > part.gpus)) if bad]
    if short:
        return f"asks for {asks} but {has}: lower {', '.join(short)} or pick another partition"
    return None


def input_problem(cfg: Config) -> str | None:
    """A missing or mismatched input of a training member (what `train` would fail on first)."""
    from aria_hpc.bank.manifest import read_manifest
    from aria_hpc.conditioning.embeddings import EmbeddingStore
    from aria_hpc.context import load_matching_regions
    from aria_hpc.models.teacher import teacher_dir

    try:
        if cfg.bank.dir:
            read_manifest(Path(cfg.bank.dir))
        teacher_dir(cfg.teacher.dir)
        load_matching_regions(cfg, EmbeddingStore(cfg.embed.dir, cfg.embed.shards))
    except UserError as exc:
        return str(exc)
    return None


def check_members(members, executor: str, label: str = "sweep member ") -> None:
    """Raise ConfigError (exit 2) naming the first member that cannot start, before any is submitted."""
    partitions = read_partitions() if executor == "slurm" else None
    checked: dict[tuple, str | None] = {}  # members usually share their inputs: check each set once
    for m in members:
        cfg = m.resolve()
        name = f"{label}{m.name}"
        problem = nodes_problem(cfg.launch, executor)
        if problem:
            raise ConfigError(f"{name}: {problem}")
        problem = resource_problem(cfg.launch, partitions) if partitions is not None else None
        if problem:
            raise ConfigError(f"{name} {problem}" if problem.startswith("asks") else f"{name}: {problem}")
        key = (cfg.bank.dir, cfg.teacher.dir, cfg.embed.dir, cfg.embed.shards, cfg.regions.path)
        if key not in checked:
            checked[key] = input_problem(cfg)
        if checked[key]:
            raise ConfigError(f"{name}: {checked[key]}")
