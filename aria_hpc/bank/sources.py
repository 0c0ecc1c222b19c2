"""Where teacher outputs come from during training: one interface, two implementations.

``BankSource`` reads cached outputs; ``LiveTeacher`` runs the frozen teacher on freshly drawn
tuples (same schedule, same region steering) and can write them back to the bank as new shards, so
later runs reuse them. Both count teacher forwards and bank hits for the metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from aria_hpc.bank.context import BankContext, TeacherRunner, noised_inputs
from aria_hpc.bank.plan import COLUMNS, draw_entries, finish, region_order
from aria_hpc.bank.reader import Bank, BankBatch
from aria_hpc.bank.writer import prepare_bank_dir, update_manifest, write_shard

RegionSampler = Callable[[int], np.ndarray]
LIVE_ENTRY_BASE = 1 << 48  # live entry ids: base + (stream << 32) + counter; planned ids are below


class TeacherSource(Protocol):
    teacher_forwards: int
    bank_hits: int

    def draw(self, n: int, rng: np.random.Generator, region_sampler: RegionSampler | None = None,
             *, paired_only: bool = False) -> BankBatch:
        """A batch of n (x_t, t, condition, teacher output) tuples; paired_only keeps true captions."""


class BankSource:
    """Cached outputs. `prefetch` draws a batch's rows now (in the caller's thread, so the region
    sampler sees the current allocation) and reads them in a background thread: the C++ gather and
    the noise regeneration release the GIL, so the read overlaps the training step."""

    def __init__(self, bank: Bank) -> None:
        self.bank = bank
        self.teacher_forwards = 0
        self.bank_hits = 0
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bank-read")

    def draw(self, n: int, rng: np.random.Generator, region_sampler: RegionSampler | None = None,
             *, paired_only: bool = False) -> BankBatch:
        return self.prefetch(n, rng, region_sampler, paired_only=paired_only).result()

    def prefetch(self, n: int, rng: np.random.Generator, region_sampler: RegionSampler | None = None,
                 *, paired_only: bool = False) -> Future[BankBatch]:
        rows = self.bank.draw(n, rng, region_sampler, paired_only=paired_only)
        self.bank_hits += n
        return self._reader.submit(self.bank.read, rows)

    def close(self) -> None:
        self._reader.shutdown(wait=True)


class LiveTeacher:
    """The frozen teacher computing each batch; optionally writing every `writeback_every` entries
    back to the bank directory as a shard `shard-live-<stream>-<k>.h5`."""

    def __init__(self, ctx: BankContext, *, stream: int = 0, writeback_every: int = 0) -> None:
        self.ctx = ctx
        self.runner = TeacherRunner(ctx, ctx.cfg.bank.features)
        self.x0 = torch.from_numpy(ctx.x0)
        self.stream = stream
        self.writeback_every = writeback_every
        self.counter = 0
        self.written = 0
        self.bank_hits = 0
        self._pending: list[BankBatch] = []
        if writeback_every:
            prepare_bank_dir(Path(ctx.cfg.bank.dir), ctx.fingerprint, rebuild=False)

    @property
    def teacher_forwards(self) -> int:
        return self.runner.forwards

    def draw(self, n: int, rng: np.random.Generator, region_sampler: RegionSampler | None = None,
             *, paired_only: bool = False) -> BankBatch:
        cond = self.ctx.conditioning
        cols = draw_entries(cond, rng, n)
        if paired_only:  # the same draws with every caption kept
            image_captions = cond.captions[cols["image"], rng.integers(0, cond.captions.shape[1], n)]
            cols["cond"] = np.where(cols["cond"] >= 0, image_captions, cols["cond"])
            cols["paired"][:] = True
        random = np.flatnonzero(~cols["paired"] & (cols["cond"] >= 0))
        if region_sampler is not None and len(random):
            cols["cond"][random] = cond.prompts_in(np.asarray(region_sampler(len(random)), np.int64), rng)
        entry = LIVE_ENTRY_BASE + (self.stream << 32) + self.counter + np.arange(n)
        self.counter += n
        cols = finish(cond, cols, entry, self.ctx.cfg.seed)
        x_t = noised_inputs(self.ctx.teacher.scheduler, self.x0[cols["image"]], cols["t"], cols["seed"])
        output, feats = self.runner(x_t, cols["t"], cols["cond"])
        batch = BankBatch(np.full(n, -1), cols["entry"], cols["image"], cols["cond"], cols["region"], cols["t"],
                          cols["seed"], cols["paired"], torch.from_numpy(output),
                          {k: torch.from_numpy(v) for k, v in feats.items()}, x_t)
        if self.writeback_every:
            self._pending.append(batch)
            if sum(len(b.t) for b in self._pending) >= self.writeback_every:
                self.flush()
        return batch

    def flush(self) -> Path | None:
        """Write the pending entries as one live shard and list it in the manifest."""
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        cols = {k: np.concatenate([getattr(b, k) for b in pending]) for k in COLUMNS}
        order = region_order(cols)
        cols = {k: v[order] for k, v in cols.items()}
        output = np.concatenate([b.output.numpy() for b in pending])[order]  # float16, as computed
        feats = {k: np.concatenate([b.features[k].numpy() for b in pending])[order] for k in pending[0].features}
        bank_dir = Path(self.ctx.cfg.bank.dir)
        path = bank_dir / f"shard-live-{self.stream:05d}-{self.written:05d}.h5"
        write_shard(path, self.ctx.fingerprint, {"kind": "live", "index": self.written}, cols,
                    [(0, len(order), output, feats)], tuple(output.shape[1:]))
        self.written += 1
        update_manifest(bank_dir, self.ctx.fingerprint)
        return path
