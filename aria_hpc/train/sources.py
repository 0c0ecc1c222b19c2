"""Where teacher outputs come from during training: one interface, three modes (bank.mode).

``BankSource`` reads cached outputs (cached), and with a live teacher beside it serves a region from
the bank only while the region has entries this run has served fewer than ``bank.max_reuse`` times,
computing fresh tuples after that (hybrid). ``LiveTeacher`` runs the frozen teacher on freshly drawn
tuples (same schedule, same region steering) for every draw (live) or for the hybrid's fresh draws.
Fresh tuples are written back to the bank as new shards (``Writeback``), so later runs reuse them.
Every source counts teacher forwards, bank hits and entries written back for the metrics, keeps its
cursor in ``state_dict`` for exact resume, and flushes pending write-back at checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np
import torch

from aria_hpc.bank.ledger import FRESH
from aria_hpc.bank.manifest import claim_writer, update_manifest
from aria_hpc.bank.noise import noised_inputs
from aria_hpc.bank.plan import COLUMNS, NULL, draw_entries, finish, region_order
from aria_hpc.bank.reader import Bank, BankBatch
from aria_hpc.bank.writer import write_shard
from aria_hpc.config import Config
from aria_hpc.context import RunContext
from aria_hpc.models.runner import TeacherRunner

RegionSampler = Callable[[int], np.ndarray]
LIVE_ENTRY_BASE = 1 << 48  # fresh entry ids: base + (stream << 32) + counter; planned ids are below


class TeacherSource(Protocol):
    teacher_forwards: int
    bank_hits: int
    written_back: int
    feature_names: list[str]

    def draw(self, n: int, rng: np.random.Generator, region_sampler: RegionSampler | None = None,
             *, paired_only: bool = False) -> BankBatch:
        """A batch of n (x_t, t, condition, teacher output) tuples; paired_only keeps true captions."""

    def region_usage(self, num_regions: int) -> dict[str, np.ndarray]:
        """Per region: draws, distinct entries used, largest draws served by one entry."""

    def flush(self) -> None:
        """Write pending fresh entries back (before a checkpoint records the state)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None: ...


def concat_batches(parts: list[BankBatch]) -> BankBatch:
    if len(parts) == 1:
        return parts[0]
    cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ("rows", *COLUMNS)}
    return BankBatch(cat["rows"], cat["entry"], cat["image"], cat["cond"], cat["region"], cat["t"], cat["seed"],
                     cat["paired"], torch.cat([p.output for p in parts]),
                     {k: torch.cat([p.features[k] for p in parts]) for k in parts[0].features},
                     torch.cat([p.x_t for p in parts]) if all(p.x_t is not None for p in parts) else None)


class BankSource:
    """Cached outputs, drawn through a ledger (bank/ledger.py) that records what each entry served.
    With `max_reuse` (hybrid mode), the ledger retires an entry after that many draws and a region
    with nothing left gets fresh tuples from `live`: the same schedule, the region asked for."""

    def __init__(self, bank: Bank, *, num_regions: int | None = None, live: LiveTeacher | None = None,
                 max_reuse: int | None = None, rank: int = 0, world: int = 1) -> None:
        self.bank = bank
        self.live = live
        self.num_regions = num_regions if num_regions is not None else len(bank.region_bounds) - 1
        if max_reuse is not None and live is None:
            raise ValueError("a reuse limit needs a live teacher for the draws whose region runs out")
        self.ledger = bank.ledger(self.num_regions, max_reuse, rank, world)
        self.bank_hits = 0
        self._rank, self._world = rank, world

    @property
    def teacher_forwards(self) -> int:
        return self.live.teacher_forwards if self.live else 0

    @property
    def written_back(self) -> int:
        return self.live.written_back if self.live else 0

    @property
    def feature_names(self) -> list[str]:
        return self.bank.feature_names

    def draw(self, n: int, rng: np.random.Generator, region_sampler: RegionSampler | None = None,
             *, paired_only: bool = False) -> BankBatch:
        rows, wanted = self.bank.draw_served(n, rng, region_sampler, paired_only=paired_only, ledger=self.ledger)
        cached = rows[rows != FRESH]
        self.bank_hits += len(cached)
        parts = [self.bank.read(cached)] if len(cached) else []
        fresh = wanted[rows == FRESH]
        if len(fresh):
            parts.append(self.live.fresh(fresh, rng))
        return concat_batches(parts)

    def region_usage(self, num_regions: int) -> dict[str, np.ndarray]:
        return self.ledger.region_usage()

    def flush(self) -> None:
        if self.live:
            self.live.flush()

    def state_dict(self) -> dict:
        state = {"bank_hits": self.bank_hits, "shards": list(self.bank.shards), "ledger": self.ledger.state_dict()}
        if self.live:
            state["live"] = self.live.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "shards" in state and state["shards"] != list(self.bank.shards):  # the bank grew since: pin the view
            self.bank = Bank(self.bank.dir, shards=state["shards"])
            self.ledger = self.bank.ledger(self.num_regions, self.ledger.max_reuse, self._rank, self._world)
        self.bank_hits = state["bank_hits"]
        if "ledger" in state:
            self.ledger.load_state_dict(state["ledger"])
        if self.live and "live" in state:
            self.live.load_state_dict(state["live"])

    def close(self) -> None:
        pass


class Writeback:
    """Fresh entries appended to a bank as shards ``shard-live-w<writer>-<k>.h5``, through the same
    write-aside / verify / fsync / rename path and flock'd manifest as planned shards. The writer id
    is claimed from the bank (writer.claim_writer) at the first flush, so names and entry ids never
    collide between writers. Flushes happen every `every` entries and at every checkpoint; a resumed
    run recomputes the same entries after its checkpoint, finds a shard it already wrote under the
    same name and columns, and keeps it (no duplicate, nothing lost)."""

    def __init__(self, bank_dir: Path, fingerprint: dict, owner: dict, every: int) -> None:
        self.bank_dir = Path(bank_dir)
        self.fingerprint = fingerprint
        self.owner = owner
        self.every = every
        self.writer: int | None = None
        self.shards = 0  # shards this writer has written
        self.entries = 0  # entries in them
        self.resumed = False
        self._pending: list[BankBatch] = []

    def add(self, batch: BankBatch) -> None:
        self._pending.append(batch)
        if sum(len(b.t) for b in self._pending) >= self.every:
            self.flush()

    def flush(self) -> Path | None:
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        if self.writer is None:
            self.writer = claim_writer(self.bank_dir, self.owner, reuse=self.resumed)
        cols = {k: np.concatenate([getattr(b, k) for b in pending]) for k in COLUMNS}
        n = len(cols["t"])
        cols["entry"] = LIVE_ENTRY_BASE + (self.writer << 32) + self.entries + np.arange(n, dtype=np.int64)
        order = region_order(cols)
        cols = {k: v[order] for k, v in cols.items()}
        output = np.concatenate([b.output.numpy() for b in pending])[order]  # float16, as computed
        feats = {k: np.concatenate([b.features[k].numpy() for b in pending])[order] for k in pending[0].features}
        path = self.bank_dir / f"shard-live-w{self.writer:05d}-{self.shards:05d}.h5"
        if path.is_file():  # written before a kill that this run resumed from: the same entries
            with h5py.File(path, "r", locking=False) as f:
                same = all(np.array_equal(f[k][:], cols[k]) for k in COLUMNS)
            if not same:
                raise RuntimeError(f"{path} exists with other entries: two runs share writer {self.writer}")
        else:
            write_shard(path, self.fingerprint, {"kind": "live", "index": self.shards, "writer": self.writer},
                        cols, [(0, n, output, feats)], tuple(output.shape[1:]))
        self.shards += 1
        self.entries += n
        update_manifest(self.bank_dir, self.fingerprint)
        return path

    def state_dict(self) -> dict:
        if self._pending:
            raise RuntimeError("flush the write-back before saving its state")
        return {"writer": self.writer, "shards": self.shards, "entries": self.entries}

    def load_state_dict(self, state: dict) -> None:
        self.writer, self.shards, self.entries = state["writer"], state["shards"], state["entries"]
        self.resumed = True


class LiveTeacher:
    """The frozen teacher computing tuples: every draw (`draw`, live mode) or the fresh draws of the
    hybrid mode (`fresh`). Noise seeds derive from (seed, stream, counter), so a run's fresh tuples are
    a pure function of its config and resume; `writeback` (optional) appends them to the bank."""

    def __init__(self, ctx: RunContext, *, stream: int = 0, writeback: Writeback | None = None,
                 features: list[str] | None = None) -> None:
        self.ctx = ctx
        self.runner = TeacherRunner(ctx, ctx.cfg.bank.features if features is None else features)
        self.x0 = ctx.x0  # an ndarray, or X0Rows read a batch at a time
        self.stream = stream
        self.writeback = writeback
        self.counter = 0
        self.bank_hits = 0
        self.fresh_per_region = np.zeros(ctx.conditioning.num_regions, np.int64)

    @property
    def teacher_forwards(self) -> int:
        return self.runner.forwards

    @property
    def written_back(self) -> int:
        return self.writeback.entries if self.writeback else 0

    @property
    def feature_names(self) -> list[str]:
        return self.runner.features

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
        return self._compute(cols)

    def fresh(self, regions: np.ndarray, rng: np.random.Generator) -> BankBatch:
        """New random-conditioned tuples in the given regions, as the bank's top-up draws them: a
        paired image, a prompt uniformly inside the region, t from RC's p(t | caption replaced)."""
        cond = self.ctx.conditioning
        image = rng.integers(0, len(cond.captions), len(regions))
        return self._random_conditioned(image, cond.prompts_in(regions, rng), rng)

    def conditioned(self, prompts: np.ndarray, rng: np.random.Generator) -> BankBatch:
        """New random-conditioned tuples on the given prompts (a paired image, t as in `fresh`)."""
        return self._random_conditioned(rng.integers(0, len(self.ctx.conditioning.captions), len(prompts)),
                                        np.asarray(prompts, np.int64), rng)

    def _random_conditioned(self, image: np.ndarray, prompts: np.ndarray, rng: np.random.Generator) -> BankBatch:
        m = len(prompts)
        cols = {"image": image, "cond": prompts, "t": self.ctx.conditioning.rc_timesteps(rng, m),
                "paired": np.zeros(m, bool)}
        return self._compute(cols)

    def _compute(self, cols: dict[str, np.ndarray]) -> BankBatch:
        n = len(cols["t"])
        entry = LIVE_ENTRY_BASE + (self.stream << 32) + self.counter + np.arange(n)
        self.counter += n
        cols = finish(self.ctx.conditioning, cols, entry, self.ctx.cfg.seed)
        x_t = noised_inputs(self.ctx.teacher.noise_schedule, torch.from_numpy(self.x0[cols["image"]]), cols["t"],
                            cols["seed"])
        output, feats = self.runner(x_t, cols["t"], cols["cond"])
        random = ~cols["paired"] & (cols["cond"] != NULL)
        np.add.at(self.fresh_per_region, cols["region"][random], 1)
        batch = BankBatch(np.full(n, -1), cols["entry"], cols["image"], cols["cond"], cols["region"], cols["t"],
                          cols["seed"], cols["paired"], torch.from_numpy(output),
                          {k: torch.from_numpy(v) for k, v in feats.items()}, x_t)
        if self.writeback:
            self.writeback.add(batch)
        return batch

    def region_usage(self, num_regions: int) -> dict[str, np.ndarray]:
        fresh = self.fresh_per_region[:num_regions]
        return {"draws": fresh.copy(), "distinct": fresh.copy(), "max_reuse": (fresh > 0).astype(np.int64)}

    def flush(self) -> Path | None:
        return self.writeback.flush() if self.writeback else None

    def state_dict(self) -> dict:
        state = {"bank_hits": self.bank_hits, "teacher_forwards": self.runner.forwards, "counter": self.counter,
                 "fresh_per_region": self.fresh_per_region.copy()}
        if self.writeback:
            state["writeback"] = self.writeback.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.bank_hits = state["bank_hits"]
        self.runner.forwards = state["teacher_forwards"]
        self.counter = state["counter"]
        if "fresh_per_region" in state:
            self.fresh_per_region[:] = state["fresh_per_region"]
        if self.writeback and "writeback" in state:
            self.writeback.load_state_dict(state["writeback"])

    def close(self) -> None:
        pass


EXTRA_STREAM = 1 << 15  # live entry streams of the steered draws: EXTRA_STREAM + rank (hybrid uses rank)
EXTRA_REGION_STREAM = 0xE7  # the region sampler's stream for the steered draws (0 = the source's own)


class SteeredDraws:
    """A share of every batch drawn fresh by the live teacher as random-conditioned tuples whose
    prompts are steered, the rest from the inner source as before. Two steerings:

    - the oracle (rc.oracle_share): prompts uniform over the held-out prompts it is told;
    - ARIA's reach (aria.reach): region ~ the allocation q (the loop's region sampler, on its own
      stream), then a prompt uniformly inside the region; under RC q = pi.

    Each sample is steered with probability `share` (the count per batch is binomial), so the share of
    all samples it moves is `share`, not a share of the ~20% that RC replaces."""

    def __init__(self, inner: TeacherSource, live: LiveTeacher, share: float,
                 prompts: np.ndarray | None = None) -> None:
        self.inner, self.live, self.share, self.prompts = inner, live, share, prompts

    @property
    def teacher_forwards(self) -> int:
        return self.inner.teacher_forwards + self.live.teacher_forwards

    @property
    def bank_hits(self) -> int:
        return self.inner.bank_hits

    @property
    def written_back(self) -> int:
        return self.inner.written_back

    @property
    def feature_names(self) -> list[str]:
        return self.inner.feature_names

    def draw(self, n: int, rng: np.random.Generator, region_sampler: RegionSampler | None = None,
             *, paired_only: bool = False) -> BankBatch:
        if paired_only:
            return self.inner.draw(n, rng, region_sampler, paired_only=True)
        m = int(rng.binomial(n, self.share))
        parts = [self.inner.draw(n - m, rng, region_sampler)] if m < n else []
        if m:
            if self.prompts is not None:
                prompts = self.prompts[rng.integers(0, len(self.prompts), m)]
            elif region_sampler is not None:
                regions = np.asarray(region_sampler(m, EXTRA_REGION_STREAM), np.int64)
                prompts = self.live.ctx.conditioning.prompts_in(regions, rng)
            else:
                prompts = rng.integers(0, len(self.live.ctx.conditioning.region_of_prompt), m)
            parts.append(self.live.conditioned(prompts, rng))
        return concat_batches(parts)

    def region_usage(self, num_regions: int) -> dict[str, np.ndarray]:
        a, b = self.inner.region_usage(num_regions), self.live.region_usage(num_regions)
        return {"draws": a["draws"] + b["draws"], "distinct": a["distinct"] + b["distinct"],
                "max_reuse": np.maximum(a["max_reuse"], b["max_reuse"])}

    def flush(self) -> None:
        self.inner.flush()

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "steered": self.live.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.live.load_state_dict(state["steered"])

    def close(self) -> None:
        self.inner.close()


def steered(cfg: Config, ctx: RunContext, source: TeacherSource, rank: int) -> TeacherSource:
    """The run's source with its steered share (rc.oracle_share or aria.reach), or the source itself."""
    share = cfg.rc.oracle_share or cfg.aria.reach
    if not share:
        return source
    prompts = None
    if cfg.rc.oracle_share:
        from aria_hpc.errors import UserError
        from aria_hpc.splits import SPLITS

        prompts = np.flatnonzero(np.asarray(ctx.store.pool.split) == SPLITS.index("unseen"))  # the held-out group
        if not len(prompts):
            raise UserError("rc.oracle_share steers samples to the held-out (unseen) prompts, but this pool has "
                            "none: hold a concept out (world.heldout_shapes / heldout_colours / unseen_pairs)")
    live = LiveTeacher(ctx, stream=EXTRA_STREAM + rank, features=source.feature_names)
    return SteeredDraws(source, live, share, prompts)


def open_source(cfg: Config, ctx: RunContext, *, rank: int = 0, world: int = 1, run_dir: Path | None = None):
    """The one factory of a training run's teacher source: bank.mode's (cached, hybrid or live; with
    no bank.dir, the live teacher without write-back), with its steered share if any."""
    from aria_hpc.bank.reader import LAYOUT_FIELDS

    b = cfg.bank
    if not b.dir:
        return steered(cfg, ctx, LiveTeacher(ctx, stream=rank), rank)
    bank = Bank(b.dir, ctx.fingerprint, ignore=LAYOUT_FIELDS)
    live = None
    if b.mode != "cached":
        writeback = None
        if b.writeback:  # under the bank's own fingerprint (a run may differ from it in layout fields only)
            owner = {"run_dir": str(Path(run_dir or cfg.run.dir).resolve()), "rank": rank}
            writeback = Writeback(Path(b.dir), bank.fingerprint, owner, b.writeback_every)
        live = LiveTeacher(ctx, stream=rank, writeback=writeback, features=bank.feature_names)
    if b.mode != "live":
        max_reuse = b.max_reuse if b.mode == "hybrid" else None
        source = BankSource(bank, num_regions=ctx.conditioning.num_regions, live=live, max_reuse=max_reuse,
                            rank=rank, world=world)
    else:
        source = live
    return steered(cfg, ctx, source, rank)
