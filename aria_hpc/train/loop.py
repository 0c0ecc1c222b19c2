"""The distillation loop: one function, phases marked setup / resume / sample /
forward / backward / track / sync / log / checkpoint.

Every rank draws its own batch with seeds from (seed, rank, step, micro-step), records the
timestep-normalised per-sample discrepancy in its region table, and every `aria.sync_every` steps
the raw sums are all-reduced and folded identically everywhere (docs/design.md section 4.3). Resume is the
default: the same command continues from RUN_DIR/checkpoints/latest and reproduces the
uninterrupted run step for step.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import socket
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from aria_hpc import distributed
from aria_hpc.config import Config, flatten, save_resolved
from aria_hpc.errors import AgreedError, Preempted, UserError
from aria_hpc.fsio import require_writable
from aria_hpc.models.pipeline import export_pipeline, is_pipeline, model_card
from aria_hpc.regions.allocation import group_view, normalise_by_baseline, sample_weights
from aria_hpc.regions.rng import derive_key
from aria_hpc.regions.sampler import allocating, region_key, update_allocation
from aria_hpc.regions.sync import sync_and_fold
from aria_hpc.regions.table import RegionTable, table_digest
from aria_hpc.train import checkpoint, losses
from aria_hpc.train.student import Distilled, StudentEMA, export_student

FAULT_STEP = os.environ.get("ARIA_FAULT_SIGKILL_AFTER_STEP")  # fault injection for the resume tests


def train(cfg: Config, log=print) -> dict:
    # ---- setup -----------------------------------------------------------------------------
    from aria_hpc.bank.reader import read_manifest
    from aria_hpc.bank.sources import open_source
    from aria_hpc.context import load_context
    from aria_hpc.engine import initialize
    from aria_hpc.models.students import build_student

    t_setup = time.perf_counter()
    timings = {"curve_s": 0.0, "checkpoint_s": 0.0}  # where the member's time goes (the demo prints it)
    info = distributed.init()
    rank, world = info.rank, info.world_size
    run_dir = Path(cfg.run.dir)
    ckpt_dir = run_dir / "checkpoints"
    problem = None
    try:  # inputs first, on every rank (each verifies the bank shards it opens); agreed before going on
        require_writable(run_dir, "run.dir")
        if cfg.bank.dir:
            read_manifest(Path(cfg.bank.dir))  # a missing bank is an error, never silently built here
        ctx = load_context(cfg, need_bank_dir=False)
        source = open_source(cfg, ctx, rank=rank, world=world, run_dir=run_dir)
        if cfg.loss.feature_kd > 0:
            have = source.feature_names
            if ctx.teacher.time is not None:
                raise UserError("loss.feature_kd: feature distillation matches UNet block outputs; a flow transformer "
                                "teacher distils on its outputs only: set loss.feature_kd=0")
            missing = [b for b in cfg.loss.feature_blocks if b not in have]
            if missing:
                raise UserError(f"loss.feature_kd needs teacher features {missing}: build the bank with "
                                f"bank.features={cfg.loss.feature_blocks} (or set bank.features for a live teacher)")
    except UserError as exc:
        problem = str(exc)
    distributed.agree(problem)
    policy = cfg.train.policy
    index = ctx.conditioning.index
    table = RegionTable(index.num_regions, base=index.base, init_estimate=cfg.aria.init_estimate)
    baseline = RegionTable(cfg.aria.timestep_bins)  # b(t) per timestep bin: the same EMA machinery

    torch.manual_seed(cfg.seed)  # identical student on every rank
    student = build_student(cfg.student.preset, ctx.teacher.unet)
    blocks = cfg.loss.feature_blocks if cfg.loss.feature_kd > 0 else []
    model = Distilled(student, ctx.teacher.unet, blocks)
    engine, _, _ = initialize(model, cfg, world)
    ema = StudentEMA(engine.module, cfg.train.ema_decay)
    device = engine.device
    weights = asdict(cfg.loss)
    # the mechanism, per split group: region composition (for draw shares and tracked discrepancy)
    # and the held-out learning curve (output MSE on the fixed group set, no sampling)
    from aria_hpc.conditioning.kmeans import composition
    from aria_hpc.eval.evaluate import SPLIT_GROUPS, HeldoutCurve, group_of

    group_comp = composition(index.region_of_prompt, ctx.store.pool.split, index.num_regions)
    sample_group = group_of(ctx.store.pool.split)  # each prompt's split group: the share of all samples per group
    present = [g for g in range(len(SPLIT_GROUPS)) if group_comp[:, g].sum() > 0]
    curve = HeldoutCurve(cfg, ctx, device) if cfg.train.curve_every else None

    # ---- resume: every rank checks the checkpoint; rank 0 writes nothing before all have passed ----
    state = checkpoint.TrainState(table, baseline, ema, source)
    start_step, tag = checkpoint.resume(ckpt_dir, engine, state, cfg, rank=rank, world=world)

    hosts = distributed.all_gather_object(socket.gethostname())
    if rank == 0:  # only now, after every check passed on every rank
        if world > 1:
            log(f"{world} ranks on {', '.join(hosts)} (MASTER_ADDR {os.environ.get('MASTER_ADDR')}:"
                f"{os.environ.get('MASTER_PORT')})")
        if tag is not None:
            checkpoint.truncate_metrics(run_dir / "metrics.jsonl", start_step)
            log(f"resumed from {ckpt_dir / tag} at step {start_step}")
        else:
            aside = checkpoint.set_aside_metrics(run_dir / "metrics.jsonl")
            if aside:
                log(f"starting a new run in {run_dir}: the earlier metrics.jsonl (no checkpoint to resume) "
                    f"is kept as {aside.name}")
        save_resolved(cfg, run_dir)

    # ---- preemption: the handler only sets a flag; the loop agrees on it across ranks --------
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGUSR2, signal.SIGTERM)}

    save = functools.partial(checkpoint.save, ckpt_dir, engine, state, config=flatten(cfg), rank=rank, world=world,
                             keep=cfg.train.keep_checkpoints)
    metrics = open(run_dir / "metrics.jsonl", "a") if rank == 0 else None
    board = _tensorboard(run_dir) if rank == 0 else None
    progress = None
    if rank == 0:
        from tqdm import tqdm

        progress = tqdm(total=cfg.train.steps, initial=start_step, desc=f"train ({policy})", unit="step",
                        disable=None)
    t_last, steps_since = time.perf_counter(), 0
    table_digests = None  # every rank's region table digest after the last sync (world > 1)
    last_loss = float("nan")
    timings["setup_s"] = time.perf_counter() - t_setup
    t_loop = time.perf_counter()
    try:
        for step in range(start_step, cfg.train.steps):
            # ---- sample: allocation for this step, then one batch per micro-step -------------
            if policy != "paired":
                q = update_allocation(table, cfg.aria, step=step, policy=policy)
            step_loss = 0.0
            for micro in range(cfg.train.grad_accum):
                rng = np.random.default_rng([cfg.seed, rank, step, micro])
                key = region_key(cfg.seed, rank, step, micro)
                # RC draws its random conditions as region ~ pi, then uniformly inside the region (the
                # same distribution as uniform over the pool), so ARIA with alpha = 0 is RC draw for draw.
                # (a second stream, for the draws SteeredDraws steers by q: its own key, the same q)
                sampler = ((lambda m, stream=0, key=key: table.sample(m, derive_key(key, stream) if stream else key))
                           if policy != "paired" else None)
                batch = source.draw(cfg.train.micro_batch_per_gpu, rng, sampler, paired_only=policy == "paired")
                state.count_samples(sample_group[np.maximum(batch.cond, 0)], batch.cond >= 0)
                cond = ctx.cond(batch.cond).to(device)
                t = torch.from_numpy(batch.t.astype(np.int64)).to(device)

                # ---- forward ------------------------------------------------------------------
                student_out, student_features = engine(batch.x_t.to(device), t, cond)
                teacher_out = batch.output.to(device).float()
                per_sample = losses.output_kd(student_out, teacher_out)  # (B,), what the tracker sees
                feature_term = (losses.feature_kd(student_features, {k: batch.features[k].to(device)
                                                                     for k in blocks}) if blocks else None)
                task_term = None
                if cfg.loss.task > 0:
                    x0 = torch.from_numpy(ctx.x0[batch.image]).to(device)
                    target = losses.task_target(ctx.teacher, batch.x_t.to(device), x0, t)
                    task_term = losses.task_loss(student_out, target, torch.from_numpy(batch.paired).to(device))
                importance = None
                if cfg.aria.importance and allocating(cfg.aria, policy, step):
                    w = sample_weights(batch.region, ~batch.paired & (batch.cond >= 0), table.base, q)
                    importance = torch.from_numpy(w).to(device).float()
                loss = losses.combine(per_sample, weights, feature_term, task_term, importance)
                loss_value = loss.item()  # the one host sync of the step

                # non-finite loss: keep the last good state, marked, and stop
                if distributed.any_rank(not math.isfinite(loss_value)):
                    path = save(step, f"nonfinite-step{step:08d}", latest=False)
                    raise UserError(f"non-finite loss at step {step} (rank {rank} value {loss_value}): the state "
                                    f"before this step is saved in {path}; lower train.lr or check the bank/teacher "
                                    "outputs, then resume from the last regular checkpoint")

                # ---- backward ------------------------------------------------------------------
                engine.backward(loss)
                step_lr = engine.get_lr()[0]  # what this step uses (the scheduler advances in step())
                engine.step()
                step_loss += loss_value / cfg.train.grad_accum

                # ---- track: d_i = l_i / b(t_i) into the region table, l_i into b(t) ------------
                l_np = per_sample.detach().double().cpu().numpy()
                bins = ctx.teacher.bins(batch.t, cfg.aria.timestep_bins)
                seen = baseline.stats()["ema_weight"] > 0
                d, ok = normalise_by_baseline(l_np, bins, baseline.estimate(), seen)
                tracked = ok & (batch.cond >= 0)
                table.record(batch.region[tracked].astype(np.int64), d[tracked])
                baseline.record(bins.astype(np.int64), l_np)
            ema.update(engine.module)
            last_loss = step_loss

            # ---- sync: all-reduce raw sums, the same fold on every rank -----------------------
            if (step + 1) % cfg.aria.sync_every == 0:
                sync_and_fold([table], cfg.aria.beta)
                sync_and_fold([baseline], cfg.aria.baseline_beta)
                if world > 1:  # the invariant the sync exists for: one table, the same on every rank
                    table_digests = distributed.all_gather_object(table_digest(table, baseline))
                    if len(set(table_digests)) > 1:
                        raise AgreedError(f"the region tables differ between ranks after the sync at step "
                                          f"{step + 1} ({table_digests}): a rank folded other sums; report "
                                          "this with the run's config")

            # ---- log ---------------------------------------------------------------------------
            steps_since += 1
            done = step + 1
            checkpoint_due = done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps
            if checkpoint_due:  # write-back first, so this step's log counts what reached the bank
                source.flush()
            if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                totals = np.array([step_loss, source.teacher_forwards, source.bank_hits, source.written_back],
                                  dtype=np.float64)
                distributed.all_reduce_sum_(totals)
                loss_sum, forwards, hits, written = totals
                elapsed = time.perf_counter() - t_last
                rate = steps_since * cfg.train.micro_batch_per_gpu * cfg.train.grad_accum * world / elapsed
                t_last, steps_since = time.perf_counter(), 0
                record = {"step": done, "loss": loss_sum / world, "lr": step_lr, "samples_per_s": rate,
                          "teacher_forwards": int(forwards), "bank_hits": int(hits),
                          "written_back": int(written), "policy": policy}
                if done % cfg.train.region_log_every == 0 or done == cfg.train.steps:
                    record["region_estimate"] = table.estimate().round(6).tolist()
                    record["allocation"] = table.q.round(6).tolist()
                    record.update(_region_usage(source, index.num_regions))
                    if policy != "paired":
                        share, tracked = group_view(table.q, table.estimate(), group_comp)
                        record["group_share"] = {SPLIT_GROUPS[g]: round(float(share[g]), 6) for g in present}
                        record["group_estimate"] = {SPLIT_GROUPS[g]: round(float(tracked[g]), 6) for g in present}
                        record["estimate_mean"] = round(float(table.base @ table.estimate()), 6)
                    counts = state.sample_groups.astype(np.float64)  # every sample so far, all ranks
                    distributed.all_reduce_sum_(counts)
                    record["sample_share"] = {name: round(float(c / max(1.0, counts.sum())), 6)
                                              for name, c in zip((*SPLIT_GROUPS, "null"), counts) if c > 0}
                    if table_digests is not None:  # every rank's table after the last sync (all equal)
                        record["table_digests"] = table_digests
                if curve is not None and (done % cfg.train.curve_every == 0 or done == cfg.train.steps):
                    t0 = time.perf_counter()
                    record["curve_mse"] = curve(lambda x, t, c: engine(x, t, c)[0])
                    timings["curve_s"] += time.perf_counter() - t0
                if metrics:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if board:
                    for key in ("loss", "samples_per_s", "teacher_forwards", "bank_hits", "written_back"):
                        board.add_scalar(f"train/{key}", record[key], done)
            if progress:
                progress.update(1)
                progress.set_postfix(loss=f"{step_loss:.4f}")

            if FAULT_STEP and int(FAULT_STEP) == done and rank == 0:  # tests: a real SIGKILL mid-run
                os.kill(os.getpid(), signal.SIGKILL)

            # ---- checkpoint (and preemption) ---------------------------------------------------
            preempt = distributed.any_rank(stop["signal"] is not None)
            if checkpoint_due or preempt:
                t0 = time.perf_counter()
                path = save(done, f"step{done:08d}")
                timings["checkpoint_s"] += time.perf_counter() - t0
            if preempt and done < cfg.train.steps:
                raise Preempted(f"preempted at step {done}: checkpoint {path}; run the same command to resume")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if metrics:
            metrics.close()
        if board:
            board.close()
        if progress:
            progress.close()
        source.close()

    timings["steps_s"] = time.perf_counter() - t_loop - timings["curve_s"] - timings["checkpoint_s"]
    # ---- export: the EMA student, consolidated, loadable by plain diffusers --------------------
    t0 = time.perf_counter()
    exported = None
    if cfg.train.export:
        exported = export_student(engine, ema, run_dir / "student", rank)
        if rank == 0 and is_pipeline(cfg.teacher.dir):  # RUN_DIR/pipeline: the teacher's, with this UNet
            export_pipeline(Path(cfg.teacher.dir), run_dir / "student", run_dir / "pipeline", model_card(cfg))
    distributed.barrier()
    timings["export_s"] = time.perf_counter() - t0
    return {"steps": cfg.train.steps, "loss": last_loss, "run_dir": str(run_dir), "student": exported,
            "timings": {k: round(v, 2) for k, v in timings.items()}}


def _region_usage(source, num_regions: int) -> dict:
    """Per region, over all ranks: draws, distinct entries used, and the largest draws one entry
    served (summed, summed and maxed; in cached mode with several ranks, an entry two ranks both
    drew counts as distinct on each)."""
    usage = source.region_usage(num_regions)
    sums = np.concatenate([usage["draws"], usage["distinct"]]).astype(np.float64)
    distributed.all_reduce_sum_(sums)
    largest = distributed.all_reduce_max(usage["max_reuse"].astype(np.float64))
    return {"region_draws": sums[:num_regions].astype(int).tolist(),
            "region_distinct": sums[num_regions:].astype(int).tolist(),
            "region_max_reuse": largest.astype(int).tolist()}


def _tensorboard(run_dir: Path):
    """TensorBoard scalars in RUN_DIR/tensorboard when tensorboard is installed (optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
