"""`aria-hpc sweep SWEEP.yaml`: a base config x a grid and/or zip of overrides x seeds, one submitit job
per member (training, then its evaluation), sharing one bank.

A sweep file::

    base: ../configs/debug.yaml     # relative to the sweep file
    dir: runs/sweeps/alpha          # members in DIR/members/NAME, results.csv/.md in DIR
    overrides: [bank.dir=runs/bank] # applied to every member
    grid: {aria.alpha: [0.5, 1.0]}  # every combination ...
    zip: {train.lr: [1e-4, 3e-4], train.warmup_steps: [0, 50]}  # ... crossed with these in lockstep
    seeds: [0, 1]
    evaluate: true

Every member's config is resolved before anything is submitted (an unknown key is exit 2). Running
the same sweep again skips finished members and resubmits failed or interrupted ones (training
resumes from the member's checkpoint). Members' states live in their RUN_DIR/member.json.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from aria_hpc.config import load_config, read_yaml
from aria_hpc.errors import ConfigError
from aria_hpc.fsio import atomic_write_text, require_writable
from aria_hpc.launch.members import Member, MemberStatus, run_members
from aria_hpc.launch.preflight import check_members
from aria_hpc.splits import SPLITS

SWEEP_KEYS = ("base", "dir", "overrides", "grid", "zip", "seeds", "evaluate")
GROUPS = SPLITS
QUEUED_OR_DONE = ("finished", "running", "submitted", "pending", "preempted")


@dataclass
class Sweep:
    path: Path
    base: Path
    dir: Path
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    zip: dict[str, list] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    evaluate: bool = True


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    data = read_yaml(path, f"sweep file {path} does not exist")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {', '.join(unknown)} (valid: {', '.join(SWEEP_KEYS)})")
    for key in ("base", "dir"):
        if not isinstance(data.get(key), str):
            raise ConfigError(f"{path}: '{key}' is required (a path)")
    given = Path(data["base"])
    base = next((p for p in ([given] if given.is_absolute() else [path.parent / given, given]) if p.is_file()), None)
    if base is None:
        raise ConfigError(f"{path}: base config {data['base']} does not exist (relative to the sweep file or "
                          "the working directory)")
    sweep = Sweep(path, base.resolve(), Path(data["dir"]).resolve())
    sweep.overrides = [str(o) for o in data.get("overrides") or []]
    for key in ("grid", "zip"):
        axes = data.get(key)
        if axes is None:
            continue
        if not isinstance(axes, dict) or not axes:
            raise ConfigError(f"{path}: '{key}' is empty; give it at least one key with a list of values, "
                              "or leave it out")
        for name, values in axes.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{path}: {key}.{name} must be a non-empty list of values")
        setattr(sweep, key, {str(k): v for k, v in axes.items()})
    if len({len(v) for v in sweep.zip.values()}) > 1:
        raise ConfigError(f"{path}: every zip list must have the same length "
                          f"({', '.join(f'{k}: {len(v)}' for k, v in sweep.zip.items())})")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers >= 0")
    sweep.seeds = seeds
    sweep.evaluate = bool(data.get("evaluate", True))
    return sweep


def _value(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9=.,_-]+", "-", text)[:80]


def members(sweep: Sweep) -> list[Member]:
    """Every member, each config resolved and checked (raises before anything is submitted)."""
    grid_rows = [dict(zip(sweep.grid, combo)) for combo in itertools.product(*sweep.grid.values())] or [{}]
    zip_rows = [dict(zip(sweep.zip, combo)) for combo in zip(*sweep.zip.values())] or [{}]
    out = []
    for grid_row, zip_row, seed in itertools.product(grid_rows, zip_rows, sweep.seeds):
        varied = {**grid_row, **zip_row}
        label = ",".join(f"{k.split('.')[-1]}={_value(v)}" for k, v in varied.items())
        name = _slug(f"{len(out):03d}-{label + ',' if label else ''}seed={seed}")
        run_dir = sweep.dir / "members" / name
        overrides = [*sweep.overrides, *(f"{k}={_value(v)}" for k, v in varied.items()), f"seed={seed}",
                     f"run.dir={run_dir}", f"launch.folder={sweep.dir / 'submitit'}"]
        try:
            load_config(sweep.base, overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep member {name}: {exc}") from None
        out.append(Member(name, str(sweep.base), overrides, sweep.evaluate, varied=varied, seed=seed, run_dir=run_dir))
    return out


def _queue_state(job: dict, status: dict) -> tuple[bool, str | None]:
    """(whether a member's job is still queued or running, SLURM's reason while it is pending):
    squeue for SLURM, the process for local jobs."""
    import os

    if job.get("executor") == "slurm" and job.get("job_id"):
        try:
            out = subprocess.run(["squeue", "-h", "-j", str(job["job_id"]), "-o", "%T|%r"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False, None
        lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
        if not lines:
            return False, None
        state, _, reason = lines[0].partition("|")
        return True, (reason or "None") if state == "PENDING" else None
    pid = status.get("pid") or (job.get("job_id") if job.get("executor") == "local" else None)
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, OSError):
        return False, None
    return not zombie(int(pid)), None


def zombie(pid: int) -> bool:
    """Whether a process that still answers kill(pid, 0) is dead but unreaped: a member job killed
    with its controller is reparented to PID 1, which in a container may never reap it (the fault
    campaign found a killed sweep taking such a member for a running one and never rerunning it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc: kill(pid, 0) is all there is
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def member_state(sweep: Sweep, m: Member, jobs: dict) -> dict:
    """finished | failed | running | submitted | pending | preempted | interrupted | not submitted.
    A member whose SLURM job waits in the queue is pending, with SLURM's reason as its error."""
    status = MemberStatus.read(m.run_dir) or {}
    job = jobs.get(m.name, {})
    state = status.get("state") or ("submitted" if job else "not submitted")
    error = status.get("error", "") or job.get("error", "")
    if state == "finished" and sweep.evaluate and not (m.run_dir / "eval.json").is_file():
        state, error = "failed", "finished training but has no eval.json"
    elif state in ("running", "submitted", "preempted"):
        alive, reason = _queue_state(job, status)
        if not alive:
            state = "failed" if job.get("error") else "interrupted"
        elif reason is not None:  # queued (also a requeued preempted job): say why it waits
            state, error = "pending", f"SLURM pending reason: {reason}"
    return {"state": state, "job_id": str(job.get("job_id", "")), "log": job.get("stderr", ""), "error": error}


def _jobs_file(sweep: Sweep) -> Path:
    return sweep.dir / "jobs.json"


def read_jobs(sweep: Sweep) -> dict:
    try:
        return json.loads(_jobs_file(sweep).read_text())
    except (OSError, ValueError):
        return {}


def run_sweep(path: str | Path, executor: str, log=print) -> dict:
    sweep = load_sweep(path)
    todo_all = members(sweep)
    base_cfg = load_config(sweep.base, todo_all[0].overrides)
    require_writable(sweep.dir, "the sweep's dir")
    jobs = read_jobs(sweep)
    states = {m.name: member_state(sweep, m, jobs) for m in todo_all}
    skip = [m for m in todo_all if states[m.name]["state"] in QUEUED_OR_DONE]
    todo = [m for m in todo_all if m not in skip]
    check_members(todo, executor)  # inputs and (on SLURM) the partition, before anything is submitted
    sweep.dir.mkdir(parents=True, exist_ok=True)
    log(f"sweep {sweep.dir}: {len(todo_all)} members, {len(skip)} finished or still queued, submitting {len(todo)}")

    def record(submitted: dict) -> None:
        jobs.update({k: {**v, "executor": executor} for k, v in submitted.items()})
        atomic_write_text(_jobs_file(sweep), json.dumps(jobs, indent=1))

    results = run_members(todo, base_cfg.launch, executor, sweep.dir / "submitit", log=log, on_submit=record)
    for name, r in results.items():
        jobs.setdefault(name, {})["error"] = r.get("error", "") if r["state"] == "failed" else ""
    record({})
    return collect(sweep, log=log)


def collect(sweep: Sweep, log=print) -> dict:
    """results.csv and results.md: one row per member (varied values, seed, final metrics, state, log)."""
    jobs = read_jobs(sweep)
    rows = []
    all_members = members(sweep)
    for m in all_members:
        st = member_state(sweep, m, jobs)
        row = {"member": m.name, **{k: _value(v) for k, v in m.varied.items()}, "seed": m.seed, "state": st["state"]}
        final = _final_metrics(m.run_dir)
        row.update(final)
        row["error"] = st["error"]
        row["log"] = st["log"] or str(m.run_dir)
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sweep.dir / "results.csv", buf.getvalue())
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    atomic_write_text(sweep.dir / "results.md", f"# Sweep {sweep.path.name}\n\n" + "\n".join(md) + "\n")
    counts = {s: sum(r["state"] == s for r in rows) for s in dict.fromkeys(r["state"] for r in rows)}
    log(f"results: {sweep.dir / 'results.md'} ({', '.join(f'{n} {s}' for s, n in counts.items())})")
    return {"rows": rows, "counts": counts, "results_md": sweep.dir / "results.md"}


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v).replace("|", "\\|")


def _final_metrics(run_dir: Path) -> dict:
    out = {}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if lines:
            last = json.loads(lines[-1])
            out.update(step=last["step"], final_loss=last["loss"])
    ev = run_dir / "eval.json"
    if ev.is_file():
        groups = json.loads(ev.read_text())["groups"]
        for g in GROUPS:
            if g in groups and "mse" in groups[g]:
                out[f"mse_{g}"] = groups[g]["mse"]["mean"]
            if g in groups and "student_accuracy" in groups[g]:
                out[f"acc_{g}"] = groups[g]["student_accuracy"]["mean"]
    return out


def status(path: str | Path, log=print) -> list[dict]:
    sweep = load_sweep(path)
    jobs = read_jobs(sweep)
    rows = []
    for m in members(sweep):
        st = member_state(sweep, m, jobs)
        rows.append({"member": m.name, **st})
    width = max(len(r["member"]) for r in rows)
    log(f"{'member':<{width}}  {'state':<13} {'job':>10}  log / error")
    for r in rows:
        log(f"{r['member']:<{width}}  {r['state']:<13} {r['job_id'] or '-':>10}  {r['error'] or r['log']}")
    return rows


