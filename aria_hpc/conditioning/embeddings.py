"""The embeddings store: a prompt pool's pooled embeddings (and token states) in HDF5 shards.

    EMBED_DIR/prompts.h5                  the materialised pool (conditioning/pool.py)
    EMBED_DIR/shard-00000-of-00004.h5     rows [start, stop) of the pool: pooled (n, D) float16,
                                          optional tokens (n, L, D) float16 and mask (n, L)

Shards are independent (`aria-hpc embed CONFIG --shard i/n`, one job-array task each). A shard is
written as `<name>.partial`, flushed after every batch with its `done` row count, and renamed when
complete, so a killed build resumes where it stopped and a reader never sees a partial shard.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from aria_hpc.conditioning.pool import PromptPool, materialise_pool
from aria_hpc.config import Config
from aria_hpc.errors import UserError
from aria_hpc.fsio import fsync_path, read_h5
from aria_hpc.h5doc import describe
from aria_hpc.integrity import remember, seal, verify
from aria_hpc.worlds.shapes import shapes_world

EMBED_FIX = "run `aria-hpc embed CONFIG`: it sets a damaged shard aside and rebuilds it"


def shard_range(count: int, index: int, shards: int) -> tuple[int, int]:
    return count * index // shards, count * (index + 1) // shards


def shard_name(index: int, shards: int) -> str:
    return f"shard-{index:05d}-of-{shards:05d}.h5"


@dataclass
class ShardResult:
    index: int
    rows: int
    resumed_from: int  # rows found already written (0 = fresh start, rows = complete already)


def _matches(f: h5py.File, expect: dict) -> list[str]:
    return [k for k, v in expect.items() if f.attrs.get(k) != v]


def shard_expectation(pool: PromptPool, encoder, index: int, shards: int, store_tokens: bool) -> dict:
    """The attributes a shard built from this pool and encoder carries."""
    start, stop = shard_range(len(pool), index, shards)
    return {"pool_digest": pool.digest, "encoder_digest": encoder.digest, "start": start, "stop": stop,
            "max_length": encoder.max_length, "store_tokens": store_tokens}


def check_complete_shard(embed_dir: Path, expect: dict, index: int, shards: int) -> bool:
    """True if the shard is complete and matches; UserError if it exists for another pool/encoder."""
    return complete_rows_shard(embed_dir / shard_name(index, shards), expect, "embedding shard", EMBED_FIX,
                               "was built for another pool or encoder", "use another embed.dir, or pass --rebuild")


def complete_rows_shard(path: Path, expect: dict, what: str, fix: str, other: str, other_fix: str) -> bool:
    """Whether a row shard (write_rows_shard) is there, whole and for `expect`: False when missing, or
    damaged (set aside as `<name>.bad`, kept for inspection, to be built again); UserError naming the
    differing attrs when it was built from other inputs (`other`, `other_fix` say so)."""
    if not path.exists():
        return False
    try:
        verify(path, what, fix)
        with read_h5(path, fix) as f:
            bad = _matches(f, expect)
    except UserError as exc:
        os.replace(path, path.with_name(path.name + ".bad"))
        print(f"{exc}; set aside as {path.name}.bad", flush=True)
        return False
    if bad:
        raise UserError(f"{path} {other} (differs in {', '.join(bad)}): {other_fix}")
    return True


def build_shard(embed_dir: Path, pool: PromptPool, encoder, index: int, shards: int, *, batch_size: int,
                store_tokens: bool, progress: Callable[[int, int], None] | None = None) -> ShardResult:
    """Embed rows [start, stop) of the pool into one shard, resuming a partial one."""
    expect = shard_expectation(pool, encoder, index, shards, store_tokens)
    start, stop = expect["start"], expect["stop"]
    if check_complete_shard(embed_dir, expect, index, shards):
        return ShardResult(index, stop - start, stop - start)
    n, d, length = stop - start, encoder.dim, encoder.length
    chunk_rows = max(1, min(batch_size, n))
    pooled_dim = getattr(encoder, "pooled_dim", d)
    datasets = {"pooled": ((n, pooled_dim), np.float16, (chunk_rows, pooled_dim))}
    if store_tokens:
        datasets["tokens"] = ((n, length, d), np.float16, (1, length, d))
        datasets["mask"] = ((n, length), bool, (chunk_rows, length))

    def compute(a: int, b: int) -> dict[str, np.ndarray]:
        enc = encoder.encode(pool.texts(start + a, start + b), batch_size)
        out = {"pooled": enc.pooled.astype(np.float16)}
        if store_tokens:
            out.update(tokens=enc.tokens.astype(np.float16), mask=enc.mask)
        return out
    resumed_from = write_rows_shard(embed_dir / shard_name(index, shards), expect, datasets, compute, batch_size,
                                    "embeddings", progress=(lambda done: progress(index, done)) if progress else None)
    return ShardResult(index, n, resumed_from)


def write_rows_shard(final: Path, expect: dict, datasets: dict, compute: Callable[[int, int], dict[str, np.ndarray]],
                     batch_size: int, kind: str, progress: Callable[[int], None] | None = None) -> int:
    """Write a shard of per-row datasets {name: (shape, dtype, chunks)} batch by batch, as
    `<name>.partial` flushed after every batch with its `done` row count, then renamed: a killed build
    resumes where it stopped and a reader never sees a partial shard. Batches stay aligned to
    batch_size from the shard start, so a resumed shard computes exactly the batches an uninterrupted
    build would. `compute(a, b)` gives rows [a, b) of the shard. Returns the rows found already written."""
    partial = final.with_name(final.name + ".partial")
    final.parent.mkdir(parents=True, exist_ok=True)
    n = next(iter(datasets.values()))[0][0]
    done = 0
    if partial.exists():
        try:
            with h5py.File(partial, "r", locking=False) as f:
                done = int(f.attrs["done"]) if not _matches(f, expect) else -1
        except (OSError, KeyError):
            done = -1  # killed while writing metadata: start this shard again
        if done < 0:
            partial.unlink()
            done = 0
    mode = "r+" if partial.exists() else "w"
    with h5py.File(partial, mode, locking=False) as f:
        if mode == "w":
            for k, v in expect.items():
                f.attrs[k] = v
            f.attrs["done"] = 0
            for name, (shape, dtype, chunks) in datasets.items():
                f.create_dataset(name, shape, dtype=dtype, chunks=chunks)
            describe(f, kind)
        resumed_from = done
        while done < n:
            upto = min(n, done + batch_size)
            for name, value in compute(done, upto).items():
                f[name][done:upto] = value
            f.attrs["done"] = upto
            f.flush()
            done = upto
            if progress:
                progress(done)
        f.attrs["complete"] = True
        digest = seal(f)  # what every reader checks the shard against
    fsync_path(partial)
    os.replace(partial, final)
    remember(final, digest)
    return resumed_from


def stores_tokens(cfg: Config, pool: PromptPool) -> bool:
    """Whether `embed` keeps token states: embed.store_tokens, for a pool of at most embed.store_tokens_max."""
    return cfg.embed.store_tokens and len(pool) <= cfg.embed.store_tokens_max


def open_pool_and_encoder(cfg: Config) -> tuple[PromptPool, object]:
    """The configured prompt pool (materialised into embed.dir) and text encoder."""
    from aria_hpc.conditioning.encoders import open_text_encoder

    encoder = open_text_encoder(cfg.text_encoder.dir, cfg.text_encoder.max_length)
    pool = PromptPool(materialise_pool(Path(cfg.embed.dir), cfg.pool.files, cfg.pool.jsonl_field,
                                       shapes_world(cfg.world), cfg.pool.column, cfg.pool.dedup_memory_max))
    return pool, encoder


def build_shards(embed_dir: Path, pool: PromptPool, encoder, indices, shards: int, *, batch_size: int,
                 store_tokens: bool, progress: Callable[[int, int], None] | None = None) -> Iterator[ShardResult]:
    """build_shard for each of `indices`, yielding each result as it finishes. Every finished shard
    is checked before any work, so one built for another pool or encoder is refused up front."""
    for index in indices:
        check_complete_shard(embed_dir, shard_expectation(pool, encoder, index, shards, store_tokens), index, shards)
    for index in indices:
        yield build_shard(embed_dir, pool, encoder, index, shards, batch_size=batch_size, store_tokens=store_tokens,
                          progress=progress)


class EmbeddingStore:
    """All shards of an embed dir, checked complete and consistent on open."""

    def __init__(self, embed_dir: str | Path, shards: int) -> None:
        self.dir = Path(embed_dir)
        self.pool = PromptPool(self.dir / "prompts.h5")
        self.shards = shards
        self.paths = [self.dir / shard_name(i, shards) for i in range(shards)]
        missing = [p.name for p in self.paths if not p.exists()]
        if missing:
            raise UserError(f"{self.dir} lacks {len(missing)} of {shards} embedding shards ({missing[0]}, ...): "
                            "run `aria-hpc embed CONFIG` to finish them")
        digests = set()
        for p in self.paths:
            verify(p, "embedding shard", EMBED_FIX)  # before any of its rows is read (cached by stat)
            with read_h5(p, EMBED_FIX) as f:
                if f.attrs["pool_digest"] != self.pool.digest:
                    raise UserError(f"{p} was embedded from another prompt pool: rebuild with --rebuild")
                digests.add(f.attrs["encoder_digest"])
        if len(digests) != 1:
            raise UserError(f"the shards in {self.dir} come from different text encoders: rebuild with --rebuild")
        self.encoder_digest = digests.pop()
        with read_h5(self.paths[0], EMBED_FIX) as f:
            self.has_tokens = "tokens" in f  # else the prompts are encoded on the fly (RunContext.cond)

    def pooled(self) -> np.ndarray:
        """(N, D) float32 pooled embeddings in pool order."""
        parts = []
        for p in self.paths:
            with read_h5(p, EMBED_FIX) as f:
                parts.append(f["pooled"][:].astype(np.float32))
        return np.concatenate(parts)

    def pooled_rows(self) -> "PooledRows":
        """The pooled embeddings as a row source for k-means (sampled rows, chunked passes)."""
        return PooledRows(self)

    def pooled_of(self, ids: np.ndarray) -> np.ndarray:
        """(n, P) float16 pooled embeddings of the given prompt ids (SDXL's text_embeds)."""
        return self._rows(ids, ("pooled",))[0]

    def tokens(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token states (n, L, D) float16 and masks (n, L) of the given prompt ids."""
        tokens, mask = self._rows(ids, ("tokens", "mask"))
        return tokens, mask

    def _rows(self, ids: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        if "tokens" in names:
            with read_h5(self.paths[0], EMBED_FIX) as f:
                if "tokens" not in f:
                    raise UserError(f"{self.paths[0]} has no token states: embed with embed.store_tokens=true")
        return read_rows(self.paths, len(self.pool), ids, names, EMBED_FIX)


def read_rows(paths: list[Path], count: int, ids: np.ndarray, names: tuple[str, ...], fix: str) -> list[np.ndarray]:
    """The rows of the given ids from each named dataset of row-sharded files (shard i holds rows
    shard_range(count, i, len(paths))), reading every shard once."""
    ids = np.asarray(ids, dtype=np.int64)
    shards = len(paths)
    starts = np.array([shard_range(count, i, shards)[0] for i in range(shards)])
    shard_of = np.searchsorted(starts, ids, side="right") - 1
    out: list[np.ndarray] | None = None
    for s in np.unique(shard_of):
        sel = np.flatnonzero(shard_of == s)
        unique, inverse = np.unique(ids[sel] - starts[s], return_inverse=True)
        with read_h5(paths[s], fix) as f:
            got = [f[name][unique] for name in names]
        if out is None:
            out = [np.zeros((len(ids), *g.shape[1:]), g.dtype) for g in got]
        for o, g in zip(out, got):
            o[sel] = g[inverse]
    return out


class PooledRows:
    """One per-row dataset of row-sharded files (the embeddings' pooled rows, or teacher signatures),
    read by id or in chunks shard by shard, never all at once: a row source for k-means."""

    def __init__(self, store: EmbeddingStore, dataset: str = "pooled", paths: list[Path] | None = None,
                 fix: str = EMBED_FIX) -> None:
        self.count, self.dataset, self.fix = len(store.pool), dataset, fix
        self.paths = paths if paths is not None else store.paths

    def __len__(self) -> int:
        return self.count

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return read_rows(self.paths, self.count, ids, (self.dataset,), self.fix)[0].astype(np.float32)

    def chunks(self, rows: int):
        for index in range(len(self.paths)):
            yield from self.shard_chunks(index, rows)

    def shard_chunks(self, index: int, rows: int):
        """(first row id, rows) chunks of one shard, chunked from the shard's start."""
        start, stop = shard_range(self.count, index, len(self.paths))
        with read_h5(self.paths[index], self.fix) as f:
            for a in range(0, stop - start, rows):
                yield start + a, f[self.dataset][a:a + rows].astype(np.float32)
