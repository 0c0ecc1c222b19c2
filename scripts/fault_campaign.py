"""Kill each stage at seeded random moments, run the same command again, and compare with a run that
was never killed; flip a byte of every file kind at a seeded random place and run the next command a
user would run (issue 31's fault campaign).

    python scripts/fault_campaign.py [--config configs/debug.yaml | --tiny] [--moments 20] [--flips 5] [--seed 0]
                                     [--stages embed,regions,bank,train,train2,eval,sweep] [--dir /tmp/aria_faults]
                                     [--out benchmarks/out/fault_campaign.json] [key=value ...]

--tiny: the world the test suite uses (aria_hpc.testing: the shapes world embedded with a tiny BERT,
a tiny random pixel teacher), built under --dir; its stages take seconds, configs/debug.yaml's minutes.

For each stage: two uninterrupted runs in fresh workspaces give the reference outputs (they must
agree) and the stage's duration D (the quicker: a first run pays for cold caches, and kills timed
from it would land after most reruns finish); a run that still finishes before its kill (a shared
machine's speed varies) is started again in a fresh workspace with the kill at half the time, up to
RETRIES times, so "killed" counts the moments that were really interrupted; then, per moment, a fresh workspace, the same command killed (SIGKILL to its
whole process group) after u x D seconds, u ~ U(0.05, 0.95) seeded, and the same command again to
completion. Then:
- "visible": what a reader can open after the kill is whole (every sealed HDF5 file under its final
  name verifies; a bank lists only complete shards; `latest` names a complete checkpoint);
- "identical": the rerun's outputs equal the reference: HDF5 outputs by their data digest
  (aria_hpc.integrity.data_digest: every dataset's bytes; the files' layout on disk may differ after a
  resumed write), a bank by its manifest's shard digests, training by metrics.jsonl's (step, loss,
  teacher_forwards) and the exported student's bytes, eval by eval.json without its timings and run_dir.
The table: stage, moments tried, killed (the rest finished before the kill), resumed identically,
lost (a rerun that failed), differ. The sweep stage kills `aria-hpc sweep` (its submitit controller
and the member's job with it) while its one member trains or evaluates, and compares the member's run.

Flips: per file kind (prompt pool, embedding shard, region map, bank shard, x0, checkpoint file),
one byte of its stored data (a seeded dataset, chunk and offset of an HDF5 file; a
seeded offset of any other file) XORed with a seeded nonzero byte, one file at a time in a fresh
copy; then the next command. A case passes when that command exits 2 with one line naming the file,
or exits 0 having repaired the file to the data it was written with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("embed", "regions", "bank", "train", "train2", "eval", "sweep")
NEEDS = {"embed": (), "regions": ("embed",), "bank": ("embed", "regions"), "train": ("embed", "regions", "bank"),
         "train2": ("embed", "regions", "bank"), "eval": ("embed", "regions", "bank", "train"),
         "sweep": ("embed", "regions", "bank")}
TRAIN = ["train.steps=6", "train.checkpoint_every=2", "train.log_every=1", "train.micro_batch_per_gpu=8",
         "train.policy=aria", "aria.warmup_steps=2", "aria.sync_every=2"]
RETRIES = 3  # a moment whose run finished before its kill is tried again this often, the kill at half the time
EVAL = ["eval.per_region=2", "eval.per_group=8", "eval.per_split_group=16", "eval.sample_steps=4"]


def env() -> dict:
    e = dict(os.environ)
    e.update(DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])
    return e


def paths(ws: Path, config: str, overrides: list[str]) -> list[str]:
    return [config, *overrides, f"embed.dir={ws / 'emb'}", f"regions.path={ws / 'emb' / 'regions.h5'}",
            f"bank.dir={ws / 'bank'}", f"run.dir={ws / 'run'}", f"launch.folder={ws / 'submitit'}", "embed.shards=2",
            "bank.shards=2"]


def command(stage: str, ws: Path, config: str, overrides: list[str]) -> list[str]:
    py = [sys.executable, "-m"]
    args = paths(ws, config, overrides)
    if stage == "embed":
        return [*py, "aria_hpc.cli", "embed", *args, "--quiet"]
    if stage in ("regions", "bank"):
        return [*py, "aria_hpc.cli", stage, *args, *(["--quiet"] if stage == "bank" else [])]
    if stage == "train":
        return [*py, "aria_hpc.train", *args, *TRAIN]
    if stage == "train2":
        from socket import socket

        with socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", "2", "--master_port",
                str(port), "--module", "aria_hpc.train", *args, *TRAIN]
    if stage == "eval":
        return [*py, "aria_hpc.cli", "eval", str(ws / "run"), *EVAL]
    if stage == "sweep":  # one member: training, then its evaluation, in a local submitit job
        import yaml

        sweep = ws / "sweep.yaml"
        sweep.write_text(yaml.safe_dump({"base": str(Path(config).resolve()), "dir": str(ws / "sweep"),
                                         "overrides": [*args[1:], *TRAIN, *EVAL], "seeds": [0]}))
        return [*py, "aria_hpc.cli", "sweep", str(sweep), "--executor", "local"]
    raise ValueError(stage)


def member_dir(ws: Path) -> Path:
    [run_dir] = (ws / "sweep" / "members").glob("*")
    return run_dir


def run_dir_of(stage: str, ws: Path) -> Path:
    return member_dir(ws) if stage == "sweep" else ws / "run"


def training_outputs(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    student = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run_dir / "student").glob("*"))}
    return {"metrics": [[r["step"], r["loss"], r["teacher_forwards"]] for r in records], "student": student}


def eval_outputs(run_dir: Path) -> dict:
    result = json.loads((run_dir / "eval.json").read_text())
    for key in ("timings", "run_dir"):  # how long it took, and where the workspace was
        result.pop(key, None)
    return result


def run(cmd: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def outputs(stage: str, ws: Path) -> dict:
    """What the stage produced, in the form two runs are compared by."""
    import h5py

    from aria_hpc.integrity import data_digest

    def h5(path: Path) -> str | None:
        if not path.is_file():
            return None
        with h5py.File(path, "r", locking=False) as f:
            return data_digest(f)
    emb = ws / "emb"
    if stage == "embed":
        return {p.name: h5(p) for p in sorted(emb.glob("*.h5")) if p.name != "regions.h5"}
    if stage == "regions":
        return {"regions.h5": h5(emb / "regions.h5")}
    if stage == "bank":
        manifest = json.loads((ws / "bank" / "manifest.json").read_text())
        return {"shards": {s["name"]: s["digest"] for s in manifest["shards"]}, "x0": h5(ws / "bank" / "x0.h5")}
    if stage in ("train", "train2"):
        return training_outputs(ws / "run")
    if stage == "eval":
        return eval_outputs(ws / "run")
    if stage == "sweep":
        return {**training_outputs(member_dir(ws)), "eval": eval_outputs(member_dir(ws))}
    raise ValueError(stage)


def visible_problem(stage: str, ws: Path) -> str | None:
    """Whether a reader could open something half-written after the kill (None: nothing)."""
    from aria_hpc.errors import UserError
    from aria_hpc.integrity import verify

    for path in sorted((ws / "emb").glob("*.h5")):
        try:
            verify(path, "file", "", force=True)
        except UserError as exc:
            return str(exc)
    manifest = ws / "bank" / "manifest.json"
    if stage == "bank" and manifest.is_file():
        listed = json.loads(manifest.read_text())["shards"]
        for s in listed:
            if not (ws / "bank" / s["name"]).is_file():
                return f"the manifest lists {s['name']}, which is not there"
    if stage in ("train", "train2", "sweep"):
        from aria_hpc.train.checkpoint import LATEST, incomplete

        if stage == "sweep" and not list((ws / "sweep" / "members").glob("*")):
            return None  # killed before the member started
        ckpt = run_dir_of(stage, ws) / "checkpoints"
        latest = ckpt / LATEST
        if latest.is_file():
            why = incomplete(ckpt / latest.read_text().strip())
            if why:
                return f"latest names a checkpoint that {why}"
    return None


def why_lost(stage: str, ws: Path, res: subprocess.CompletedProcess) -> str:
    """What a failed rerun said: its last lines of output, and for a sweep its member's state and the
    end of the member job's own log (the workspace is deleted after the moment)."""
    said = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip() and not ln.startswith("[")][-6:]
    out = " | ".join(said)[-1200:]
    if stage == "sweep":
        members = list((ws / "sweep" / "members").glob("*/member.json"))
        if members:
            out += f" || member.json: {members[0].read_text()[:400]}"
        logs = sorted((ws / "sweep" / "submitit").rglob("*_log.err"), key=lambda p: p.stat().st_mtime)
        if logs:
            tail = [ln for ln in logs[-1].read_text(errors="replace").splitlines() if ln.strip()][-4:]
            out += f" || {logs[-1].name}: {' | '.join(tail)[-800:]}"
    return out


def prepare(stage: str, base: Path, ws: Path) -> None:
    """A fresh workspace holding what `stage` needs, copied from the base built once."""
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    needs = NEEDS[stage]
    if "embed" in needs:
        shutil.copytree(base / "emb", ws / "emb", ignore=shutil.ignore_patterns(
            *(["regions.h5"] if "regions" not in needs else []), ".verified*"))
    if "bank" in needs:
        shutil.copytree(base / "bank", ws / "bank", ignore=shutil.ignore_patterns("eval_cache", ".verified*"))
    if "train" in needs:
        shutil.copytree(base / "run", ws / "run", ignore=shutil.ignore_patterns("eval.json", "eval_samples.npz"))


def build_base(base: Path, config: str, overrides: list[str], log=print) -> None:
    """Every stage's inputs, built once by running the stages in order."""
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    for stage in ("embed", "regions", "bank", "train"):
        res = run(command(stage, base, config, overrides))
        if res.returncode != 0:
            raise SystemExit(f"building the campaign's inputs: {stage} failed: {res.stderr[-2000:]}")
        log(f"inputs: {stage} done")


def campaign(config: str, overrides: list[str], stages, moments: int, seed: int, root: Path, log=print,
             base: Path | None = None) -> list[dict]:
    """The campaign's rows; `base`: inputs already built by build_base (else built under root)."""
    if base is None:
        base = root / "base"
        build_base(base, config, overrides, log)
    rng = np.random.default_rng([seed, 0xFA17])
    rows = []
    for stage in stages:
        durations, references = [], []
        for r in range(2):  # twice: the outputs must agree (what the comparison rests on); D is the quicker
            ref_ws = root / f"{stage}-ref{r}"
            prepare(stage, base, ref_ws)
            t0 = time.perf_counter()
            res = run(command(stage, ref_ws, config, overrides))
            durations.append(time.perf_counter() - t0)
            if res.returncode != 0:
                raise SystemExit(f"{stage}: the uninterrupted run failed: {res.stderr[-2000:]}")
            references.append(outputs(stage, ref_ws))
            shutil.rmtree(ref_ws, ignore_errors=True)
        if references[0] != references[1]:
            raise SystemExit(f"{stage}: two uninterrupted runs differ, so a killed run cannot be compared with one")
        reference, duration = references[0], min(durations)
        row = {"stage": stage, "duration_s": round(duration, 1), "moments": moments, "killed": 0, "identical": 0,
               "lost": 0, "differ": 0, "visible": 0, "notes": []}
        for m in range(moments):
            ws = root / f"{stage}-{m}"
            at = float(rng.uniform(0.05, 0.95)) * duration
            for attempt in range(RETRIES + 1):  # a run that beat its kill is done again with the kill at half the time
                prepare(stage, base, ws)
                proc = subprocess.Popen(command(stage, ws, config, overrides), cwd=ROOT, env=env(),
                                        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    proc.wait(timeout=at)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    row["killed"] += 1
                    break
                if attempt < RETRIES:
                    at /= 2
            problem = visible_problem(stage, ws)
            if problem:
                row["visible"] += 1
                row["notes"].append(f"moment {m} ({at:.1f}s): {problem}")
            again = run(command(stage, ws, config, overrides))
            if again.returncode != 0:
                row["lost"] += 1
                row["notes"].append(f"moment {m} ({at:.1f}s): rerun exit {again.returncode}: {why_lost(stage, ws, again)}")
            elif outputs(stage, ws) == reference:
                row["identical"] += 1
            else:
                row["differ"] += 1
                row["notes"].append(f"moment {m} ({at:.1f}s): outputs differ from the uninterrupted run's")
            shutil.rmtree(ws, ignore_errors=True)
        log(f"{stage}: {row['identical']}/{moments} identical ({row['killed']} killed), lost {row['lost']}, "
            f"differ {row['differ']}, half-written visible {row['visible']}")
        rows.append(row)
    return rows


# kind: (files it covers, relative to a workspace; the stage whose inputs the workspace holds; the next
# command a user would run; whether that command may repair the file instead of refusing it)
FLIP_KINDS = {
    "prompt pool": ("emb/prompts.h5", "regions", "regions", False),
    "embedding shard": ("emb/shard-*.h5", "regions", "regions", False),
    "region map": ("emb/regions.h5", "train", "bank", False),
    "bank shard": ("bank/shard-*.h5", "train", "train", False),
    "x0": ("bank/x0.h5", "train", "train", True),
    "checkpoint file": ("run/checkpoints/LATEST/*", "train", "resume", False),  # the tag `latest` names
}


def flip_byte(path: Path, rng) -> str:
    """XOR one byte of `path`'s stored data with a seeded nonzero byte: in an HDF5 file, a seeded
    dataset, chunk and offset (so the file still opens and only its digest tells); in any other file,
    a seeded offset. Returns where."""
    import h5py

    where = None
    if h5py.is_hdf5(path):
        places = []
        with h5py.File(path, "r", locking=False) as f:
            def visit(name, ds):
                if not isinstance(ds, h5py.Dataset) or ds.id.get_storage_size() == 0:
                    return
                if ds.chunks is not None:
                    places.extend((name, ds.id.get_chunk_info(i).byte_offset, ds.id.get_chunk_info(i).size)
                                  for i in range(ds.id.get_num_chunks()))
                elif ds.id.get_offset() is not None:  # contiguous (a compact dataset lives in the header)
                    places.append((name, ds.id.get_offset(), ds.id.get_storage_size()))
            f.visititems(visit)
        names = sorted({p[0] for p in places})
        name = names[int(rng.integers(len(names)))]
        chunks = [p for p in places if p[0] == name]
        _, start, size = chunks[int(rng.integers(len(chunks)))]
        offset = start + int(rng.integers(size))
        where = f"{name} byte {offset}"
    else:
        offset = int(rng.integers(path.stat().st_size))
        where = f"byte {offset}"
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ int(rng.integers(1, 256))]))
    return where


def h5_digest(path: Path) -> str:
    import h5py

    from aria_hpc.integrity import data_digest

    with h5py.File(path, "r", locking=False) as f:
        return data_digest(f)


def readable_digest(path: Path) -> str | None:
    """h5_digest, or None when the data no longer decode."""
    try:
        return h5_digest(path)
    except (OSError, KeyError, ValueError, RuntimeError):
        return None


def flip_campaign(config: str, overrides: list[str], flips: int, seed: int, root: Path, base: Path,
                  kinds=None, log=print) -> list[dict]:
    """Per file kind, `flips` cases: one byte flipped (flip_byte) in one seeded file of that kind, in a
    fresh copy of the inputs, then the next command. Rows: kind, cases, refused (exit 2, one line naming
    the file), repaired (exit 0, the file's data as written), unchanged (the flip hit bits HDF5 never
    decodes, so the data read back as written and no command is run), failed (anything else, noted)."""
    rng = np.random.default_rng([seed, 0xF11B])
    rows = []
    for kind in kinds or FLIP_KINDS:
        pattern, inputs, next_command, may_repair = FLIP_KINDS[kind]
        row = {"kind": kind, "cases": flips, "refused": 0, "repaired": 0, "unchanged": 0, "failed": 0, "notes": []}
        for case in range(flips):
            ws = root / f"flip-{case}"
            prepare(inputs, base, ws)
            where_to = pattern
            if next_command == "resume":  # a run of this workspace's own (a checkpoint holds its paths)
                done = run(command("train", ws, config, overrides))
                if done.returncode != 0:
                    raise SystemExit(f"flips: the run to damage failed: {done.stderr[-2000:]}")
                where_to = pattern.replace("LATEST", (ws / "run" / "checkpoints" / "latest").read_text().strip())
            files = sorted(p for p in ws.glob(where_to) if p.is_file())
            path = files[int(rng.integers(len(files)))]
            import h5py

            before = h5_digest(path) if h5py.is_hdf5(path) else None
            where = flip_byte(path, rng)
            if before is not None and readable_digest(path) == before:
                # the flipped bits are ones no reader decodes (such as a deflate stream's padding bits):
                # every reader gets the written data, so there is nothing to refuse or repair
                row["unchanged"] += 1
                row["notes"].append(f"{path.relative_to(ws)} ({where}): the data read back unchanged")
                shutil.rmtree(ws, ignore_errors=True)
                continue
            cmd = (command("train", ws, config, overrides) + ["train.steps=8"] if next_command == "resume"
                   else command(next_command, ws, config, overrides))
            res = run(cmd)
            ours = [line for line in res.stderr.splitlines() if line.startswith("aria-hpc: error:")]
            case_name = f"{path.relative_to(ws)} ({where})"
            if res.returncode == 2 and len(ours) == 1 and path.name in ours[0]:
                row["refused"] += 1
                row["notes"].append(f"{case_name}: {ours[0]}")
            elif res.returncode == 0 and may_repair and h5_digest(path) == before:
                row["repaired"] += 1
                row["notes"].append(f"{case_name}: repaired")
            else:
                row["failed"] += 1
                row["notes"].append(f"{case_name}: FAILED exit {res.returncode}: "
                                    f"{(ours or res.stderr.strip().splitlines() or [''])[-1][:300]}")
            shutil.rmtree(ws, ignore_errors=True)
        log(f"flip {kind}: {row['refused']} refused, {row['repaired']} repaired, {row['unchanged']} unchanged, "
            f"{row['failed']} failed of {flips}")
        rows.append(row)
    return rows


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file as they happen
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "debug.yaml"))
    ap.add_argument("--tiny", action="store_true", help="the test suite's tiny world instead of --config")
    ap.add_argument("--moments", type=int, default=20, help="kills per stage")
    ap.add_argument("--flips", type=int, default=5, help="flipped files per file kind (0: no flips)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default=",".join(STAGES), help="stages to kill (empty: none)")
    ap.add_argument("--dir", default="/tmp/aria_faults")
    ap.add_argument("--out", default="benchmarks/out/fault_campaign.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"fault_campaign: unknown stage {unknown[0]} (stages: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    root, out = Path(args.dir), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from aria_hpc.testing import build_tiny_bert, build_tiny_world

        shutil.rmtree(root, ignore_errors=True)
        args.config = str(build_tiny_world(root / "world", build_tiny_bert(root / "tiny_bert")))
    build_base(root / "base", args.config, args.overrides)
    result = {"config": "tiny" if args.tiny else args.config, "seed": args.seed, "overrides": args.overrides,
              "rows": [], "flips": []}
    for stage in stages:  # one stage at a time, the JSON rewritten after each (a long campaign shows progress)
        result["rows"] += campaign(args.config, args.overrides, [stage], args.moments, args.seed, root,
                                   base=root / "base")
        out.write_text(json.dumps(result, indent=1))
    if args.flips:
        result["flips"] = flip_campaign(args.config, args.overrides, args.flips, args.seed, root, root / "base")
        out.write_text(json.dumps(result, indent=1))
    print(f"{'stage':<8} {'moments':>7} {'killed':>6} {'identical':>9} {'lost':>4} {'differ':>6} {'visible':>7} {'run s':>6}")
    for r in result["rows"]:
        print(f"{r['stage']:<8} {r['moments']:>7} {r['killed']:>6} {r['identical']:>9} {r['lost']:>4} {r['differ']:>6} "
              f"{r['visible']:>7} {r['duration_s']:>6}")
        for note in r["notes"]:
            print(f"  {note}")
    print(f"\n{'file kind':<16} {'cases':>5} {'refused':>7} {'repaired':>8} {'unchanged':>9} {'failed':>6}")
    for r in result["flips"]:
        print(f"{r['kind']:<16} {r['cases']:>5} {r['refused']:>7} {r['repaired']:>8} {r['unchanged']:>9} {r['failed']:>6}")
        for note in r["notes"]:
            print(f"  {note}")
    shutil.rmtree(root, ignore_errors=True)
    ok = all(r["identical"] == r["moments"] for r in result["rows"]) and not any(r["failed"] for r in result["flips"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
