"""Checkpoints: what one is, saving it, whether it is complete, and resuming from it.

A checkpoint is RUN_DIR/checkpoints/<tag>/: DeepSpeed's files, one `aria_rank<r>.pt` per rank (the
region table's unsynced sums, the EMA, the RNG, the source cursor) and `aria_meta.json`, which rank 0
writes last, after every rank has saved, listing every file of the tag with its size. `latest` names
the tag to resume from. A tag whose meta is missing, or whose listed files are missing or of another
size, is incomplete: the resume check names what is missing and the newest complete checkpoint beside
it, and never falls back to starting over by itself.

``TrainState`` is what a rank keeps beside DeepSpeed's files; ``save`` writes a tag, ``resume`` checks
and loads the newest one on every rank (the same outcome everywhere, or one agreed error). The loop
holds a ``Checkpointer``, which owns the interval rule and the metrics log's continuity.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from aria_hpc import distributed
from aria_hpc.errors import UserError
from aria_hpc.fsio import atomic_write_text

if TYPE_CHECKING:
    from aria_hpc.config import Config
    from aria_hpc.regions.table import RegionTable
    from aria_hpc.train.sources import TeacherSource
    from aria_hpc.train.student import StudentEMA

META = "aria_meta.json"
META_DIGEST = "meta_sha256"  # the meta's own digest: a damaged meta is named, never taken for another file


def meta_digest(meta: dict) -> str:
    """sha256 of the meta's JSON without its own digest (what META_DIGEST holds)."""
    body = {k: v for k, v in meta.items() if k != META_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
LATEST = "latest"


def rank_file(rank: int) -> str:
    return f"aria_rank{rank}.pt"


@dataclass
class TrainState:
    """What one rank saves beside DeepSpeed's files (its ``aria_rank<r>.pt``): the region table and
    the timestep baseline (their EMA state is the same on every rank, their sums since the last sync
    are this rank's own), the student EMA (per rank; its own shard under ZeRO-3), the torch RNG and
    the source's cursor."""

    table: RegionTable
    baseline: RegionTable
    ema: StudentEMA
    source: TeacherSource
    # samples this rank has trained on, per split group (seen, under, unseen, unlabelled) and the null text
    sample_groups: np.ndarray = field(default_factory=lambda: np.zeros(5, np.int64))

    def count_samples(self, groups: np.ndarray, conditioned: np.ndarray) -> None:
        """Count a batch's samples: `groups` the split group of each condition, where `conditioned`."""
        self.sample_groups += np.bincount(np.where(conditioned, groups, 4), minlength=5)

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict(), "torch_rng": torch.get_rng_state(), "table": self.table.state_dict(),
                "baseline": self.baseline.state_dict(), "source": self.source.state_dict(),
                "sample_groups": self.sample_groups.copy()}

    def load_state_dict(self, state: dict) -> None:
        if "sample_groups" in state:  # (checkpoints written before the count existed start it at zero)
            self.sample_groups[:] = state["sample_groups"]
        self.table.load_state_dict(state["table"])
        self.baseline.load_state_dict(state["baseline"])
        self.ema.load_state_dict(state["ema"])
        self.source.load_state_dict(state["source"])
        torch.set_rng_state(state["torch_rng"])


def save(ckpt_dir: Path, engine, state: TrainState, step: int, tag: str, *, config: dict, rank: int, world: int,
         keep: int, latest: bool = True) -> Path:
    """Every rank writes its part of CKPT_DIR/tag; rank 0 then lists the files in the meta and, for a
    regular checkpoint (latest=True), points `latest` at it and prunes to the newest `keep`. The
    source's fresh entries must have reached the bank first (Checkpointer.save flushes it)."""
    from aria_hpc.train import digests

    meta = {"step": step, "tag": tag, "world_size": world, "config": config}
    digests.install(engine)  # every file is hashed as it is written
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=meta, save_latest=False)
    digests.save_hashed(state.state_dict(), ckpt_dir / tag / rank_file(rank))
    every = distributed.all_gather_object(digests.take(ckpt_dir / tag))  # each rank's files' digests
    distributed.barrier()
    if rank == 0:  # the checkpoint is complete: describe it (every file, size, digest), then point `latest` at it
        meta["files"] = tag_files(ckpt_dir / tag)
        meta["sha256"] = {name: d for part in every for name, d in part.items()}
        meta = json.loads(json.dumps(meta, default=str))
        meta[META_DIGEST] = meta_digest(meta)
        atomic_write_text(ckpt_dir / tag / META, json.dumps(meta))
        if latest:
            atomic_write_text(ckpt_dir / LATEST, tag)
            prune(ckpt_dir, keep)
    distributed.barrier()
    return ckpt_dir / tag


def resume(ckpt_dir: Path, engine, state: TrainState, cfg: Config, *, rank: int, world: int) -> tuple[int, str | None]:
    """(step, tag) of the checkpoint this run continues from, loaded into engine and state, or (0,
    None) for a new run. Every rank checks and loads; a problem on any rank stops all of them with one
    agreed error, before anything is written."""
    tag, problem = None, None
    try:
        tag = resume_tag(ckpt_dir)
        if tag is not None:
            check_resumable(cfg, ckpt_dir / tag, world)
    except UserError as exc:
        problem = str(exc)
    distributed.agree(problem)
    if tag is None:
        return 0, None
    problem = None
    try:  # each rank hashes its share of the tag's files, before any is loaded
        damaged(ckpt_dir / tag, part=(rank, world))
    except UserError as exc:
        problem = str(exc)
    distributed.agree(problem)
    try:
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_lr_scheduler_states=True)
        own = torch.load(ckpt_dir / tag / rank_file(rank), weights_only=False)
        if client is None:
            raise RuntimeError("DeepSpeed found no state to load")
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in torch, pickle or DeepSpeed
        cause = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        problem = (f"the checkpoint in {ckpt_dir / tag} could not be loaded on rank {rank} ({cause}): "
                   f"{way_back(ckpt_dir, tag)}")
    distributed.agree(problem)
    step = int(json.loads((ckpt_dir / tag / META).read_text())["step"])
    state.load_state_dict(own)
    return step, tag


class Checkpointer:
    """The loop's checkpoints: resume (with the metrics log made to read as one run), the interval
    rule, and saving, timed. `save` flushes the source, so fresh entries reach the bank before the
    state that counts them (a flush with nothing pending writes nothing). On a due step the loop flushes
    before its log (`flush_if_due`), so that step's log counts them too; `save`'s own flush is for the
    saves the loop did not flush for (preemption between checkpoints, a non-finite loss, whose step
    has drawn since the last flush)."""

    def __init__(self, cfg: Config, run_dir: Path, engine, state: TrainState, *, rank: int, world: int) -> None:
        from aria_hpc.config import flatten

        self.dir, self.metrics = run_dir / "checkpoints", run_dir / "metrics.jsonl"
        self.engine, self.state, self.rank, self.world = engine, state, rank, world
        self.cfg, self.config = cfg, flatten(cfg)
        self.every, self.steps, self.keep = cfg.train.checkpoint_every, cfg.train.steps, cfg.train.keep_checkpoints
        self.seconds = 0.0

    def resume(self, log) -> int:
        """The step to start from: the newest checkpoint's, loaded on every rank, or 0. Rank 0 then
        truncates metrics.jsonl to it, or sets an older one aside for a new run."""
        step, tag = resume(self.dir, self.engine, self.state, self.cfg, rank=self.rank, world=self.world)
        if self.rank == 0:
            if tag is not None:
                truncate_metrics(self.metrics, step)
                log(f"resumed from {self.dir / tag} at step {step}")
            else:
                aside = set_aside_metrics(self.metrics)
                if aside:
                    log(f"starting a new run in {self.metrics.parent}: the earlier metrics.jsonl (no checkpoint "
                        f"to resume) is kept as {aside.name}")
        return step

    def due(self, done: int) -> bool:
        return done % self.every == 0 or done == self.steps

    def flush_if_due(self, done: int) -> None:
        if self.due(done):
            self.state.source.flush()

    def save(self, step: int, tag: str | None = None, *, latest: bool = True) -> Path:
        """Checkpoint `step` as `tag` (default step<step>); a regular one becomes `latest`."""
        t0 = time.perf_counter()
        self.state.source.flush()
        path = save(self.dir, self.engine, self.state, step, tag or f"step{step:08d}", config=self.config,
                    rank=self.rank, world=self.world, keep=self.keep, latest=latest)
        self.seconds += time.perf_counter() - t0
        return path


def check_resumable(cfg: Config, tag_dir: Path, world: int) -> None:
    """The checkpoint was written by as many ranks, with the same config but for the keys a resume
    may change (config.RESUMABLE_CHANGES)."""
    from aria_hpc.config import RESUMABLE_CHANGES, changed_keys, flatten

    meta = json.loads((tag_dir / META).read_text())
    if meta["world_size"] != world:
        raise UserError(f"the checkpoint in {tag_dir} was written by {meta['world_size']} ranks, this run "
                        f"has {world}: resume with {meta['world_size']} ranks (DeepSpeed's universal checkpoint "
                        "conversion, ds_to_universal.py, is the way to change it)")
    differ = changed_keys(flatten(cfg), meta["config"], may_differ=RESUMABLE_CHANGES)
    if differ:
        raise UserError(f"the checkpoint in {tag_dir} was written with a different config (differs in "
                        f"{', '.join(differ[:8])}): restore those values, or use another run.dir")


def damaged(tag_dir: Path, part: tuple[int, int] = (0, 1), *, raise_error: bool = True) -> str | None:
    """Hash the files of a tag listed with a digest in its meta (every `part[1]`-th one from `part[0]`,
    so ranks share the work) against it. UserError naming the first that differs, and the newest
    complete checkpoint that verifies (raise_error=False: the reason, or None)."""
    from aria_hpc.train.digests import file_digest

    meta = json.loads((tag_dir / META).read_text())
    listed = sorted((meta.get("sha256") or {}).items())  # checkpoints written before digests: nothing to check
    for name, want in listed[part[0]::part[1]]:
        got = file_digest(tag_dir / name)
        if got != want:
            why = f"has {name} damaged (it hashes to {got[:12]}, it was written as {want[:12]})"
            if not raise_error:
                return why
            raise UserError(f"the checkpoint {tag_dir} {why}: {way_back(tag_dir.parent, tag_dir.name, verify=True)}")
    return None


def tag_files(tag_dir: Path) -> dict[str, int]:
    """Every file of a tag directory but the meta, with its size (what the meta lists)."""
    return {str(p.relative_to(tag_dir)): p.stat().st_size for p in sorted(tag_dir.rglob("*"))
            if p.is_file() and p.name != META}


def incomplete(tag_dir: Path) -> str | None:
    """Why the checkpoint in tag_dir cannot be resumed from (None when it is complete)."""
    if not tag_dir.is_dir():
        return "does not exist"
    meta_path = tag_dir / META
    if not meta_path.is_file():
        return f"has no {META} (it is written last, so saving was interrupted)"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"has an unreadable {META}"
    if META_DIGEST in meta and meta[META_DIGEST] != meta_digest(meta):
        return f"has a damaged {META} (it does not hash to its {META_DIGEST})"
    # checkpoints written before the file list existed: at least every rank's own file
    files = meta.get("files") or {rank_file(r): None for r in range(int(meta.get("world_size", 1)))}
    missing = [name for name in files if not (tag_dir / name).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        return f"lacks {', '.join(missing[:3])}{more}"
    for name, size in files.items():
        if size is not None and (tag_dir / name).stat().st_size != size:
            return f"has {name} of {(tag_dir / name).stat().st_size} bytes, written as {size}"
    return None


def complete_tags(ckpt_dir: Path) -> list[str]:
    """The regular (step*) checkpoints that are complete, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return [p.name for p in sorted(ckpt_dir.glob("step*")) if p.is_dir() and incomplete(p) is None]


def way_back(ckpt_dir: Path, bad: str | None = None, *, verify: bool = False) -> str:
    """How to go on: resume from the newest complete checkpoint other than `bad` (with `verify`, the
    newest whose files also hash to their digests), or start elsewhere."""
    complete = [t for t in complete_tags(ckpt_dir) if t != bad]
    if verify:
        complete = [t for t in complete if damaged(ckpt_dir / t, raise_error=False) is None]
    if complete:
        return (f"resume from the complete checkpoint {complete[-1]} with "
                f"`echo {complete[-1]} > {ckpt_dir / LATEST}`, or point run.dir elsewhere to start over")
    return f"no complete checkpoint is left in {ckpt_dir}: point run.dir elsewhere to start over"


def resume_tag(ckpt_dir: Path) -> str | None:
    """The tag to resume from, None to start a new run, or UserError when neither is safe.

    An incomplete `latest` names the newest complete checkpoint as the way back. Without `latest`,
    the newest complete checkpoint is resumed (a save killed after its meta, before `latest`, leaves
    exactly that); the caller's config check still refuses one written with another config, so a new
    run never overwrites complete checkpoints."""
    latest = ckpt_dir / LATEST
    if latest.is_file():
        tag = latest.read_text().strip()
        why = incomplete(ckpt_dir / tag)
        if why is None:
            return tag
        raise UserError(f"{latest} names {ckpt_dir / tag}, which {why}: {way_back(ckpt_dir, tag)}")
    complete = complete_tags(ckpt_dir)
    return complete[-1] if complete else None


def truncate_metrics(path: Path, step: int) -> None:
    """Resuming: drop records after the resumed step, so the log reads as one uninterrupted run."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def set_aside_metrics(path: Path) -> Path | None:
    """Starting a new run: an older metrics.jsonl (a run killed before its first checkpoint) is
    renamed to metrics.jsonl.<n>, never appended to; returns the new name."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    n = 1
    while path.with_name(f"{path.name}.{n}").exists():
        n += 1
    aside = path.with_name(f"{path.name}.{n}")
    path.rename(aside)
    return aside


def prune(ckpt_dir: Path, keep: int) -> None:
    import shutil

    tags = sorted(p for p in ckpt_dir.glob("step*") if p.is_dir())
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
