"""Building a bank: one writer per shard, each shard written aside, verified, fsynced and renamed.

    BANK_DIR/manifest.json        fingerprint + the complete shards with their digests (atomic replace)
    BANK_DIR/x0.h5                the paired set x0 (pixels or latents) noised inputs are made from
    BANK_DIR/shard-00003.h5       shard 3 of the planned entries
    BANK_DIR/shard-live-*.h5      entries a live teacher computed during training (write-back)

A shard is written as ``shard-00003.h5.tmp-<pid>``; a killed writer leaves only such a file, which
no reader opens and the next build of that shard deletes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch

from aria_hpc.bank.fingerprint import fingerprint_diff
from aria_hpc.bank.integrity import ShardFault, remember_written, set_aside, shard_digest, verify_shards
from aria_hpc.bank.noise import noised_inputs
from aria_hpc.bank.plan import COLUMNS, plan_bank, shard_plan
from aria_hpc.errors import UserError
from aria_hpc.fsio import atomic_write_text, fsync_path
from aria_hpc.h5doc import describe, prediction_type
from aria_hpc.models.runner import TeacherRunner

if TYPE_CHECKING:
    from aria_hpc.context import RunContext

MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def write_shard(path: Path, fingerprint: dict, attrs: dict, cols: dict[str, np.ndarray],
                batches, output_shape: tuple[int, ...]) -> str:
    """Write a shard aside, verify it, fsync and rename it to `path`; its digest.

    `batches` yields (start, stop, output float16, {feature: float16}) covering the rows in order;
    feature datasets take their shapes from the first batch. The outputs are one contiguous
    (unchunked) float16 dataset, so readers can memory-map it.
    """
    for stale in path.parent.glob(f"{path.name}.tmp-*"):  # left by a killed writer of this very shard
        stale.unlink()
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    n = len(cols["entry"])
    with h5py.File(tmp, "w") as f:
        for key in COLUMNS:
            f.create_dataset(key, data=cols[key])
        out = f.create_dataset("output", (n, *output_shape), dtype=np.float16)
        written = 0
        for start, stop, output, features in batches:
            out[start:stop] = output
            for k, v in features.items():
                if f"features/{k}" not in f:
                    f.create_dataset(f"features/{k}", (n, *v.shape[1:]), dtype=np.float16)
                f[f"features/{k}"][start:stop] = v
            written = stop
            f.flush()
        if written != n:
            raise RuntimeError(f"shard writer produced {written} of {n} rows")
        digest = shard_digest(f)
        f.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
        f.attrs["entries"] = n
        f.attrs["digest"] = digest
        for k, v in attrs.items():
            f.attrs[k] = v
        describe(f, "bank_shard")
        f["output"].attrs["prediction_type"] = prediction_type(fingerprint)
    with h5py.File(tmp, "r", locking=False) as f:  # verify what reached the file
        if shard_digest(f) != digest:
            raise RuntimeError(f"{tmp}: digest changed on re-read; the file system lost data")
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)
    remember_written(path, digest)
    return digest


def read_shard_meta(path: Path) -> dict:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return {"name": path.name, "entries": int(f.attrs["entries"]), "digest": str(f.attrs["digest"]),
                    "kind": str(f.attrs["kind"]), "fingerprint": json.loads(f.attrs["fingerprint"])}
    except (OSError, KeyError) as exc:
        raise ShardFault(path, f"cannot be read as a bank shard ({str(exc).splitlines()[0]})") from None


def check_fingerprint(where: str, have: dict, want: dict) -> None:
    differ = fingerprint_diff(have, want)
    if differ:
        raise UserError(f"{where} was built with a different fingerprint (differs in {', '.join(differ)}): "
                        "pass --rebuild to replace it, or point bank.dir at another directory")


def manifest_lock(bank_dir: Path):
    """The bank's writers' lock (the manifest, writer ids, the verification cache)."""
    from aria_hpc.fsio import file_lock

    return file_lock(bank_dir / ".manifest.lock")


def update_manifest(bank_dir: Path, fingerprint: dict) -> dict:
    """List every complete shard (planned and live) in manifest.json, replaced atomically."""
    planned = fingerprint["sampling"]["shards"]
    with manifest_lock(bank_dir):
        shards = []
        for path in sorted(bank_dir.glob("shard-*.h5")):
            meta = read_shard_meta(path)
            check_fingerprint(str(path), meta.pop("fingerprint"), fingerprint)
            shards.append(meta)
        have = {s["name"] for s in shards}
        missing = [i for i in range(planned) if shard_name(i) not in have]
        manifest = {"schema_version": fingerprint["schema_version"], "fingerprint": fingerprint,
                    "planned_shards": planned, "complete": not missing, "missing": missing,
                    "entries": sum(s["entries"] for s in shards), "shards": shards}
        atomic_write_text(bank_dir / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


WRITERS = "writers.json"


def claim_writer(bank_dir: Path, owner: dict, *, reuse: bool = False) -> int:
    """A writer id unique in this bank, registered under the manifest lock in BANK_DIR/writers.json.
    Write-back shards are named after it and entry ids carry it, so sweep members, ranks and job
    arrays writing into one bank never collide. reuse: the latest id registered to the same owner
    (a resumed run continues its own names), else a new one."""
    with manifest_lock(bank_dir):
        path = bank_dir / WRITERS
        writers = json.loads(path.read_text())["writers"] if path.is_file() else []
        if reuse:
            same = [w["id"] for w in writers if w["owner"] == owner]
            if same:
                return same[-1]
        wid = len(writers)
        writers.append({"id": wid, "owner": owner, "host": os.uname().nodename, "pid": os.getpid()})
        atomic_write_text(path, json.dumps({"writers": writers}, indent=1))
    return wid


def bank_status(bank_dir: Path) -> dict:
    """Per shard kind (planned / written back): shards, entries, regions covered, bytes."""
    from aria_hpc.bank.reader import read_manifest

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


def existing_fingerprint(bank_dir: Path) -> tuple[str, dict] | None:
    """The fingerprint of what is already in bank_dir (manifest, else any complete shard)."""
    if (bank_dir / MANIFEST).is_file():
        return str(bank_dir / MANIFEST), json.loads((bank_dir / MANIFEST).read_text())["fingerprint"]
    for path in sorted(bank_dir.glob("shard-*.h5")):
        return str(path), read_shard_meta(path)["fingerprint"]
    return None


def prepare_bank_dir(bank_dir: Path, fingerprint: dict, rebuild: bool) -> None:
    """Refuse a bank built differently (or wipe it with rebuild); never reuse it silently."""
    found = existing_fingerprint(bank_dir) if bank_dir.is_dir() else None
    if found is None:
        return
    where, have = found
    if not rebuild:
        check_fingerprint(where, have, fingerprint)  # raises on any difference
    elif fingerprint_diff(have, fingerprint):
        for path in list(bank_dir.glob("shard-*.h5*")) + [bank_dir / MANIFEST]:
            path.unlink(missing_ok=True)


def check_shards(bank_dir: Path, *, force: bool = False) -> list[ShardFault]:
    """Every shard file in bank_dir checked against its own digest and the manifest's (verified ones
    by the cache unless `force`); each bad one is set aside (`<name>.bad`) and returned, so a planned
    shard is then missing and rebuilt with the same digest, and a written-back one leaves the manifest."""
    if not bank_dir.is_dir():
        return []
    listed = {}
    if (bank_dir / MANIFEST).is_file():
        listed = {m["name"]: m["digest"] for m in json.loads((bank_dir / MANIFEST).read_text()).get("shards", [])}
    bad: list[ShardFault] = []
    shards = [{"name": p.name, "digest": listed.get(p.name)} for p in sorted(bank_dir.glob("shard-*.h5"))]
    verify_shards(bank_dir, shards, force=force, faults=bad)
    for fault in bad:
        set_aside(fault.path)
    return bad


def shard_is_complete(bank_dir: Path, index: int, fingerprint: dict) -> bool:
    path = bank_dir / shard_name(index)
    if not path.is_file():
        return False
    check_fingerprint(str(path), read_shard_meta(path)["fingerprint"], fingerprint)
    return True


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


def _build_shard_job(cfg, index: int) -> int:
    """One job-array task (submitit pickles this): load the context, build one shard."""
    from aria_hpc.context import load_context

    return build_shard(load_context(cfg), index)


def submit_shards(cfg, indices: list[int], executor: str, log: Callable[[str], None]) -> int:
    """One submitit array task per shard; waits for them; total teacher forwards."""
    from aria_hpc.launch.executor import run_array

    return sum(run_array(cfg, executor, _build_shard_job, indices, "bank", "array", "bank shard {index}", log))


def check_read_only_bank(cfg, *, verify: bool = False, log: Callable[[str], None] = print) -> dict:
    """`aria-hpc bank` on a bank this user cannot write: check it for this config and write nothing
    (no manifest update, no verified cache, no shard set aside)."""
    from aria_hpc.bank.paired import X0_FILE
    from aria_hpc.bank.reader import read_manifest
    from aria_hpc.context import load_context

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


def build_bank(cfg, *, shards: list[int] | None = None, rebuild: bool = False, executor: str | None = None,
               verify: bool = False, log: Callable[[str], None] = print,
               progress: Callable[[int, int, int], None] | None = None) -> dict:
    """Set aside every bad shard (check_shards; `verify` hashes even the ones verified before), build
    the missing shards of cfg.bank (all, or the given ones), then update the manifest."""
    from aria_hpc.context import load_context

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
