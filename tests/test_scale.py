"""The conditioning space at scale, checked at small sizes: sampled k-means with chunked assignment,
the memory-mapped region index, bounded-memory deduplication, pools without stored token states."""

import h5py
import numpy as np
import pytest

from aria_hpc.conditioning.kmeans import ArrayRows, kmeans_rows, load_regions, save_regions


def blobs(n=3000, k=8, d=16, seed=0):
    """Well-separated unit-norm clusters (a partition any decent k-means recovers)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4
    x = centres[rng.integers(0, k, n)] + rng.normal(size=(n, d)) * 0.3
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


KM = dict(niter=10, seed=0, spherical=True, threads=1, representatives=3)


def test_chunked_assignment_with_every_point_is_the_in_memory_kmeans():
    import faiss

    x = blobs()
    faiss.omp_set_num_threads(1)
    ref = faiss.Kmeans(x.shape[1], 8, niter=10, seed=0, spherical=True, verbose=False,
                       max_points_per_centroid=max(256, len(x) // 8 + 1))
    ref.train(x)
    expected = ref.index.search(x, 1)[1][:, 0]
    for chunk in (7, 1000, len(x)):
        got = kmeans_rows(ArrayRows(x), 8, chunk_rows=chunk, **KM)
        np.testing.assert_array_equal(got.region, expected)
        np.testing.assert_array_equal(got.centroids, ref.centroids)
    # representatives: the 3 prompts nearest each centroid among its own, nearest first
    d = ((x - got.centroids[got.region]) ** 2).sum(1)
    for r in range(8):
        mine = np.flatnonzero(got.region == r)
        np.testing.assert_array_equal(got.representatives[r], mine[np.argsort(d[mine], kind="stable")[:3]])


def test_sampled_kmeans_is_stable_and_finds_the_same_partition():
    # many overlapping components, like sentence embeddings (not a few far-apart blobs, where either
    # path may land in a local optimum that merges two of them)
    x = blobs(n=6000, k=64, d=16)
    full = kmeans_rows(ArrayRows(x), 16, **KM)
    sampled = kmeans_rows(ArrayRows(x), 16, train_points=1000, chunk_rows=512, **KM)
    again = kmeans_rows(ArrayRows(x), 16, train_points=1000, chunk_rows=512, **KM)
    np.testing.assert_array_equal(sampled.region, again.region)  # deterministic for a seed
    assert sampled.attrs["train_points"] == 1000
    # about as good a clustering of every point as training on all of them (a sample of 1,000 vs 6,000)
    def cost(m):
        return float(((x - m.centroids[m.region]) ** 2).sum(1).mean())

    assert cost(sampled) <= 1.05 * cost(full), (cost(sampled), cost(full))


def test_store_rows_across_shards_equal_the_array(tmp_path):
    """PooledRows reads rows by id and in chunks across shard borders exactly as the array holds them."""
    from aria_hpc.conditioning.embeddings import PooledRows

    x = blobs(n=1000).astype(np.float16)

    class Store:  # the two things PooledRows needs of an EmbeddingStore, over real shard files
        def __init__(self):
            from aria_hpc.conditioning.embeddings import shard_name, shard_range

            self.shards, self.paths = 3, []
            self.pool = range(len(x))
            for i in range(3):
                a, b = shard_range(len(x), i, 3)
                path = tmp_path / shard_name(i, 3)
                with h5py.File(path, "w") as f:
                    f["pooled"] = x[a:b]
                self.paths.append(path)

        def pooled_of(self, ids):
            return x[ids]

    rows = PooledRows(Store())
    got = np.concatenate([c for _, c in rows.chunks(128)])
    np.testing.assert_array_equal(got, x.astype(np.float32))
    starts = [s for s, _ in rows.chunks(128)]
    assert starts[0] == 0 and sorted(starts) == starts
    a = kmeans_rows(rows, 8, chunk_rows=100, **KM)
    b = kmeans_rows(ArrayRows(x.astype(np.float32)), 8, **KM)
    np.testing.assert_array_equal(a.region, b.region)


def test_region_map_is_memory_mapped_and_draws_as_before(tmp_path):
    from aria_hpc.regions.sampler import RegionIndex

    x = blobs(n=2000)
    regions = kmeans_rows(ArrayRows(x), 8, **KM)
    path = save_regions(regions, tmp_path / "regions.h5", {})
    loaded = load_regions(path)
    assert isinstance(loaded.region, np.memmap) and isinstance(loaded.order, np.memmap)
    assert loaded.region.dtype == np.int32 and loaded.order.dtype == np.int32  # 8 bytes a prompt
    mapped = RegionIndex(loaded.region, 8, loaded.order, loaded.sizes)
    np.testing.assert_array_equal(mapped.sizes, np.bincount(regions.region, minlength=8))
    built = RegionIndex(np.asarray(regions.region, dtype=np.int64), 8)  # the in-memory path of before
    u = np.random.default_rng(0).random(5000)
    wanted = np.random.default_rng(1).integers(0, 8, 5000)
    np.testing.assert_array_equal(mapped.pick(wanted, u), built.pick(wanted, u))
    assert mapped.pick(wanted, u).dtype == np.int64
    np.testing.assert_array_equal(mapped.prompts_in(wanted, 1234), built.prompts_in(wanted, 1234))


@pytest.mark.parametrize("batch", [65536, 24])
@pytest.mark.parametrize("threshold", [0, 10**9])
def test_external_dedup_gives_the_in_memory_pool(tmp_path, threshold, batch, monkeypatch):
    """Above pool.dedup_memory_max the digests go through partition files on disk; the pool is the
    same either way (first occurrence wins), also when repeats fall in other hashing batches than
    their first occurrence (batch 24), and no partition file is left behind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aria_hpc.conditioning import pool as pool_module
    from aria_hpc.conditioning.pool import PromptPool, materialise_pool

    monkeypatch.setattr(pool_module, "BATCH", batch)

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    prompts = [" ".join(rng.choice(words, 2)) for _ in range(3000)]  # many repeats
    pq.write_table(pa.table({"caption": prompts[:2000]}), tmp_path / "a.parquet")
    (tmp_path / "b.txt").write_text("\n".join(prompts[2000:]) + "\n\n")
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.txt")]
    pool = PromptPool(materialise_pool(tmp_path / f"emb{threshold}", files, "prompt", None, "caption", threshold))
    expected = list(dict.fromkeys(prompts))
    assert pool.texts() == expected
    assert pool.dropped == {"empty": 1, "duplicate": 3000 - len(expected)}
    reference = PromptPool(materialise_pool(tmp_path / "ref", files, "prompt", None, "caption", 10**9))
    assert pool.digest == reference.digest
    # no partition file is left behind (beside the pool: only the verification cache, by stat)
    assert sorted(p.name for p in (tmp_path / f"emb{threshold}").iterdir()) == [".verified.json", ".verified.json.lock",
                                                                                "prompts.h5"]


def test_a_pool_without_stored_tokens_is_encoded_on_the_fly(tiny_world, tmp_path):
    """Above embed.store_tokens_max the shards hold no token states; the bank and training get the
    same conditioning by encoding each batch's prompts (fp16, as stored)."""
    from aria_hpc.cli import main
    from aria_hpc.config import load_config
    from aria_hpc.context import load_context

    path, root = tiny_world
    bare = [f"embed.dir={tmp_path / 'emb'}", "embed.store_tokens_max=100"]
    assert main(["embed", str(path), "--quiet", *bare]) == 0
    with h5py.File(tmp_path / "emb" / "shard-00000-of-00001.h5", "r") as f:
        assert "tokens" not in f and "pooled" in f
    stored = load_context(load_config(path), need_bank_dir=False)
    fresh = load_context(load_config(path, bare), need_bank_dir=False)
    assert stored.store.has_tokens and not fresh.store.has_tokens
    ids = np.array([0, 5, -1, 11519, 5, 300])
    a, b = stored.cond(ids), fresh.cond(ids)
    np.testing.assert_allclose(b.tokens.numpy(), a.tokens.numpy(), atol=2e-3)
    np.testing.assert_array_equal(b.mask.numpy(), a.mask.numpy())


def test_region_assignment_as_a_job_array_equals_the_single_process_map(tiny_world, tmp_path, aria_cli):
    """3 embedding shards: through submitit (debug executor) and by hand (--centroids, --shard i,
    --merge, as slurm/regions_array.sbatch runs it), the map is byte for byte the single-process one."""
    from aria_hpc.cli import main

    path, _ = tiny_world
    common = [f"embed.dir={tmp_path / 'emb'}", "embed.shards=3", "embed.store_tokens=false", "regions.k=8",
              "regions.train_points=4000", "regions.chunk_rows=1000"]
    assert main(["embed", str(path), "--quiet", *common]) == 0
    maps = {}
    for how in ("single", "submitit", "by hand"):
        out = [*common, f"regions.path={tmp_path / how / 'regions.h5'}"]
        if how == "single":
            assert main(["regions", str(path), *out]) == 0
        elif how == "submitit":
            assert main(["regions", str(path), "--executor", "debug", *out]) == 0
        else:
            assert aria_cli("regions", str(path), "--centroids", *out).returncode == 0
            for i in range(3):
                res = aria_cli("regions", str(path), "--shard", str(i), *out)
                assert res.returncode == 0, res.stderr
            res = aria_cli("regions", str(path), "--merge", *out)
            assert res.returncode == 0, res.stderr
        maps[how] = load_regions(tmp_path / how / "regions.h5")
    for how in ("submitit", "by hand"):
        for name in ("region", "order", "centroids", "sizes", "representatives"):
            np.testing.assert_array_equal(getattr(maps[how], name), getattr(maps["single"], name), err_msg=f"{how} {name}")
    assert maps["single"].attrs["train_points"] == 4000
    # a missing part is one line naming the task to run
    out = [*common, f"regions.path={tmp_path / 'gap' / 'regions.h5'}"]
    assert aria_cli("regions", str(path), "--centroids", *out).returncode == 0
    res = aria_cli("regions", str(path), "--merge", *out)
    assert res.returncode == 2 and "--shard 0" in res.stderr and len(res.stderr.strip().splitlines()) == 1
