"""The bank build stage: `aria-hpc bank` builds the missing shards of a config's bank (in this
process, or one submitit array task per shard), checks a read-only one, and reports a bank's status.
It sits above the run context (it loads one per shard); the shard format is bank/writer.py's."""

from __future__ import annotations

from aria_hpc.config import Config

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from aria_hpc.bank.integrity import ShardFault, verify_shards
from aria_hpc.bank.manifest import MANIFEST, WRITERS, check_fingerprint, read_manifest, shard_name, update_manifest
from aria_hpc.bank.noise import noised_inputs
from aria_hpc.bank.plan import plan_bank, shard_plan
from aria_hpc.bank.writer import check_shards, prepare_bank_dir, shard_is_complete, write_shard
from aria_hpc.context import RunContext, load_context
from aria_hpc.errors import UserError
from aria_hpc.jobs import run_array
from aria_hpc.models.runner import TeacherRunner


def build_shard(ctx: RunContext, index: int, progress: Callable[[int, int, int], None] | None = None) -> int:
    """Compute and write planned shard `index`; the number of teacher forwards (entries) it took."""
    b = ctx.cfg.bank
    bank_dir = Path(b.dir)
    plan = plan_bank(ctx.conditioning, entries=b.entries, min_per_region=b.min_per_region, seed=ctx.cfg.seed)
    cols = shard_plan(plan, index, b.shards)
    runner = TeacherRunner(ctx, b.features)
    x0 = ctx.x0  # an ndarray, or X0Rows read a batch at a time
    scheduler = ctx.teacher.noise_schedule
    n = len(cols["entry"])

    def batches():
        for start in range(0, n, b.batch_size):
            sl = slice(start, min(n, start + b.batch_size))
            x_t = noised_inputs(scheduler, torch.from_numpy(x0[cols["image"][sl]]), cols["t"][sl], cols["seed"][sl])
            output, feats = runner(x_t, cols["t"][sl], cols["cond"][sl])
            yield sl.start, sl.stop, output, feats
            if progress:
                progress(index, sl.stop, n)

    write_shard(bank_dir / shard_name(index), ctx.fingerprint, {"kind": "planned", "index": index},
                cols, batches(), tuple(ctx.x0.shape[1:]))
    return runner.forwards


def _build_shard_job(cfg: Config, index: int) -> int:
    """One job-array task (submitit pickles this): load the context, build one shard."""
    return build_shard(load_context(cfg), index)


def submit_shards(cfg: Config, indices: list[int], executor: str, log: Callable[[str], None]) -> int:
    """One submitit array task per shard; waits for them; total teacher forwards."""
    return sum(run_array(cfg, executor, _build_shard_job, indices, "bank", "array", "bank shard {index}", log))


def check_read_only_bank(cfg: Config, *, verify: bool = False, log: Callable[[str], None] = print) -> dict:
    """`aria-hpc bank` on a bank this user cannot write: check it for this config and write nothing
    (no manifest update, no verified cache, no shard set aside)."""
    from aria_hpc.bank.paired import X0_FILE
    bank_dir = Path(cfg.bank.dir)
    fix = f"make {bank_dir} writable (or copy it elsewhere and point bank.dir there), then run `aria-hpc bank`"
    manifest = read_manifest(bank_dir)
    if not (bank_dir / X0_FILE).is_file():
        raise UserError(f"bank {bank_dir} is read-only and lacks {X0_FILE}: {fix}")
    ctx = load_context(cfg)
    check_fingerprint(str(bank_dir / MANIFEST), manifest["fingerprint"], ctx.fingerprint)
    if not manifest["complete"]:
        raise UserError(f"bank {bank_dir} is read-only and incomplete (missing shards {manifest['missing'][:8]}): "
                        f"{fix}")
    try:
        hashed = verify_shards(bank_dir, manifest["shards"], force=verify)
    except ShardFault as fault:
        raise UserError(f"bank shard {fault.path} {fault.why}; the bank is read-only, so nothing was set aside: "
                        f"{fix} to rebuild that shard") from None
    log(f"bank {bank_dir}: read-only; {len(manifest['shards'])} shards checked ({hashed} hashed), nothing written")
    return {"teacher_forwards": 0, "built": [], "manifest": manifest}


def build_bank(cfg: Config, *, shards: list[int] | None = None, rebuild: bool = False, executor: str | None = None,
               verify: bool = False, log: Callable[[str], None] = print,
               progress: Callable[[int, int, int], None] | None = None) -> dict:
    """Set aside every bad shard (check_shards; `verify` hashes even the ones verified before), build
    the missing shards of cfg.bank (all, or the given ones), then update the manifest."""
    bank_dir = Path(cfg.bank.dir or "")
    if rebuild and cfg.bank.dir and bank_dir.is_dir() and shards is None:
        shutil.rmtree(bank_dir)
    ctx = load_context(cfg)
    prepare_bank_dir(bank_dir, ctx.fingerprint, rebuild)
    indices = list(range(cfg.bank.shards)) if shards is None else shards
    bad = [i for i in indices if not 0 <= i < cfg.bank.shards]
    if bad:
        raise UserError(f"--shard {bad[0]}: bank.shards is {cfg.bank.shards}, so a shard index is "
                        f"0..{cfg.bank.shards - 1}")
    for bad_shard in check_shards(bank_dir, force=verify):
        log(f"bank {bank_dir}: {bad_shard.path.name} {bad_shard.why}; set aside as {bad_shard.path.name}.bad")
    todo = [i for i in indices if not shard_is_complete(bank_dir, i, ctx.fingerprint)]
    log(f"bank {bank_dir}: {len(indices) - len(todo)} of {len(indices)} shards complete, building {len(todo)}")
    if executor and todo:
        forwards = submit_shards(cfg, todo, executor, log)
    else:
        forwards = sum(build_shard(ctx, i, progress) for i in todo)
    manifest = update_manifest(bank_dir, ctx.fingerprint)
    return {"teacher_forwards": forwards, "built": todo, "manifest": manifest}


def bank_status(bank_dir: Path) -> dict:
    """Per shard kind (planned / written back): shards, entries, regions covered, bytes."""
    manifest = read_manifest(bank_dir)
    kinds: dict[str, dict] = {}
    for meta in manifest["shards"]:
        kind = "planned" if meta.get("kind", "planned") == "planned" else "written back"
        row = kinds.setdefault(kind, {"shards": 0, "entries": 0, "bytes": 0, "regions": set()})
        path = bank_dir / meta["name"]
        with h5py.File(path, "r", locking=False) as f:
            region, cond, paired = f["region"][:], f["cond"][:], f["paired"][:]
        row["regions"].update(np.unique(region[~paired & (cond >= 0)]).tolist())
        row["shards"] += 1
        row["entries"] += meta["entries"]
        row["bytes"] += path.stat().st_size
    for row in kinds.values():
        row["regions"] = len(row["regions"])
    writers = json.loads((bank_dir / WRITERS).read_text())["writers"] if (bank_dir / WRITERS).is_file() else []
    aside = sorted(p.name for p in bank_dir.glob("shard-*.h5.tmp-*"))  # left by killed writers; never read
    return {"complete": manifest["complete"], "missing": manifest["missing"], "kinds": kinds, "writers": len(writers),
            "left_aside": aside}


def status_lines(bank_dir: Path) -> list[str]:
    """`aria-hpc bank --status`: completeness, writers, and per shard kind its shards, entries, regions
    and bytes, and the unfinished files killed writers left aside."""
    st = bank_status(bank_dir)
    state = "complete" if st["complete"] else f"incomplete (missing planned shards {st['missing'][:8]})"
    lines = [f"bank {bank_dir}: {state}; {st['writers']} write-back writers registered",
             f"{'kind':<13} {'shards':>7} {'entries':>10} {'regions':>8} {'bytes':>14}"]
    for kind in ("planned", "written back"):
        row = st["kinds"].get(kind, {"shards": 0, "entries": 0, "regions": 0, "bytes": 0})
        lines.append(f"{kind:<13} {row['shards']:>7} {row['entries']:>10} {row['regions']:>8} {row['bytes']:>14,}")
    if st["left_aside"]:
        lines.append(f"{len(st['left_aside'])} unfinished shard files left aside by killed writers (never read; safe "
                     f"to delete when no writer runs): {', '.join(st['left_aside'][:3])}")
    return lines
