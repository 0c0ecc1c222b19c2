"""A member is one training run followed by its evaluation, submitted as one submitit job.

The job is checkpointable: on preemption or timeout the trainer's own SIGUSR2 handler saves a
checkpoint on every rank, and the member then hands the signal back to submitit, whose handler calls
``checkpoint()`` (a fresh DelayedSubmission of the same member) and requeues the job. The requeued job
runs the same command, and the trainer resumes exactly from RUN_DIR/checkpoints/latest.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from aria_hpc.config import Config, LaunchConfig, load_config
from aria_hpc.jobs import make_executor, tasks_per_node


@dataclass
class Member:
    name: str
    config: str  # base config file (absolute path)
    overrides: list[str] = field(default_factory=list)  # includes run.dir and seed
    evaluate: bool = True
    # What a sweep's results table shows; the job itself reads only the resolved config.
    varied: dict = field(default_factory=dict)  # sweep key -> this member's value
    seed: int | None = None
    run_dir: Path | None = None

    def resolve(self) -> Config:
        return load_config(self.config, self.overrides)


class TrainMember(submitit.helpers.Checkpointable):
    """The submitit callable: train (resuming if a checkpoint exists), then evaluate on rank 0."""

    def __call__(self, member: Member) -> dict:
        import torch

        from aria_hpc import distributed
        from aria_hpc.errors import Preempted
        from aria_hpc.train.command import train_config

        cfg = member.resolve()
        torch.set_num_threads(max(1, cfg.launch.cpus_per_task))  # per rank (local jobs are not pinned)
        rank = distributed.world_info().rank
        status = MemberStatus(Path(cfg.run.dir), member.name, rank == 0)
        status.write("running")
        t0 = time.perf_counter()
        try:
            result = train_config(cfg, log=lambda msg: print(msg, flush=True))
        except Preempted as exc:
            status.write("preempted", error=str(exc))
            if callable(signal.getsignal(signal.SIGUSR2)):  # submitit's handler (absent in-process / debug)
                print(f"aria-hpc: {exc}; handing the signal to submitit to requeue", flush=True)
                if rank == 0:  # checkpoint() -> a fresh DelayedSubmission, scontrol requeue, exit
                    os.kill(os.getpid(), signal.SIGUSR2)
                time.sleep(120)  # the requeue ends every rank of the job
            raise
        except BaseException as exc:
            status.write("failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise
        out = {"state": "finished", "run_dir": str(cfg.run.dir), "loss": result["loss"],
               "train_s": time.perf_counter() - t0, "train_timings": result.get("timings", {})}
        if member.evaluate and rank == 0:
            from aria_hpc.eval.evaluate import evaluate_run

            t0 = time.perf_counter()
            try:
                evaluation = evaluate_run(cfg.run.dir, log=lambda msg: print(msg, flush=True))
            except BaseException as exc:
                status.write("failed", error=f"evaluation: {type(exc).__name__}: {exc}".splitlines()[0])
                raise
            out.update(eval_s=time.perf_counter() - t0, groups=evaluation["groups"],
                       eval_timings=evaluation.get("timings", {}))
        status.write("finished", loss=result["loss"])
        distributed.shutdown()
        return out


class MemberStatus:
    """RUN_DIR/member.json: the member's last known state (running, preempted, failed, finished)."""

    FILE = "member.json"

    def __init__(self, run_dir: Path, name: str, writer: bool) -> None:
        self.path, self.name, self.writer = run_dir / self.FILE, name, writer

    def write(self, state: str, **extra) -> None:
        if not self.writer:
            return
        import socket

        from aria_hpc.fsio import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SUBMITIT_LOCAL_JOB_ID")
               if k in os.environ}
        atomic_write_text(self.path, json.dumps({"name": self.name, "state": state, "time": time.time(),
                                                 "host": socket.gethostname(), "pid": os.getpid(), **env, **extra}))

    @classmethod
    def read(cls, run_dir: Path) -> dict | None:
        path = Path(run_dir) / cls.FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


def run_members(members: list[Member], launch: LaunchConfig, kind: str, folder: str | Path,
                log=print, on_submit=None) -> dict[str, dict]:
    """Submit every member (each with its own launch.* settings), wait, and return
    name -> {state, job_id, log, stderr, result | error}.

    The local executor starts every job at once, so local members go in waves of
    launch.array_parallelism; SLURM queues them itself."""
    results: dict[str, dict] = {}
    wave = len(members) if kind == "slurm" else max(1, launch.array_parallelism)
    for start in range(0, len(members), max(1, wave)):
        batch = members[start:start + wave]
        jobs = [make_executor(m.resolve().launch, kind, folder, f"aria-{m.name}"[:64]).submit(TrainMember(), m)
                for m in batch]
        log(f"submitted {len(jobs)} {kind} job(s): "
            + ", ".join(f"{m.name}={j.job_id}" for m, j in zip(batch, jobs)))
        if on_submit:
            on_submit({m.name: {"job_id": j.job_id, "log": str(j.paths.stdout), "stderr": str(j.paths.stderr)}
                       for m, j in zip(batch, jobs)})
        if kind != "debug":  # a debug job runs in this process when asked for its result: nothing to watch
            watch(list(zip(batch, jobs)), log)
        for m, job in zip(batch, jobs):
            entry = {"job_id": job.job_id, "log": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
            try:
                result = job.result()
                entry.update(state=result["state"], result=result)
            except Exception as exc:  # submitit re-raises the job's failure (with its traceback)
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                entry.update(state="failed", error=lines[-1] if lines else repr(exc))
                if not isinstance(exc, submitit.core.utils.FailedJobError):
                    entry["traceback"] = traceback.format_exc(limit=3)
            results[m.name] = entry
            log(f"{m.name}: {entry['state']}" + (f" ({entry['error']}; log {entry['stderr']})"
                                                 if entry["state"] == "failed" else ""))
    return results


# seconds between progress lines while members run, in a log file (ARIA_PROGRESS_EVERY overrides it)
PROGRESS_EVERY = float(os.environ.get("ARIA_PROGRESS_EVERY", "20"))


class MemberProgress:
    """A running member's progress from its RUN_DIR/metrics.jsonl: the last record's step and loss, its
    samples/s, and the ETA of the remaining steps at that rate (evaluation once training is done)."""

    def __init__(self, member: Member) -> None:
        cfg = member.resolve()
        self.name, self.run_dir, self.total = member.name, Path(cfg.run.dir), cfg.train.steps
        world = cfg.launch.nodes * tasks_per_node(cfg.launch)
        self.batch = cfg.train.micro_batch_per_gpu * cfg.train.grad_accum * world

    def last_record(self) -> dict | None:
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 65536))
                lines = [ln for ln in f.read().splitlines() if ln.strip()]
            return json.loads(lines[-1]) if lines else None
        except (OSError, ValueError, IndexError):
            return None  # not started, or a line being written

    def step(self) -> int:
        rec = self.last_record()
        return int(rec["step"]) if rec else 0

    def line(self) -> str:
        rec = self.last_record()
        if rec is None:
            return f"{self.name}: starting"
        step, rate = int(rec["step"]), float(rec.get("samples_per_s") or 0)
        if step >= self.total:
            return f"{self.name}: step {step}/{self.total}, loss {rec['loss']:.4g}, evaluating"
        eta = (self.total - step) * self.batch / rate if rate > 0 else float("nan")
        eta_text = f"{int(eta // 60)}:{int(eta % 60):02d}" if eta == eta else "?"
        return (f"{self.name}: step {step}/{self.total}, loss {rec['loss']:.4g}, {rate:.0f} samples/s, "
                f"ETA {eta_text}")


def watch(running: list, log=print, every: float | None = None) -> None:
    """Until every job of `running` [(member, submitit job)] is done, show each running member's
    progress: on a terminal a tqdm bar per member (refreshed every second), in a log file a plain line
    per member every `every` seconds."""
    import sys

    every = PROGRESS_EVERY if every is None else every
    progress = {m.name: MemberProgress(m) for m, _ in running}
    bars = {}
    if sys.stderr.isatty():
        from tqdm import tqdm

        bars = {m.name: tqdm(total=progress[m.name].total, desc=m.name, unit="step", position=i, leave=False)
                for i, (m, _) in enumerate(running)}
    last = time.monotonic()
    try:
        while not all(job.done() for _, job in running):
            time.sleep(min(1.0, every))
            for name, bar in bars.items():
                bar.n = progress[name].step()
                bar.set_postfix_str(progress[name].line().split(": ", 1)[1], refresh=True)
            if not bars and time.monotonic() - last >= every:
                last = time.monotonic()
                for m, job in running:
                    if not job.done():
                        log(progress[m.name].line())
    finally:
        for bar in bars.values():
            bar.close()
