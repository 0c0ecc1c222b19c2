"""The one place that turns launch.* into a submitit executor: training members (ranks on nodes,
checkpointable) and job arrays of single-process tasks (bank shards, region assignment)."""

from __future__ import annotations

from pathlib import Path

import submitit

from aria_hpc.config import Config, LaunchConfig


def tasks_per_node(launch: LaunchConfig) -> int:
    """Ranks per node: launch.tasks_per_node, or one per GPU, at least one."""
    return launch.tasks_per_node or max(1, launch.gpus_per_node)


def nodes_problem(launch: LaunchConfig, kind: str) -> str | None:
    """Why a member cannot run on launch.nodes nodes with this executor, or None."""
    if launch.nodes > 1 and kind != "slurm":
        return (f"launch.nodes={launch.nodes} needs --executor slurm (the {kind} executor runs on this "
                "machine only): use --executor slurm or launch.nodes=1")
    return None


def executor_parameters(launch: LaunchConfig, kind: str, name: str, *, ranks: bool = True) -> dict:
    """submitit's parameters for kind local | slurm | debug (a pure function of the config). With ranks
    (a training member): launch.nodes nodes, GPUs per node become tasks per node, and SIGUSR2 120 s
    before the time limit. Without (an array task): one process."""
    params = dict(timeout_min=launch.timeout_min, name=name, cpus_per_task=launch.cpus_per_task)  # per rank
    if ranks:
        params["tasks_per_node"] = tasks_per_node(launch)
    if kind == "slurm":
        params.update(slurm_array_parallelism=launch.array_parallelism, mem_gb=launch.mem_gb,
                      gpus_per_node=launch.gpus_per_node or None, slurm_partition=launch.partition)
        if ranks:
            params.update(nodes=launch.nodes, slurm_signal_delay_s=120)
    return {k: v for k, v in params.items() if v is not None}


def make_executor(launch: LaunchConfig, kind: str, folder: str | Path, name: str, *,
                  ranks: bool = True) -> submitit.Executor:
    """An AutoExecutor for kind local | slurm | debug with executor_parameters()."""
    from aria_hpc.errors import ConfigError

    problem = nodes_problem(launch, kind) if ranks else None
    if problem:
        raise ConfigError(problem)
    ex = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    ex.update_parameters(**executor_parameters(launch, kind, name, ranks=ranks))
    return ex


def sbatch_text(launch: LaunchConfig, folder: str | Path, name: str, *, ranks: bool = True) -> str:
    """The sbatch script submitit's SLURM executor writes for these parameters, made without a SLURM
    cluster: the parameters renamed as submitit renames them, then its own script writer."""
    import shlex
    import sys

    from submitit.slurm import slurm

    renamed = {}
    for key, value in executor_parameters(launch, "slurm", name, ranks=ranks).items():
        renamed[key.removeprefix("slurm_") if key.startswith("slurm_") else
                slurm.SlurmExecutor._equivalence_dict()[key]] = value
    if "mem" in renamed:
        renamed["mem"] = slurm._convert_mem(renamed["mem"])
    folder = Path(folder).expanduser().absolute()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return slurm._make_sbatch_string(command=command, folder=folder, **renamed)


def run_array(cfg: Config, kind: str, fn, indices: list[int], name: str, tasks: str, failed: str, log=print) -> list:
    """One submitit array task per index (`fn(cfg, index)`, ranks=False, logs in LAUNCH_FOLDER/name),
    waited for; their results in index order. A failed task is a UserError: `failed` formatted with the
    index (e.g. "bank shard {index}"), then its job id, last line and log. `tasks` names them in the
    submitted line ("array", "signature", ...)."""
    from aria_hpc.errors import UserError

    ex = make_executor(cfg.launch, kind, Path(cfg.launch.folder) / name, f"aria-{name}", ranks=False)
    jobs = ex.map_array(fn, [cfg] * len(indices), indices)
    log(f"submitted {len(jobs)} {kind} {tasks} tasks ({', '.join(j.job_id for j in jobs[:4])}"
        f"{', ...' if len(jobs) > 4 else ''}); logs in {ex.folder}")
    results = []
    for index, job in zip(indices, jobs):
        try:
            results.append(job.result())
        except Exception as exc:  # submitit re-raises the task's failure with its log
            raise UserError(f"{failed.format(index=index)} failed in job {job.job_id}: {str(exc).splitlines()[-1]} "
                            f"(log: {job.paths.stderr})") from None
    return results
