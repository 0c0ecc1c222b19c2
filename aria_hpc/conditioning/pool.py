"""Prompt pools: stable ids, de-duplication, a content digest, streamed from text, JSONL or Parquet files.

A pool is materialised once into `prompts.h5` (a chunked variable-length UTF-8 dataset): prompts are
streamed from the sources and written in chunks, and de-duplicated through a set of 16-byte digests,
so a pool of millions of prompts is never held twice in Python memory; above
pool.dedup_memory_max the digests go to partition files on disk instead (`external_duplicates`). Ids
are positions in that file (first occurrence wins), stable for the same sources. The embedded shapes world is a source
too, with per-prompt split and combination labels.

Parquet files (LAION-style metadata, `pool.column` = caption) are streamed in row batches with
pyarrow, never read whole. A glob in `pool.files` expands in sorted order, and the digest covers the
expanded list of file names as well as the prompts.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from aria_hpc.errors import UserError
from aria_hpc.fsio import read_h5
from aria_hpc.h5doc import describe
from aria_hpc.integrity import sealed_h5

POOL_FIX = "run `aria-hpc embed CONFIG --rebuild` (it rebuilds the pool and its embeddings)"

POOL_FILE = "prompts.h5"
CHUNK = 4096
NO_LABEL = -1


def iter_file_prompts(path: Path, jsonl_field: str, dropped: dict[str, int] | None = None) -> Iterator[str]:
    """Non-empty prompts of one file (its existence is checked by describe_sources, first); the
    empty ones are counted in dropped["empty"]."""
    jsonl = path.suffix in (".jsonl", ".json")
    dropped = {} if dropped is None else dropped
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{line_no} is not valid UTF-8 (byte {exc.start + 1} of the line): "
                                "re-encode the file as UTF-8 (e.g. iconv -t UTF-8)") from None
            if jsonl and line:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{line_no} is not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict) or jsonl_field not in record:
                    raise UserError(f"{path}:{line_no} has no field '{jsonl_field}' (set pool.jsonl_field)")
                line = str(record[jsonl_field]).strip()
            if not line:
                dropped["empty"] = dropped.get("empty", 0) + 1
                continue
            yield line


PARQUET_BATCH = 8192


def is_parquet(path: Path) -> bool:
    return path.suffix in (".parquet", ".pq")


def iter_parquet_prompts(path: Path, column: str, dropped: dict[str, int] | None = None) -> Iterator[str]:
    """Non-empty prompts of one Parquet file's `column`, streamed in row batches (nulls and empty
    strings are counted in dropped["empty"])."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dropped = {} if dropped is None else dropped
    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0][:160]}): "
                        "write it again, or drop it from pool.files") from None
    names = reader.schema_arrow.names
    if column not in names:
        raise UserError(f"{path} has no column '{column}' (it has {', '.join(names[:8])}"
                        f"{', ...' if len(names) > 8 else ''}): set pool.column")
    try:
        for batch in reader.iter_batches(batch_size=PARQUET_BATCH, columns=[column]):
            for value in batch.column(0).to_pylist():
                line = "" if value is None else str(value).strip()
                if not line:
                    dropped["empty"] = dropped.get("empty", 0) + 1
                    continue
                yield line
    except (pa.ArrowException, OSError) as exc:
        cause = str(exc).splitlines()[0][:160]
        raise UserError(f"{path} cannot be read to the end ({cause}): write it again") from None


def expand_files(files: list[str]) -> list[str]:
    """pool.files with every glob expanded in sorted order; a glob that matches nothing is an error."""
    out = []
    for name in files:
        if glob.has_magic(name):
            matches = sorted(glob.glob(name))
            if not matches:
                raise UserError(f"pool.files: '{name}' matches no file")
            out.extend(matches)
        else:
            out.append(name)
    return out


def iter_sources(files: list[str], jsonl_field: str, world, dropped: dict[str, int] | None = None,
                 column: str = "caption") -> Iterator[tuple[str, int, int]]:
    """(prompt, split, combination) from the files (globs expanded), or from the shapes world when
    files is empty."""
    if files:
        for name in expand_files(files):
            path = Path(name)
            prompts = (iter_parquet_prompts(path, column, dropped) if is_parquet(path)
                       else iter_file_prompts(path, jsonl_field, dropped))
            for prompt in prompts:
                yield prompt, NO_LABEL, NO_LABEL
        return
    splits = world.combination_splits
    for prompt, combo in zip(world.prompts, world.prompt_combination):
        yield prompt, int(splits[combo]), int(combo)


def describe_sources(files: list[str], jsonl_field: str, world, column: str = "caption") -> str:
    """What a pool is built from: file names, sizes and mtimes, or the embedded world's settings."""
    if files:
        stats = []
        expanded = expand_files(files)
        for name in expanded:
            p = Path(name)
            if not p.is_file():
                raise UserError(f"prompt file {p} does not exist (pool.files lists text, JSONL or Parquet files)")
            st = p.stat()
            stats.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        described = {"files": stats, "jsonl_field": jsonl_field}
        if any(is_parquet(Path(n)) for n in expanded):  # only then: older text/JSONL pools still match
            described["column"] = column
        return json.dumps(described)
    described = {"world": "shapes", "unseen_pairs": list(world.unseen_pairs), "under_pairs": list(world.under_pairs)}
    for name in ("heldout_colours", "heldout_shapes", "heldout_share"):  # only when set: older pools still match
        if getattr(world, name):
            described[name] = getattr(world, name) if name == "heldout_share" else list(getattr(world, name))
    return json.dumps(described)


def materialise_pool(out_dir: Path, files: list[str], jsonl_field: str, world, column: str = "caption",
                     dedup_memory_max: int = 5_000_000) -> Path:
    """Write out_dir/prompts.h5 (unless one from the same sources exists); returns its path.

    Written to a temporary name and renamed, so concurrent job-array tasks doing the same work
    cannot leave a half-written pool behind. A pool built from other sources (other files, a
    file changed since, other world splits) is an error, never silently reused.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / POOL_FILE
    sources = describe_sources(files, jsonl_field, world, column)
    if path.exists():
        with read_h5(path, "run `aria-hpc embed CONFIG --rebuild` (it rebuilds the pool and its embeddings)") as f:
            built_from = f.attrs.get("sources")
        if built_from != sources:
            raise UserError(f"{path} was built from other prompt sources (pool.files, their contents, or "
                            "the world's splits changed): use another embed.dir, or pass --rebuild")
        return path
    with sealed_h5(path) as f:  # a bad line or a kill leaves neither a pool nor its temporary file
        _write_pool(f, files, jsonl_field, world, sources, column, dedup_memory_max, out_dir)
    return path


def count_upper_bound(files: list[str]) -> int:
    """At most this many prompts in the files (before dropping blanks and repeats): Parquet row
    counts from the footers, newlines for text and JSONL (read in blocks, not parsed)."""
    total = 0
    for name in expand_files(files):
        path = Path(name)
        if is_parquet(path):
            import pyarrow.parquet as pq

            try:
                total += pq.ParquetFile(path).metadata.num_rows
            except Exception:  # unreadable: iter_parquet_prompts says so in one line when it gets there
                continue
        else:
            with open(path, "rb") as fh:
                total += sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b"")) + 1
    return total


PARTITIONS = 256  # external dedup: digests hashed into this many partition files by their first byte
RECORD = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("seq", "<u8")])
BATCH = 65536  # prompts hashed, partitioned and written per numpy batch (a multiple of 8: whole bitmap bytes)


def _batches(items: Iterator) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _digests(prompts: list[str]) -> list[bytes]:
    return [hashlib.blake2b(p.encode("utf-8"), digest_size=16).digest() for p in prompts]


def external_duplicates(prompts: Iterator[str], workdir: Path) -> tuple[np.ndarray, int]:
    """Which prompts repeat an earlier one, in bounded memory. Pass 1 streams (16-byte digest, position)
    records into PARTITIONS files by the digest's first byte, a batch of BATCH prompts at a time
    (partitioned with one stable sort, no per-prompt Python records); pass 2 sorts one partition at a
    time by (digest, position) and marks every record after the first of its digest. Memory: one batch,
    one partition (24 bytes x N / 256) and a bitmap of N bits, memory-mapped on disk; disk: 24 bytes a
    prompt. Returns (the bitmap of duplicates as a uint8 memmap, little bit order; prompts seen)."""
    workdir.mkdir(parents=True, exist_ok=True)
    handles = [open(workdir / f"part-{i:03d}.bin", "wb") for i in range(PARTITIONS)]
    count = 0
    try:
        for batch in _batches(prompts):
            keys = np.frombuffer(b"".join(_digests(batch)), dtype="<u8").reshape(-1, 2)
            records = np.empty(len(batch), dtype=RECORD)
            records["hi"], records["lo"] = keys[:, 0], keys[:, 1]
            records["seq"] = np.arange(count, count + len(batch), dtype=np.uint64)
            count += len(batch)
            part = (records["hi"] & 0xFF).astype(np.intp)  # the digest's first byte
            records = records[np.argsort(part, kind="stable")]
            bounds = np.searchsorted(np.sort(part), np.arange(PARTITIONS + 1))
            for i in np.flatnonzero(np.diff(bounds)):
                records[bounds[i]:bounds[i + 1]].tofile(handles[i])
    finally:
        for h in handles:
            h.close()
    dup = np.memmap(workdir / "duplicates.bits", dtype=np.uint8, mode="w+", shape=(max(1, (count + 7) // 8),))
    for i in range(PARTITIONS):
        records = np.fromfile(workdir / f"part-{i:03d}.bin", dtype=RECORD)
        (workdir / f"part-{i:03d}.bin").unlink()
        if len(records) < 2:
            continue
        records = records[np.lexsort((records["seq"], records["lo"], records["hi"]))]
        same = (records["hi"][1:] == records["hi"][:-1]) & (records["lo"][1:] == records["lo"][:-1])
        seqs = records["seq"][1:][same]
        np.bitwise_or.at(dup, seqs // 8, (1 << (seqs % 8)).astype(np.uint8))
    return dup, count


def _write_pool(f: h5py.File, files: list[str], jsonl_field: str, world, sources: str, column: str,
                dedup_memory_max: int, out_dir: Path) -> None:
    """Stream the sources into f, first occurrences only: with a set of 16-byte digests in memory
    up to dedup_memory_max prompts (about 100 bytes a prompt), with external_duplicates above it (the
    sources are then read twice)."""
    import os
    import shutil

    workdir = out_dir / f".dedup-{os.getpid()}"
    try:
        duplicates = None
        if files and count_upper_bound(files) > dedup_memory_max:
            duplicates, _ = external_duplicates((p for p, _, _ in iter_sources(files, jsonl_field, world, {}, column)),
                                                workdir)
        _stream_pool(f, files, jsonl_field, world, sources, column, duplicates)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _stream_pool(f: h5py.File, files, jsonl_field, world, sources, column, duplicates) -> None:
    """Write first occurrences: those `duplicates` (a bitmap by position) does not mark, or, without
    it, those a set of 16-byte digests has not seen."""
    seen: set[bytes] = set()
    dropped = {"empty": 0, "duplicate": 0}
    digest = hashlib.sha256()
    if files:  # the expanded file list, in order, then every prompt
        digest.update(json.dumps(expand_files(files)).encode("utf-8") + b"\n")
    text_type = h5py.string_dtype("utf-8")
    text = f.create_dataset("text", (0,), maxshape=(None,), dtype=text_type, chunks=(CHUNK,))
    split = f.create_dataset("split", (0,), maxshape=(None,), dtype=np.int8, chunks=(CHUNK,))
    combo = f.create_dataset("combination", (0,), maxshape=(None,), dtype=np.int32, chunks=(CHUNK,))
    seq = 0
    for batch in _batches(iter_sources(files, jsonl_field, world, dropped, column)):
        if duplicates is not None:  # this batch's bits (BATCH is a multiple of 8, so seq is byte-aligned)
            repeats = np.unpackbits(duplicates[seq >> 3:(seq + len(batch) + 7) >> 3],
                                    bitorder="little")[:len(batch)].astype(bool).tolist()
        else:
            repeats = []
            for key in _digests([b[0] for b in batch]):
                repeats.append(key in seen)
                seen.add(key)
        seq += len(batch)
        kept = [item for item, repeat in zip(batch, repeats) if not repeat]
        dropped["duplicate"] += len(batch) - len(kept)
        if not kept:
            continue
        digest.update("".join(item[0] + "\n" for item in kept).encode("utf-8"))
        n = text.shape[0]
        for ds, column_values in zip((text, split, combo), zip(*kept)):
            ds.resize((n + len(kept),))
            ds[n:] = list(column_values)
    if text.shape[0] == 0:
        raise UserError("the prompt pool is empty: pool.files has no non-empty prompt")
    f.attrs["count"] = text.shape[0]
    f.attrs["digest"] = digest.hexdigest()
    f.attrs["sources"] = sources
    f.attrs["dropped_empty"] = dropped["empty"]  # blank lines / empty JSONL fields
    f.attrs["dropped_duplicate"] = dropped["duplicate"]  # repeats of an earlier prompt (first one kept)
    describe(f, "prompts")


class PromptPool:
    """Read access to a materialised pool (lazy: prompts are read by id, not all at once)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise UserError(f"prompt pool {path} does not exist: run `aria-hpc embed CONFIG` first")
        self.path = path
        from aria_hpc.integrity import verify

        verify(path, "prompt pool", POOL_FIX)  # before any prompt is read (cached by stat)
        with read_h5(path, POOL_FIX) as f:
            self.count = int(f.attrs["count"])
            self.digest = str(f.attrs["digest"])
            # what building dropped (absent in pools written before these were recorded)
            self.dropped = {k: int(f.attrs.get(f"dropped_{k}", 0)) for k in ("empty", "duplicate")}
            self.split = f["split"][:]
            self.combination = f["combination"][:]

    def __len__(self) -> int:
        return self.count

    def texts(self, start: int = 0, stop: int | None = None) -> list[str]:
        with read_h5(self.path, POOL_FIX) as f:
            return [t.decode("utf-8") for t in f["text"][start:stop]]

    def text(self, ids: np.ndarray) -> list[str]:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return []
        unique, inverse = np.unique(ids, return_inverse=True)  # h5py reads sorted, distinct ids
        with read_h5(self.path, POOL_FIX) as f:
            got = f["text"][unique]
        return [got[i].decode("utf-8") for i in inverse]
