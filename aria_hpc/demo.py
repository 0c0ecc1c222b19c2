"""`aria-hpc demo`: the main job on the embedded shapes world, end to end.

By default it runs the diluted whole-shape holdout (configs/regimes/shape_holdout_diluted.yaml) and
prints, beside its own single-seed table, the committed multi-seed study of the same config.

Reuses the shipped teacher and judge; builds embeddings, regions and the teacher bank under --out when
missing (a second run reuses them: 0 teacher forwards); trains one student per policy and seed through
submitit's local executor; evaluates each; writes the report; prints the headline table and one
timing line per stage.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from aria_hpc.config import load_config
from aria_hpc.errors import UserError
from aria_hpc.launch.stages import demo_overrides, ensure_embeddings, ensure_regions

ROOT = Path(__file__).resolve().parents[1]  # the checkout: configs/, docs/
# the regime where study v3 found RC's own held-out gap largest (docs/study/v3/*/README.md: RC seen -
# unseen accuracy +0.073 over 3 seeds, against -0.008 to +0.014 on the other three; v2 chose it too):
# no ring has a paired image and rings are 1.6% of the pool; its settings are configs/demo.yaml's.
# Study v4 found no confirmed win for ARIA, so by its protocol (docs/study/v4/PROTOCOL.md) the demo
# keeps these arms and this regime
DEFAULT_CONFIG = ROOT / "configs" / "regimes" / "shape_holdout_diluted.yaml"
# the study whose tables the demo prints beside its own run: the one run at the demo's settings (v3: 2,000 steps)
HEADLINE_STUDIES = ROOT / "configs" / "studies" / "v3"


class Heartbeat:
    """No stage of the demo stays silent: while one runs, a line every `every` seconds in which nothing
    else was logged, with the stage's elapsed time and its latest progress (`update`). Lines logged
    through `log` count as output."""

    def __init__(self, name: str, log, every: float | None = None) -> None:
        from aria_hpc.launch.members import PROGRESS_EVERY

        self.name, self._log, self.every = name, log, PROGRESS_EVERY if every is None else every
        self.latest, self.t0 = "", time.monotonic()
        self._last = self.t0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-heartbeat", daemon=True)

    def log(self, msg: str) -> None:
        with self._lock:
            self._last = time.monotonic()
            self._log(msg)

    def update(self, text: str) -> None:
        self.latest = text

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            with self._lock:
                now = time.monotonic()
                if now - self._last >= self.every:
                    self._last = now
                    self._log(f"{self.name}: {now - self.t0:.0f}s" + (f", {self.latest}" if self.latest else ""))

    def __enter__(self) -> "Heartbeat":
        if math.isfinite(self.every):  # every = inf: the stage shows its own progress, no thread
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def where_the_time_went(result: dict) -> str:
    """One member's seconds by phase: start-up (imports, the teacher, the bank, DeepSpeed), training
    steps, learning-curve passes, checkpoints, export, and the evaluation's load / MSE / sampling."""
    train, ev = result.get("train_timings", {}), result.get("eval_timings", {})
    parts = [f"train {result['train_s']:.0f}s"]
    if train:
        startup = result["train_s"] - sum(train.values())  # before train(): imports, config, the process
        parts.append("(" + ", ".join(f"{k} {v:.0f}s" for k, v in (
            ("start-up", startup + train["setup_s"]), ("steps", train["steps_s"]), ("curve", train["curve_s"]),
            ("checkpoints", train["checkpoint_s"]), ("export", train["export_s"]))) + ")")
    if "eval_s" in result:
        parts.append(f"eval {result['eval_s']:.0f}s")
        if ev:
            parts.append("(" + ", ".join(f"{k.removesuffix('_s')} {v:.0f}s" for k, v in ev.items()) + ")")
    return " ".join(parts)


def run_demo(out: str | Path, *, config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
             full: bool = False, executor: str = "local", rebuild_bank: bool = False, log=print) -> dict:
    from aria_hpc.build.bank import build_bank
    from aria_hpc.eval.report import write_report
    from aria_hpc.launch.members import Member, run_members

    out = Path(out).resolve()
    config = Path(config) if config else DEFAULT_CONFIG
    if not config.is_file():
        raise UserError(f"demo config {config} does not exist: run from a checkout of aria_hpc (configs/regimes/) "
                        "or pass --config")
    base = [*demo_overrides(out), *overrides]
    cfg = load_config(config, base)  # every check before any work
    policies = ("paired", "rc", "aria") if full else ("rc", "aria")
    seeds = (0, 1, 2) if full else (cfg.seed,)
    timings: list[tuple[str, float, str]] = []

    def stage(name: str, fn, every: float | None = None):
        t0 = time.perf_counter()
        with Heartbeat(f"[demo] {name}", log, every) as beat:
            detail = fn(beat)
        timings.append((name, time.perf_counter() - t0, detail))
        log(f"[demo] {name:<10} {timings[-1][1]:7.1f}s  {detail}")

    stage("embed", lambda beat: ensure_embeddings(cfg, beat.log, beat.update))
    stage("regions", lambda beat: ensure_regions(cfg, beat.log))
    bank = {}

    def do_bank(beat):
        bank.update(build_bank(cfg, rebuild=rebuild_bank, log=lambda msg: None,
                               progress=lambda index, done, n: beat.update(f"shard {index}: {done}/{n} entries")))
        return f"{bank['manifest']['entries']} entries, teacher forwards: {bank['teacher_forwards']}"
    stage("bank", do_bank)

    members = [Member(f"{p}-s{s}", str(config.resolve()),
                      [*base, f"train.policy={p}", f"seed={s}", f"run.dir={out / 'runs' / f'{p}-s{s}'}"])
               for s in seeds for p in policies]
    results: dict = {}

    def do_train(beat):
        results.update(run_members(members, cfg.launch, executor, out / "submitit", log=beat.log))
        failed = [n for n, r in results.items() if r["state"] != "finished"]
        if failed:
            raise UserError(f"demo member(s) {', '.join(failed)} failed; logs: "
                            + "; ".join(results[n]["stderr"] for n in failed))
        for name, r in results.items():
            log(f"[demo] {name}: {where_the_time_went(r['result'])}")
        return (f"{len(members)} member(s) ({', '.join(policies)} x seeds {list(seeds)}) trained and evaluated, "
                f"train {max(r['result']['train_s'] for r in results.values()):.0f}s / "
                f"eval {max(r['result'].get('eval_s', 0) for r in results.values()):.0f}s per member at most")
    stage("train+eval", do_train, every=math.inf)  # run_members shows every member's progress itself
    report = {}

    def do_report(_beat):
        report.update(write_report([out / "runs" / m.name for m in members], out / "report"))
        return str(report["report"])
    stage("report", do_report)
    total = sum(t for _, t, _ in timings)
    log(f"[demo] total      {total:7.1f}s")
    from aria_hpc.launch.study import committed_tables

    return {"timings": timings, "total_s": total, "report": report["report"], "table": report["table"],
            "members": results, "teacher_forwards": bank["teacher_forwards"], "seeds": list(seeds),
            "committed": committed_tables(config, sorted(HEADLINE_STUDIES.glob("*.yaml")), ROOT)}
