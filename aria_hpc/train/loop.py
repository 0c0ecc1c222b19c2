"""The distillation loop, phase by phase: setup / resume / sample / forward / backward / track / sync /
log / checkpoint / export. ARIA's bookkeeping is a RegionTracker's (train/tracker.py), checkpoints a
Checkpointer's (train/checkpoint.py); the loop calls them at its phases.

Every rank draws its own batch with seeds from (seed, rank, step, micro-step), records the
timestep-normalised per-sample discrepancy in its region table, and every `aria.sync_every` steps
the raw sums are all-reduced and folded identically everywhere (docs/design.md section 4). Resume is the
default: the same command continues from RUN_DIR/checkpoints/latest and reproduces the
uninterrupted run step for step.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from aria_hpc import distributed
from aria_hpc.config import Config, save_resolved
from aria_hpc.errors import Preempted, UserError
from aria_hpc.fsio import require_writable
from aria_hpc.models.card import model_card
from aria_hpc.models.pipeline import export_pipeline, is_pipeline
from aria_hpc.train import losses
from aria_hpc.train.checkpoint import Checkpointer, TrainState
from aria_hpc.train.student import Distilled, StudentEMA, export_student
from aria_hpc.train.tracker import RegionTracker


def train(cfg: Config, log=print, after_step: Callable[[int, int], None] | None = None) -> dict:
    """Train cfg on this rank of the launch; `after_step(done, rank)` runs after each step's log (the
    fault tests' hook, train/command.py)."""
    # ---- setup: inputs checked on every rank, then the student, its engine and the tracker -----
    t_setup = time.perf_counter()
    info = distributed.init()
    rank, world = info.rank, info.world_size
    run_dir = Path(cfg.run.dir)
    run = Session(cfg, run_dir, rank, world)
    source, tracker, engine, state = run.source, run.tracker, run.engine, run.state
    curve = None
    if cfg.train.curve_every:
        from aria_hpc.eval.evaluate import HeldoutCurve

        curve = HeldoutCurve(cfg, run.ctx, run.device)
    timings = {"curve_s": 0.0}  # where the member's time goes (the demo prints it)

    # ---- resume: every rank checks the checkpoint; rank 0 writes nothing before all have passed ----
    ckpt = Checkpointer(cfg, run_dir, engine, state, rank=rank, world=world)
    hosts = distributed.all_gather_object(socket.gethostname())
    start_step = ckpt.resume(log)
    if rank == 0:  # only now, after every check passed on every rank
        if world > 1:
            log(f"{world} ranks on {', '.join(hosts)} (MASTER_ADDR {os.environ.get('MASTER_ADDR')}:"
                f"{os.environ.get('MASTER_PORT')})")
        save_resolved(cfg, run_dir)

    # ---- preemption: the handler only sets a flag; the loop agrees on it across ranks --------
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGUSR2, signal.SIGTERM)}
    logger = _Log(cfg, run_dir, rank, world, start_step)
    last_loss = float("nan")
    timings["setup_s"] = time.perf_counter() - t_setup
    t_loop = time.perf_counter()
    try:
        for step in range(start_step, cfg.train.steps):
            # ---- sample / forward / backward / track: one optimizer step -----------------------------
            step_loss, step_lr = run.step(step, ckpt)
            last_loss = step_loss
            done = step + 1

            # ---- sync: all-reduce raw sums, the same fold on every rank -------------------------
            tracker.sync(done, world)

            # ---- log: write-back first, so a checkpoint step's log counts what reached the bank ---
            ckpt.flush_if_due(done)
            record = logger.step(done, step_loss, step_lr, source)
            if record is not None:
                if done % cfg.train.region_log_every == 0 or done == cfg.train.steps:
                    record.update(tracker.log_fields(source, state.sample_groups))
                if curve is not None and (done % cfg.train.curve_every == 0 or done == cfg.train.steps):
                    t0 = time.perf_counter()
                    record["curve_mse"] = curve(lambda x, t, c: engine(x, t, c)[0])
                    timings["curve_s"] += time.perf_counter() - t0
                logger.write(record)
            logger.progress(step_loss)
            if after_step is not None:
                after_step(done, rank)

            # ---- checkpoint (and preemption) -------------------------------------------------------
            preempt = distributed.any_rank(stop["signal"] is not None)
            if ckpt.due(done) or preempt:
                path = ckpt.save(done)
            if preempt and done < cfg.train.steps:
                raise Preempted(f"preempted at step {done}: checkpoint {path}; run the same command to resume")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        logger.close()
        source.close()

    timings["checkpoint_s"] = ckpt.seconds
    timings["steps_s"] = time.perf_counter() - t_loop - timings["curve_s"] - timings["checkpoint_s"]
    # ---- export: the EMA student, consolidated, loadable by plain diffusers --------------------
    t0 = time.perf_counter()
    exported = None
    if cfg.train.export:
        exported = export_student(engine, run.ema, run_dir / "student", rank)
        if rank == 0 and is_pipeline(cfg.teacher.dir):  # RUN_DIR/pipeline: the teacher's, with this UNet
            export_pipeline(Path(cfg.teacher.dir), run_dir / "student", run_dir / "pipeline", model_card(cfg))
    distributed.barrier()
    timings["export_s"] = time.perf_counter() - t0
    return {"steps": cfg.train.steps, "loss": last_loss, "run_dir": str(run_dir), "student": exported,
            "timings": {k: round(v, 2) for k, v in timings.items()}}


class Session:
    """What one rank trains with: the run context and teacher source (every input checked on every
    rank, one agreed error), the region tracker, the student in its DeepSpeed engine and its EMA, and
    the per-rank training state; `step` runs one optimizer step. The loop (and
    benchmarks/bench_train.py, which alternates an RC and an ARIA session in one process) drive it."""

    def __init__(self, cfg: Config, run_dir: Path, rank: int, world: int) -> None:
        from aria_hpc.engine import initialize
        from aria_hpc.models.students import build_student

        self.cfg, self.rank = cfg, rank
        problem = None
        try:  # inputs first, on every rank (each verifies the bank shards it opens); agreed before going on
            self.ctx, self.source = _open_inputs(cfg, run_dir, rank, world)
        except UserError as exc:
            problem = str(exc)
        distributed.agree(problem)
        ctx = self.ctx
        self.tracker = RegionTracker(cfg.aria, cfg.train.policy, cfg.seed, ctx)
        torch.manual_seed(cfg.seed)  # identical student on every rank
        student = build_student(cfg.student.preset, ctx.teacher.unet)
        self.blocks = cfg.loss.feature_blocks if cfg.loss.feature_kd > 0 else []
        self.engine, _, _ = initialize(Distilled(student, ctx.teacher.unet, self.blocks), cfg, world)
        self.ema = StudentEMA(self.engine.module, cfg.train.ema_decay)
        self.device = self.engine.device
        self.weights = asdict(cfg.loss)
        self.state = TrainState(self.tracker.table, self.tracker.baseline, self.ema, self.source)

    def step(self, step: int, ckpt: Checkpointer | None = None) -> tuple[float, float]:
        """One optimizer step (train.grad_accum micro-steps): (its loss, its learning rate). A
        non-finite loss on any rank saves the state before the step through `ckpt` and stops."""
        cfg, ctx, tracker, engine, device, blocks = (self.cfg, self.ctx, self.tracker, self.engine, self.device,
                                                     self.blocks)
        rank, policy = self.rank, cfg.train.policy
        # ---- sample: this step's allocation, then one batch per micro-step -----------------------
        tracker.allocate(step)
        step_loss = 0.0
        for micro in range(cfg.train.grad_accum):
            rng = np.random.default_rng([cfg.seed, rank, step, micro])
            batch = self.source.draw(cfg.train.micro_batch_per_gpu, rng, tracker.sampler(rank, step, micro),
                                     paired_only=policy == "paired")
            self.state.count_samples(tracker.sample_group[np.maximum(batch.cond, 0)], batch.cond >= 0)
            unet_cond = ctx.cond(batch.cond).to(device)  # the prompts' token states (batch.cond: their ids)
            t = torch.from_numpy(batch.t.astype(np.int64)).to(device)

            # ---- forward ------------------------------------------------------------------------
            student_out, student_features = engine(batch.x_t.to(device), t, unet_cond)
            per_sample = losses.output_kd(student_out, batch.output.to(device).float())  # what the tracker sees
            feature_term = (losses.feature_kd(student_features, {k: batch.features[k].to(device)
                                                                 for k in blocks}) if blocks else None)
            task_term = None
            if cfg.loss.task > 0:
                x0 = torch.from_numpy(ctx.x0[batch.image]).to(device)
                target = losses.task_target(ctx.teacher, batch.x_t.to(device), x0, t)
                task_term = losses.task_loss(student_out, target, torch.from_numpy(batch.paired).to(device))
            w = tracker.weights(batch)
            importance = None if w is None else torch.from_numpy(w).to(device).float()
            loss = losses.combine(per_sample, self.weights, feature_term, task_term, importance)
            loss_value = loss.item()  # the one host sync of the step

            # non-finite loss: keep the last good state, marked, and stop
            if distributed.any_rank(not math.isfinite(loss_value)):
                path = ckpt.save(step, f"nonfinite-step{step:08d}", latest=False) if ckpt else None
                raise UserError(f"non-finite loss at step {step} (rank {rank} value {loss_value}): the state "
                                f"before this step is saved in {path}; lower train.lr or check the bank/teacher "
                                "outputs, then resume from the last regular checkpoint")

            # ---- backward ------------------------------------------------------------------------
            engine.backward(loss)
            step_lr = engine.get_lr()[0]  # what this step uses (the scheduler advances in step())
            engine.step()
            step_loss += loss_value / cfg.train.grad_accum

            # ---- track: d_i = l_i / b(t_i) into the region table, l_i into b(t) ------------------
            tracker.record(per_sample.detach().double().cpu().numpy(), batch)
        self.ema.update(engine.module)
        return step_loss, step_lr


def _open_inputs(cfg: Config, run_dir: Path, rank: int, world: int):
    """The run context and the teacher source, every input checked (UserError naming the fix)."""
    from aria_hpc.bank.manifest import read_manifest
    from aria_hpc.context import load_context
    from aria_hpc.train.sources import open_source

    require_writable(run_dir, "run.dir")
    if cfg.bank.dir:
        read_manifest(Path(cfg.bank.dir))  # a missing bank is an error, never silently built here
    ctx = load_context(cfg, need_bank_dir=False)
    source = open_source(cfg, ctx, rank=rank, world=world, run_dir=run_dir)
    if cfg.loss.feature_kd > 0:
        if ctx.teacher.time is not None:
            raise UserError("loss.feature_kd: feature distillation matches UNet block outputs; a flow transformer "
                            "teacher distils on its outputs only: set loss.feature_kd=0")
        missing = [b for b in cfg.loss.feature_blocks if b not in source.feature_names]
        if missing:
            raise UserError(f"loss.feature_kd needs teacher features {missing}: build the bank with "
                            f"bank.features={cfg.loss.feature_blocks} (or set bank.features for a live teacher)")
    return ctx, source


class _Log:
    """metrics.jsonl, TensorBoard and the progress bar (rank 0): every train.log_every steps a record
    of the loss, learning rate, throughput and teacher use summed over all ranks."""

    def __init__(self, cfg: Config, run_dir: Path, rank: int, world: int, start_step: int) -> None:
        self.every, self.steps, self.policy, self.world = cfg.train.log_every, cfg.train.steps, cfg.train.policy, world
        self.samples_per_step = cfg.train.micro_batch_per_gpu * cfg.train.grad_accum * world
        self.metrics = open(run_dir / "metrics.jsonl", "a") if rank == 0 else None
        self.board = _tensorboard(run_dir) if rank == 0 else None
        self.bar = None
        if rank == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc=f"train ({self.policy})", unit="step",
                            disable=None)
        self.t_last, self.steps_since = time.perf_counter(), 0

    def step(self, done: int, step_loss: float, lr: float, source) -> dict | None:
        """The record of step `done` when one is due (every rank takes part in the sums), else None."""
        self.steps_since += 1
        if done % self.every and done != self.steps:
            return None
        totals = np.array([step_loss, source.teacher_forwards, source.bank_hits, source.written_back],
                          dtype=np.float64)
        distributed.all_reduce_sum_(totals)
        loss_sum, forwards, hits, written = totals
        elapsed = time.perf_counter() - self.t_last
        rate = self.steps_since * self.samples_per_step / elapsed
        self.t_last, self.steps_since = time.perf_counter(), 0
        return {"step": done, "loss": loss_sum / self.world, "lr": lr, "samples_per_s": rate,
                "teacher_forwards": int(forwards), "bank_hits": int(hits), "written_back": int(written),
                "policy": self.policy}

    def write(self, record: dict) -> None:
        if self.metrics:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        if self.board:
            for key in ("loss", "samples_per_s", "teacher_forwards", "bank_hits", "written_back"):
                self.board.add_scalar(f"train/{key}", record[key], record["step"])

    def progress(self, step_loss: float) -> None:
        if self.bar:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{step_loss:.4f}")

    def close(self) -> None:
        for handle in (self.metrics, self.board, self.bar):
            if handle:
                handle.close()


def _tensorboard(run_dir: Path):
    """TensorBoard scalars in RUN_DIR/tensorboard when tensorboard is installed (optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
