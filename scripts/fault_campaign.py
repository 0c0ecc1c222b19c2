"""Kill each stage at seeded random moments, run the same command again, and compare with a run that
was never killed (issue 31's fault campaign).

    python scripts/fault_campaign.py [--config configs/debug.yaml] [--moments 20] [--seed 0]
                                     [--stages embed,regions,bank,train,train2,eval] [--dir /tmp/aria_faults]
                                     [--out benchmarks/out/fault_campaign.json] [key=value ...]

For each stage: one uninterrupted run in a fresh workspace gives the reference outputs and the
stage's duration D; then, per moment, a fresh workspace, the same command killed (SIGKILL to its
whole process group) after u x D seconds, u ~ U(0.05, 0.95) seeded, and the same command again to
completion. Then:
- "visible": what a reader can open after the kill is whole (every sealed HDF5 file under its final
  name verifies; a bank lists only complete shards; `latest` names a complete checkpoint);
- "identical": the rerun's outputs equal the reference: HDF5 outputs by their data digest
  (aria_hpc.integrity.data_digest: every dataset's bytes; the files' layout on disk may differ after a
  resumed write), a bank by its manifest's shard digests, training by metrics.jsonl's (step, loss,
  teacher_forwards) and the exported student's bytes, eval by eval.json without its timings and run_dir.
The table: stage, moments tried, killed (the rest finished before the kill), resumed identically,
lost (a rerun that failed), differ.
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

STAGES = ("embed", "regions", "bank", "train", "train2", "eval")
NEEDS = {"embed": (), "regions": ("embed",), "bank": ("embed", "regions"), "train": ("embed", "regions", "bank"),
         "train2": ("embed", "regions", "bank"), "eval": ("embed", "regions", "bank", "train")}
TRAIN = ["train.steps=6", "train.checkpoint_every=2", "train.log_every=1", "train.micro_batch_per_gpu=8",
         "train.policy=aria", "aria.warmup_steps=2", "aria.sync_every=2"]


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
        return [*py, "aria_hpc.cli", "eval", str(ws / "run"), "eval.per_region=2", "eval.per_group=8",
                "eval.per_split_group=16", "eval.sample_steps=4"]
    raise ValueError(stage)


def run(cmd: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def outputs(stage: str, ws: Path) -> dict:
    """What the stage produced, in the form two runs are compared by."""
    from aria_hpc.integrity import data_digest
    import h5py

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
        records = [json.loads(line) for line in (ws / "run" / "metrics.jsonl").read_text().splitlines()]
        student = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((ws / "run" / "student").glob("*"))}
        return {"metrics": [[r["step"], r["loss"], r["teacher_forwards"]] for r in records], "student": student}
    if stage == "eval":
        result = json.loads((ws / "run" / "eval.json").read_text())
        for key in ("timings", "run_dir"):  # how long it took, and where the workspace was
            result.pop(key, None)
        return result
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
    if stage in ("train", "train2"):
        from aria_hpc.train.checkpoint import LATEST, incomplete

        latest = ws / "run" / "checkpoints" / LATEST
        if latest.is_file():
            why = incomplete(ws / "run" / "checkpoints" / latest.read_text().strip())
            if why:
                return f"latest names a checkpoint that {why}"
    return None


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
        ref_ws = root / f"{stage}-ref"
        prepare(stage, base, ref_ws)
        t0 = time.perf_counter()
        res = run(command(stage, ref_ws, config, overrides))
        duration = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"{stage}: the uninterrupted run failed: {res.stderr[-2000:]}")
        reference = outputs(stage, ref_ws)
        row = {"stage": stage, "duration_s": round(duration, 1), "moments": moments, "killed": 0, "identical": 0,
               "lost": 0, "differ": 0, "visible": 0, "notes": []}
        for m in range(moments):
            ws = root / f"{stage}-{m}"
            prepare(stage, base, ws)
            at = float(rng.uniform(0.05, 0.95)) * duration
            proc = subprocess.Popen(command(stage, ws, config, overrides), cwd=ROOT, env=env(), start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=at)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                row["killed"] += 1
            problem = visible_problem(stage, ws)
            if problem:
                row["visible"] += 1
                row["notes"].append(f"moment {m} ({at:.1f}s): {problem}")
            again = run(command(stage, ws, config, overrides))
            if again.returncode != 0:
                row["lost"] += 1
                row["notes"].append(f"moment {m} ({at:.1f}s): rerun exit {again.returncode}: "
                                    f"{(again.stderr.strip().splitlines() or [''])[-1][:300]}")
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "debug.yaml"))
    ap.add_argument("--moments", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--dir", default="/tmp/aria_faults")
    ap.add_argument("--out", default="benchmarks/out/fault_campaign.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"fault_campaign: unknown stage {unknown[0]} (stages: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    rows = campaign(args.config, args.overrides, stages, args.moments, args.seed, Path(args.dir))
    print(f"{'stage':<8} {'moments':>7} {'killed':>6} {'identical':>9} {'lost':>4} {'differ':>6} {'visible':>7} {'run s':>6}")
    for r in rows:
        print(f"{r['stage']:<8} {r['moments']:>7} {r['killed']:>6} {r['identical']:>9} {r['lost']:>4} {r['differ']:>6} "
              f"{r['visible']:>7} {r['duration_s']:>6}")
        for note in r["notes"]:
            print(f"  {note}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "seed": args.seed, "rows": rows}, indent=1))
    shutil.rmtree(args.dir, ignore_errors=True)
    return 0 if all(r["identical"] == r["moments"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
