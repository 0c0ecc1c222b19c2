"""Reading a bank: fingerprint-checked, digest-verified, region-indexed, lazily opened per process.

Entries are drawn the way RC draws them (uniformly over the bank, which follows RC's schedule); an
optional region sampler (ARIA) re-draws the random-conditioned ones by region: region k ~ q, then an
entry uniformly among region k's random-conditioned entries. Files are opened read-only with HDF5
file locking off (NFS/Lustre), on first use in each process (DataLoader workers included), and
outputs are memory-mapped straight from the contiguous dataset when the layout allows it.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from aria_hpc.bank.fingerprint import fingerprint_diff
from aria_hpc.bank.integrity import verify_shards
from aria_hpc.bank.ledger import FRESH, ReuseLedger
from aria_hpc.bank.manifest import read_manifest
from aria_hpc.bank.noise import noised_inputs
from aria_hpc.bank.paired import X0_FILE, load_x0
from aria_hpc.bank.plan import COLUMNS
from aria_hpc.errors import UserError
from aria_hpc.native import gather_rows


@dataclass
class BankBatch:
    rows: np.ndarray  # bank rows, ascending (-1 for live entries)
    entry: np.ndarray  # entry ids (their noise seeds derive from them)
    image: np.ndarray
    cond: np.ndarray  # prompt ids, -1 = null text
    region: np.ndarray
    t: np.ndarray
    seed: np.ndarray
    paired: np.ndarray
    output: torch.Tensor  # teacher output, float16
    features: dict[str, torch.Tensor]
    x_t: torch.Tensor | None = None  # regenerated noised input (None when read with noised=False)


# How a bank was laid out (and the seed its entries were drawn with) does not change what its entries
# mean: a training run may differ here, so runs of every training seed share one bank.
LAYOUT_FIELDS = ("sampling.entries", "sampling.shards", "sampling.min_per_region", "sampling.features",
                 "sampling.seed")


class Bank:
    """A complete bank, opened for reading. Picklable: file handles are per process."""

    def __init__(self, bank_dir: str | Path, expected_fingerprint: dict | None = None,
                 ignore: tuple[str, ...] = (), shards: list[str] | None = None) -> None:
        self.dir = Path(bank_dir)
        manifest = read_manifest(self.dir)
        self.fingerprint = manifest["fingerprint"]
        if expected_fingerprint is not None:
            differ = [k for k in fingerprint_diff(self.fingerprint, expected_fingerprint) if k not in ignore]
            if differ:
                raise UserError(f"the bank in {self.dir} does not match this run (differs in {', '.join(differ)}): "
                                "rebuild it with `aria-hpc bank CONFIG --rebuild`, or point bank.dir elsewhere")
        if not manifest["complete"]:
            raise UserError(f"the bank in {self.dir} lacks shards {manifest['missing'][:8]}: "
                            "run `aria-hpc bank CONFIG` to finish it")
        listed = {s["name"]: s for s in manifest["shards"]}
        if shards is not None:  # a run's pinned view: the shards it started with (exact resume)
            gone = [name for name in shards if name not in listed]
            if gone:
                raise UserError(f"the bank in {self.dir} no longer lists {gone[:4]}, which this run started with: "
                                "restore them, or start the run over in a new run.dir")
            listed = {name: listed[name] for name in shards}
        # planned shards first, then written-back ones: the planned rows [0, planned_entries) carry
        # RC's schedule (which draws are random-conditioned); written-back rows only join the regions
        metas = sorted(listed.values(), key=lambda s: (s.get("kind", "planned") != "planned", s["name"]))
        verify_shards(self.dir, metas)  # before any row is read (cached by stat)
        self.shards = [s["name"] for s in metas]
        self.shard_kinds = [s.get("kind", "planned") for s in metas]
        counts = np.array([s["entries"] for s in metas], dtype=np.int64)
        self.planned_entries = int(sum(c for c, kind in zip(counts, self.shard_kinds) if kind == "planned"))
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        cols = {k: [] for k in COLUMNS}
        feature_names: set[str] = set()
        for name in self.shards:
            with h5py.File(self.dir / name, "r", locking=False) as f:
                for k in COLUMNS:
                    cols[k].append(f[k][:])
                self.output_shape = f["output"].shape[1:]
                feature_names = set(f["features"].keys()) if "features" in f else set()
        self.columns = {k: np.concatenate(v) for k, v in cols.items()}
        self.feature_names = sorted(feature_names)
        self.random = ~self.columns["paired"] & (self.columns["cond"] >= 0)
        self.kept_rows = np.flatnonzero(~self.random)  # true caption or null text: what `paired` draws
        rand_rows = np.flatnonzero(self.random)
        order = np.argsort(self.columns["region"][rand_rows], kind="stable")
        self.region_rows = rand_rows[order]  # random-conditioned rows grouped by region
        k = int(self.columns["region"].max()) + 1 if len(self) else 0
        self.region_bounds = np.searchsorted(self.columns["region"][self.region_rows], np.arange(k + 1))
        self._pid = None
        self._files: dict[str, tuple] = {}
        self._x0 = None
        self._noise_schedule = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_pid=None, _files={}, _x0=None, _noise_schedule=None)
        return state

    @property
    def region_counts(self) -> np.ndarray:
        """Random-conditioned entries per region."""
        return np.diff(self.region_bounds)

    @property
    def noise_schedule(self):
        """What made the bank's x_t (add_noise(x0, noise, t)), from the scheduler config it was built with:
        a DDPMScheduler, or a flow teacher's table (models.flow.FlowTime)."""
        if self._noise_schedule is None:
            from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

            config = json.loads(self.fingerprint["scheduler_config"])
            if config.get("_class_name") == FlowMatchEulerDiscreteScheduler.__name__:
                from aria_hpc.models.flow import FlowTime

                self._noise_schedule = FlowTime.from_scheduler(FlowMatchEulerDiscreteScheduler.from_config(config))
            else:
                self._noise_schedule = DDPMScheduler.from_config(config)
        return self._noise_schedule

    def _handles(self, shard: int):
        """(h5py file, plain ndarray view of the mapped outputs or None), opened once per process."""
        if self._pid != os.getpid():
            self._pid, self._files, self._x0 = os.getpid(), {}, None
        name = self.shards[shard]
        if name not in self._files:
            f = h5py.File(self.dir / name, "r", locking=False)
            dset = f["output"]
            offset = dset.id.get_offset()
            view = None
            if offset is not None and dset.chunks is None and dset.compression is None and dset.shape[0]:
                with open(self.dir / name, "rb") as raw:
                    mapped = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ)
                view = np.ndarray(dset.shape, np.float16, buffer=mapped, offset=offset)
            self._files[name] = (f, view)
        return self._files[name]

    def x0(self) -> np.ndarray:
        if self._pid != os.getpid() or self._x0 is None:
            self._handles(0)  # resets per-process state after a fork
            self._x0 = load_x0(self.dir) if (self.dir / X0_FILE).is_file() else None
            if self._x0 is None:
                raise UserError(f"{self.dir / X0_FILE} is missing: rebuild the bank (aria-hpc bank CONFIG --rebuild)")
        return self._x0

    def draw(self, n: int, rng: np.random.Generator, region_sampler: Callable[[int], np.ndarray] | None = None,
             *, paired_only: bool = False) -> np.ndarray:
        """Rows of a batch: uniform over the planned entries (RC's schedule); with a region sampler,
        the random-conditioned rows are re-drawn as region k = region_sampler(m), then uniformly
        inside k. paired_only: uniform over the entries that keep their true caption (or the null text)."""
        return self.draw_served(n, rng, region_sampler, paired_only=paired_only)[0]

    def draw_served(self, n: int, rng: np.random.Generator, region_sampler: Callable[[int], np.ndarray] | None = None,
                    *, paired_only: bool = False, ledger: ReuseLedger | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`draw` through a ledger (which records what each entry served and, with a reuse limit,
        retires used-up entries): (rows, regions), where rows is FRESH (-1) for a draw whose region has
        nothing left and regions is the region such a draw asked for (-1 elsewhere)."""
        wanted = np.full(n, -1, np.int64)
        if paired_only:
            return self.kept_rows[rng.integers(0, len(self.kept_rows), n)], wanted
        rows = rng.integers(0, self.planned_entries, n)
        if region_sampler is not None:
            redraw = np.flatnonzero(self.random[rows])
            if len(redraw):
                regions = np.asarray(region_sampler(len(redraw)), dtype=np.int64)
                u = rng.random(len(redraw))
                if ledger is None or ledger.unlimited:
                    lo, hi = self.region_bounds[regions], self.region_bounds[regions + 1]
                    if np.any(hi <= lo):
                        raise UserError(f"region {int(regions[np.argmax(hi <= lo)])} has no entries in the bank: "
                                        "rebuild it with bank.min_per_region >= 1, or use bank.mode=hybrid")
                if ledger is None:
                    rows[redraw] = self.region_rows[lo + (u * (hi - lo)).astype(np.int64)]
                else:
                    rows[redraw] = ledger.serve(regions, u)
                    fresh = rows[redraw] == FRESH
                    wanted[redraw[fresh]] = regions[fresh]
        return rows, wanted

    def ledger(self, num_regions: int, max_reuse: int | None = None, rank: int = 0, world: int = 1) -> ReuseLedger:
        """A ledger over this bank's random-conditioned entries in regions 0..num_regions-1 (bank/ledger.py)."""
        bounds = self.region_bounds[:num_regions + 1]
        bounds = np.concatenate([bounds, np.full(num_regions + 1 - len(bounds), bounds[-1] if len(bounds) else 0)])
        return ReuseLedger(self.region_rows[:bounds[-1]], bounds, max_reuse, rank, world)

    def read_outputs(self, rows: np.ndarray, dataset: str = "output") -> np.ndarray:
        """float16 rows of a per-entry dataset; `rows` sorted ascending. One gather per shard (C++,
        GIL released) straight from the memory-mapped outputs into the result; h5py reads for
        features and for chunked or compressed files."""
        rows = np.asarray(rows, dtype=np.int64)
        cuts = np.searchsorted(rows, self.offsets)
        out = None
        for s in range(len(self.shards)):
            a, b = cuts[s], cuts[s + 1]
            if a == b:
                continue
            local = rows[a:b] - self.offsets[s]
            f, view = self._handles(s)
            if out is None:
                shape = self.output_shape if dataset == "output" else f[dataset].shape[1:]
                out = np.empty((len(rows), *shape), np.float16)
            if dataset == "output" and view is not None:
                gather_rows(view, local, out[a:b])  # one copy, straight into the batch
            else:
                unique, inverse = np.unique(local, return_inverse=True)  # h5py wants increasing indices
                out[a:b] = f[dataset][unique][inverse]
        return out

    def read(self, rows: np.ndarray, *, noised: bool = True) -> BankBatch:
        """The entries of `rows`, returned in ascending row order (batch.rows says which is which).
        Outputs and features stay float16 (convert on the device); x_t is float32."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        c = {k: v[rows] for k, v in self.columns.items()}
        output = torch.from_numpy(self.read_outputs(rows))
        features = {k: torch.from_numpy(self.read_outputs(rows, f"features/{k}")) for k in self.feature_names}
        x_t = None
        if noised:
            x0 = torch.from_numpy(self.x0()[c["image"]])
            x_t = noised_inputs(self.noise_schedule, x0, c["t"], c["seed"])
        return BankBatch(rows, c["entry"], c["image"], c["cond"], c["region"], c["t"], c["seed"], c["paired"],
                         output, features, x_t)
