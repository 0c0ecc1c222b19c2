"""Training throughput per policy and teacher source (bank.mode cached / hybrid / live), the teacher
forwards each run spends, and how often bank entries are reused, in one run.

    python benchmarks/bench_train.py [--config configs/demo.yaml] [--steps 200] [--reuse-steps 1200]
                                     [--dir /tmp/aria_bench_train] [--out benchmarks/out/train.json] [key=value ...]

Setup (not timed): the prompt pool is embedded, split into regions and a bank is built through the
real CLI code into --dir, for the config's teacher (the shipped shapes teacher by default). Then the
real training loop (`aria_hpc.train.loop.train`, DeepSpeed on one CPU rank) runs `--steps` steps for
paired / rc / aria x cached / hybrid / live; samples/s is the median of the logged rates after the
first interval. Every hybrid and live run writes back into its own copy of the bank, so each starts
from the same bank state. Then:
- the same sweep member (rc, hybrid) runs a second time over the bank its first run grew: it must
  spend fewer teacher forwards (the ratio is reported);
- reuse: ARIA at the config's alpha and at alpha = 2 (which concentrates the allocation), cached vs
  hybrid, `--reuse-steps` steps: random-conditioned draws served per distinct entry (median, max,
  from the final checkpoint's ledger; a fresh tuple serves one draw);
- separately timed passes on one batch: the teacher's forward (no grad) and the student's training
  step, giving the ideal cached-bank speed-up (t_teacher + t_student) / t_student; and the learning
  curve's held-out pass (train.curve_every) as a share of training time (target < 5%).
  `--passes-only` runs just these.
- `--paired` (issue 34): ARIA's bookkeeping cost and our loop's cost, each as a paired ratio in one
  process (benchmarks/timing.py: alternating back-to-back segments of `--segment` steps). An RC and an
  ARIA `Session` (the loop's own setup and step, train/loop.py) are built side by side and warmed past
  aria.warmup_steps, then their segments alternate: ARIA's step time / RC's (target <= 1.03x). Then
  our RC step against the loop a user would write instead: plain PyTorch, torch AdamW and the same LR
  schedule and clipping, the same student, the same batches already in memory, no DeepSpeed (target:
  our throughput >= 0.9x that loop's). Where the RC step is slower, its phases are timed one by one.
  ARIA's table operations per step (allocation, alias draws, weights, record, the fold every
  aria.sync_every steps) are also timed alone at K = 256 and K = 65,536 regions, as a share of the RC step.
Targets (issue 5): ARIA's step time <= 1.03x RC's (cached); cached speed-up over the live teacher
>= 0.8x the ideal. Samples/s come from separate runs one after the other (not paired), so compare
them only beyond this machine's run-to-run drift; the forward and reuse counts are exact.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
from pathlib import Path

import numpy as np
import torch
from timing import median_seconds

from aria_hpc.config import load_config

TARGET_ARIA_OVERHEAD = 1.03
TARGET_BANK_FRACTION = 0.8
TARGET_VS_PLAIN = 0.9


def setup(base: list[str], work: Path) -> list[str]:
    """Embeddings, regions and a bank for the config, built once; the overrides that point at them."""
    from aria_hpc.build import build_bank
    from aria_hpc.cli import main

    paths = [f"embed.dir={work / 'emb'}", f"regions.path={work / 'emb' / 'regions.h5'}", f"bank.dir={work / 'bank'}",
             "bank.shards=1"]
    cfg = load_config(base[0], [*base[1:], *paths])
    if not (work / "emb" / "regions.h5").is_file():
        assert main(["embed", base[0], *base[1:], *paths, "--quiet"]) == 0
        assert main(["regions", base[0], *base[1:], *paths]) == 0
    build_bank(cfg, log=lambda _m: None)
    return paths


def run_policy(base: list[str], paths: list[str], work: Path, policy: str, mode: str, steps: int,
               extra: tuple[str, ...] = (), name: str | None = None, bank_dir: Path | None = None) -> dict:
    """One training run; hybrid and live runs write back into a fresh copy of the bank (or bank_dir)."""
    from aria_hpc.train.loop import train

    name = name or f"{policy}-{mode}"
    run_dir = work / f"run-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [*base[1:], *paths, f"run.dir={run_dir}", f"train.policy={policy}", f"train.steps={steps}",
                 "train.log_every=5", "train.checkpoint_every=100000", "train.export=false",
                 f"bank.mode={mode}", *extra]
    if mode != "cached" and bank_dir is None:
        bank_dir = work / f"bank-{name}"
        shutil.rmtree(bank_dir, ignore_errors=True)
        shutil.copytree(work / "bank", bank_dir)
    if bank_dir is not None:
        overrides.append(f"bank.dir={bank_dir}")
    train(load_config(base[0], overrides), log=lambda _m: None)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records[1:]] or [records[0]["samples_per_s"]]
    last = records[-1]
    out = {"samples_per_s": statistics.median(rates), "teacher_forwards": last["teacher_forwards"],
           "bank_hits": last["bank_hits"], "written_back": last["written_back"], "bank_dir": str(bank_dir or "")}
    out.update(reuse(run_dir, steps))
    return out


def reuse(run_dir: Path, steps: int) -> dict:
    """Draws served per distinct entry used (bank entries from the ledger, fresh tuples one each)."""
    state = torch.load(run_dir / "checkpoints" / f"step{steps:08d}" / "aria_rank0.pt", weights_only=False)["source"]
    if "ledger" in state:
        uses, fresh = state["ledger"]["uses"], int(state["ledger"]["fresh"].sum())
    else:  # the live teacher: every draw a fresh tuple
        uses, fresh = np.zeros(0, np.int64), int(state["teacher_forwards"])
    per_entry = np.concatenate([uses[uses > 0], np.ones(fresh, np.int64)])
    if not len(per_entry):
        return {"reuse_median": 0.0, "reuse_max": 0, "distinct_entries": 0}
    return {"reuse_median": float(np.median(per_entry)), "reuse_max": int(per_entry.max()),
            "distinct_entries": int(len(per_entry)), "fresh_tuples": fresh}


def separate_passes(base: list[str], paths: list[str], repeats: int = 5) -> dict:
    """Median seconds of the teacher forward and of one student training step, on one micro-batch."""
    from aria_hpc.context import load_context
    from aria_hpc.models.students import build_student

    cfg = load_config(base[0], [*base[1:], *paths])
    ctx = load_context(cfg)
    n = cfg.train.micro_batch_per_gpu
    unet = ctx.teacher.unet
    c = unet.config
    x = torch.randn(n, c.in_channels, c.sample_size, c.sample_size)
    t = torch.randint(0, 1000, (n,))
    cond = ctx.cond(np.arange(n))
    student = build_student(cfg.student.preset, unet).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def teacher_pass():
        with torch.no_grad():
            unet(x, t, **cond.kwargs())

    def student_pass():
        out = student(x, t, **cond.kwargs()).sample
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    from aria_hpc.eval.evaluate import HeldoutCurve

    curve = HeldoutCurve(cfg, ctx)  # the learning curve's held-out pass (train.curve_every)
    student.eval()

    def curve_pass():
        curve(lambda xs, ts, c: student(xs, ts, **c.kwargs()).sample)

    curve_s = median_seconds(curve_pass, repeats)
    student.train()
    return {"teacher_s": median_seconds(teacher_pass, repeats), "student_s": median_seconds(student_pass, repeats),
            "curve_s": curve_s, "curve_tuples": len(curve.t), "batch": n}


def paired_steps(base: list[str], paths: list[str], work: Path, segment: int, repeats: int) -> dict:
    """ARIA vs RC and RC vs a plain PyTorch loop, each in alternating segments in this process."""
    import time

    from timing import paired_ratio

    from aria_hpc.engine import lr_lambda
    from aria_hpc.models.students import build_student
    from aria_hpc.train.loop import Session

    cfgs = {p: load_config(base[0], [*base[1:], *paths, f"run.dir={work / f'paired-{p}'}", f"train.policy={p}",
                                     "train.export=false"]) for p in ("rc", "aria")}
    sessions = {p: Session(c, Path(c.run.dir), 0, 1) for p, c in cfgs.items()}
    position = {p: 0 for p in sessions}

    def steps_of(policy: str, n: int) -> None:
        s = sessions[policy]
        for _ in range(n):
            step = position[policy]
            s.step(step)
            s.tracker.sync(step + 1, 1)  # the loop's sync phase (the fold every aria.sync_every steps)
            position[policy] += 1

    warm = cfgs["aria"].aria.warmup_steps + 1  # every timed ARIA step allocates by q, not pi
    steps_of("rc", warm)
    steps_of("aria", warm)
    aria_s, rc_s, speed = paired_ratio(lambda: steps_of("aria", segment), lambda: steps_of("rc", segment), repeats)

    # the loop a user would write: the same student and batches, torch AdamW, no DeepSpeed
    cfg, rc = cfgs["rc"], sessions["rc"]
    rng = np.random.default_rng(1)
    batches = []
    for i in range(16):
        b = rc.source.draw(cfg.train.micro_batch_per_gpu, rng, rc.tracker.sampler(0, 10**6 + i, 0))
        batches.append((b.x_t, torch.from_numpy(b.t.astype(np.int64)), rc.ctx.cond(b.cond), b.output.float()))
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student.preset, rc.ctx.teacher.unet).train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    turn = {"i": 0}

    def plain(n: int) -> None:
        for _ in range(n):
            x, t, cond, target = batches[turn["i"] % len(batches)]
            turn["i"] += 1
            loss = torch.nn.functional.mse_loss(student(x, t, **cond.kwargs()).sample, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.train.grad_clip)
            opt.step()
            sched.step()

    plain(3)
    ours_s, plain_s, vs_plain = paired_ratio(lambda: steps_of("rc", segment), lambda: plain(segment), repeats)

    # where an RC step's time goes: its phases timed one by one over `segment` steps
    phases = {"draw (bank read, noise)": (rc.source, "draw"), "condition (token states)": (rc.ctx, "cond"),
              "forward (engine)": (rc.engine, "forward"), "backward (engine)": (rc.engine, "backward"),
              "optimizer step (engine)": (rc.engine, "step"), "track (region table)": (rc.tracker, "record"),
              "EMA update": (rc.ema, "update")}
    spent = dict.fromkeys(phases, 0.0)
    originals = {}
    for name, (obj, attr) in phases.items():
        original = getattr(obj, attr)
        originals[name] = (obj, attr)

        def timed(*a, _f=original, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                spent[_name] += time.perf_counter() - t0
        setattr(obj, attr, timed)
    t0 = time.perf_counter()
    steps_of("rc", segment)
    total = time.perf_counter() - t0
    for obj, attr in originals.values():  # the instance's own method again
        if attr in vars(obj):
            delattr(obj, attr)
    profile = {name: seconds / segment for name, seconds in spent.items()}
    profile["rest of the step"] = total / segment - sum(profile.values())

    bookkeeping = {k: table_ops_seconds(k, cfg) for k in (cfgs["aria"].regions.k, 65536)}
    return {"segment_steps": segment, "repeats": repeats, "aria_step_s": aria_s / segment, "rc_step_s": rc_s / segment,
            "aria_vs_rc": 1.0 / speed, "ours_step_s": ours_s / segment, "plain_step_s": plain_s / segment,
            "ours_vs_plain_throughput": vs_plain, "rc_step_phases_s": profile,
            "table_ops_s": {str(k): v for k, v in bookkeeping.items()},
            "table_ops_share_of_rc_step": {str(k): v / (rc_s / segment) for k, v in bookkeeping.items()}}


def table_ops_seconds(k: int, cfg, steps: int = 200) -> float:
    """Median seconds per step of ARIA's table operations alone at K regions: the allocation (q and
    its alias table), the region draws and importance weights of a micro-batch, the record, and the
    fold every aria.sync_every steps."""
    from timing import median_seconds

    from aria_hpc.regions.allocation import sample_weights
    from aria_hpc.regions.table import RegionTable

    rng = np.random.default_rng(0)
    table = RegionTable(k, base=rng.random(k) + 0.01)
    n, a = cfg.train.micro_batch_per_gpu, cfg.aria
    values = rng.random(n)
    counter = {"step": 0}

    def one_step():
        q = table.probabilities(a.alpha, a.eps)
        regions = table.sample(n, counter["step"])
        sample_weights(regions, np.ones(n, bool), table.base, q)
        table.record(regions, values)
        counter["step"] += 1
        if counter["step"] % a.sync_every == 0:
            table.fold(a.beta)

    return median_seconds(one_step, steps)


def _paired_lines(r: dict) -> list[str]:
    lines = [f"paired, in one process: {r['repeats']} alternating segments of {r['segment_steps']} steps each",
             f"{'':<34} {'ms/step':>9} {'ratio':>8} {'target':>8}",
             f"{'RC step':<34} {r['rc_step_s'] * 1e3:>9.2f}",
             f"{'ARIA step':<34} {r['aria_step_s'] * 1e3:>9.2f} {r['aria_vs_rc']:>7.3f}x {'<= 1.03':>8} "
             f"{'met' if r['aria_vs_rc'] <= TARGET_ARIA_OVERHEAD else 'NOT met'}",
             f"{'our RC step (DeepSpeed, bank)':<34} {r['ours_step_s'] * 1e3:>9.2f}",
             f"{'plain PyTorch loop (in memory)':<34} {r['plain_step_s'] * 1e3:>9.2f} "
             f"{r['ours_vs_plain_throughput']:>7.3f}x {'>= 0.9':>8} "
             f"{'met' if r['ours_vs_plain_throughput'] >= TARGET_VS_PLAIN else 'NOT met'} (our throughput / plain)",
             "where an RC step's time goes (ms/step):"]
    lines += [f"  {name:<32} {s * 1e3:>9.2f}" for name, s in r["rc_step_phases_s"].items()]
    lines += [f"ARIA table operations alone, K = {k}: {s * 1e3:.3f} ms/step = "
              f"{100 * r['table_ops_share_of_rc_step'][k]:.2f}% of an RC step" for k, s in r["table_ops_s"].items()]
    return lines


def _curve_line(passes: dict, cfg) -> str:
    every = cfg.train.curve_every or 100
    share = passes["curve_s"] / (every * passes["student_s"] + passes["curve_s"])
    return (f"learning curve: {passes['curve_tuples']} held-out tuples in {passes['curve_s'] * 1e3:.0f} ms every "
            f"{every} steps = {100 * share:.1f}% of training time (target < 5%)")


def _row(name: str, r: dict) -> str:
    # reuse counts random-conditioned draws (what the allocation steers); paired draws have none
    med, top = (f"{r['reuse_median']:.1f}", str(r["reuse_max"])) if r["distinct_entries"] else ("-", "-")
    return (f"{name:<22} {r['samples_per_s']:>10.1f} {r['teacher_forwards']:>12} {r['bank_hits']:>10} "
            f"{r['written_back']:>8} {med:>10} {top:>10}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reuse-steps", type=int, default=None, help="steps of the reuse rows (default --steps)")
    ap.add_argument("--dir", default="/tmp/aria_bench_train")
    ap.add_argument("--out", default=None, help="default benchmarks/out/train.json (--paired: train_paired.json)")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--passes-only", action="store_true", help="only the separately timed passes (no training runs)")
    ap.add_argument("--paired", action="store_true", help="only the paired ARIA/RC/plain-PyTorch step timing")
    ap.add_argument("--segment", type=int, default=10, help="steps per alternating segment (--paired)")
    ap.add_argument("--repeats", type=int, default=10, help="segment pairs (--paired)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out = args.out or f"benchmarks/out/train{'_paired' if args.paired else ''}.json"
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    base = [args.config, *args.overrides]
    paths = setup(base, work)
    cfg = load_config(base[0], [*base[1:], *paths])
    if args.paired:
        result = paired_steps(base, paths, work, args.segment, args.repeats)
        print(f"{args.config}: micro-batch {cfg.train.micro_batch_per_gpu}, K = {cfg.regions.k}, 1 CPU rank, "
              f"{torch.get_num_threads()} threads")
        print("\n".join(_paired_lines(result)))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": args.config, "overrides": args.overrides, "paired": result,
                                   "targets": {"aria_vs_rc": TARGET_ARIA_OVERHEAD, "ours_vs_plain": TARGET_VS_PLAIN},
                                   "machine": platform.processor() or platform.machine()}, indent=2))
        print(f"wrote {out}")
        return
    if args.passes_only:
        passes = separate_passes(base, paths)
        print(_curve_line(passes, cfg))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": args.config, "passes": passes, "curve_every": cfg.train.curve_every,
                                   "machine": platform.processor() or platform.machine()}, indent=2))
        print(f"wrote {out}")
        return

    results = {}
    for mode in ("cached", "hybrid", "live"):
        for policy in ("paired", "rc", "aria"):
            if policy == "paired" and mode == "hybrid":
                continue  # paired draws are never region-steered: hybrid is cached for them
            results[f"{policy}/{mode}"] = run_policy(base, paths, work, policy, mode, args.steps)
    first = results["rc/hybrid"]
    second = run_policy(base, paths, work, "rc", "hybrid", args.steps, name="rc-hybrid-again",
                        bank_dir=Path(first["bank_dir"]))
    results["rc/hybrid, 2nd run"] = second
    forward_ratio = second["teacher_forwards"] / max(1, first["teacher_forwards"])

    reuse_steps = args.reuse_steps or args.steps
    reuse_rows = {}
    for alpha in sorted({cfg.aria.alpha, 2.0}):
        for mode in ("cached", "hybrid"):
            reuse_rows[f"aria alpha={alpha:g}/{mode}"] = run_policy(
                base, paths, work, "aria", mode, reuse_steps, (f"aria.alpha={alpha}",), name=f"reuse-a{alpha:g}-{mode}")

    passes = separate_passes(base, paths)
    ideal = (passes["teacher_s"] + passes["student_s"]) / passes["student_s"]
    aria_overhead = results["rc/cached"]["samples_per_s"] / results["aria/cached"]["samples_per_s"]
    bank_speedup = results["aria/cached"]["samples_per_s"] / results["aria/live"]["samples_per_s"]

    print(f"{args.config}: {args.steps} steps per run, micro-batch {passes['batch']}, 1 CPU rank (DeepSpeed, gloo), "
          f"bank.max_reuse={cfg.bank.max_reuse}")
    head = f"{'policy/mode':<22} {'samples/s':>10} {'teacher fwd':>12} {'bank hits':>10} {'written':>8} " \
           f"{'reuse med':>10} {'reuse max':>10}"
    print(head)
    for name, r in results.items():
        print(_row(name, r))
    print(f"second run of the same member over the grown bank: {second['teacher_forwards']} vs "
          f"{first['teacher_forwards']} teacher forwards = {forward_ratio:.2f}x")
    print(f"reuse, {reuse_steps} steps (draws served per distinct entry):")
    print(head)
    for name, r in reuse_rows.items():
        print(_row(name, r))
    print(f"separate passes: teacher forward {passes['teacher_s'] * 1e3:.0f} ms, student step "
          f"{passes['student_s'] * 1e3:.0f} ms -> ideal cached speed-up {ideal:.2f}x")
    print(_curve_line(passes, cfg))
    print(f"ARIA step time vs RC (cached): {aria_overhead:.3f}x (target <= {TARGET_ARIA_OVERHEAD}): "
          f"{'met' if aria_overhead <= TARGET_ARIA_OVERHEAD else 'NOT met'}")
    print(f"cached vs live teacher (aria): {bank_speedup:.2f}x = {bank_speedup / ideal:.2f} of ideal "
          f"(target >= {TARGET_BANK_FRACTION}): {'met' if bank_speedup >= TARGET_BANK_FRACTION * ideal else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "overrides": args.overrides, "steps": args.steps,
                               "reuse_steps": reuse_steps, "max_reuse": cfg.bank.max_reuse,
                               "results": results, "second_run_forward_ratio": forward_ratio, "reuse": reuse_rows,
                               "passes": passes, "ideal_bank_speedup": ideal,
                               "aria_vs_rc_step_time": aria_overhead, "bank_speedup": bank_speedup,
                               "targets": {"aria_vs_rc": TARGET_ARIA_OVERHEAD, "bank_fraction_of_ideal":
                                           TARGET_BANK_FRACTION},
                               "machine": platform.processor() or platform.machine(),
                               "threads": torch.get_num_threads()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
