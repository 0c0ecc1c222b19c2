"""Prompt pool, `aria-hpc embed` (shards, resume after SIGKILL) and `aria-hpc regions` (k-means)."""

import json
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml
from conftest import ROOT, cli_env

from aria_hpc.conditioning.embeddings import EmbeddingStore
from aria_hpc.conditioning.encoders import TextEncoder
from aria_hpc.conditioning.kmeans import load_regions
from aria_hpc.conditioning.pool import PromptPool, materialise_pool
from aria_hpc.errors import UserError


def write_pool_files(tmp_path, n=300):
    text = tmp_path / "a.txt"
    text.write_text("\n".join([f"prompt number {i}" for i in range(n)] + ["", "prompt number 3", "  "]) + "\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": f"json prompt {i}", "x": 1}) for i in range(n // 3)) +
                     "\n" + json.dumps({"prompt": "prompt number 5"}) + "\n")
    return [str(text), str(jsonl)]


def write_config(tmp_path, encoder_dir, files, *, shards=1, batch_size=8, k=4, store_tokens=True):
    cfg = {"seed": 0, "pool": {"files": files}, "text_encoder": {"dir": str(encoder_dir), "max_length": 12,
                                                                "batch_size": batch_size},
           "embed": {"dir": str(tmp_path / "emb"), "shards": shards, "store_tokens": store_tokens},
           "regions": {"path": str(tmp_path / "emb" / "regions.h5"), "k": k, "niter": 10}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pool_dedups_with_stable_ids_and_digest(tmp_path):
    files = write_pool_files(tmp_path)
    pool = PromptPool(materialise_pool(tmp_path / "p1", files, "prompt", None))
    assert len(pool) == 300 + 100  # blanks and the two repeats dropped, and counted
    assert pool.dropped == {"empty": 2, "duplicate": 2}
    assert pool.texts(0, 2) == ["prompt number 0", "prompt number 1"] and pool.texts(300, 301) == ["json prompt 0"]
    assert pool.text(np.array([5, 0, 5])) == ["prompt number 5", "prompt number 0", "prompt number 5"]
    assert (pool.split == -1).all()
    again = PromptPool(materialise_pool(tmp_path / "p2", files, "prompt", None))
    assert again.digest == pool.digest
    with pytest.raises(UserError, match="other prompt sources"):  # same dir, other files: never reused
        materialise_pool(tmp_path / "p1", files[:1], "prompt", None)
    (tmp_path / "c.txt").write_text("one more\n")
    assert PromptPool(materialise_pool(tmp_path / "p3", files + [str(tmp_path / "c.txt")], "prompt", None)).digest != pool.digest


def test_pool_bad_input(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        materialise_pool(tmp_path / "p", [str(tmp_path / "missing.txt")], "prompt", None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    with pytest.raises(UserError, match="bad.jsonl:2 has no field 'prompt'"):
        materialise_pool(tmp_path / "p", [str(bad)], "prompt", None)
    bad.write_text('{"prompt": "ok"\n')
    with pytest.raises(UserError, match="bad.jsonl:1 is not valid JSON"):
        materialise_pool(tmp_path / "p", [str(bad)], "prompt", None)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("fine\n".encode() + "caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.txt:2 is not valid UTF-8 \(byte 4 of the line\): re-encode"):
        materialise_pool(tmp_path / "p", [str(bad)], "prompt", None)
    assert not (tmp_path / "p" / "prompts.h5").exists()  # nothing half-written left behind
    assert list((tmp_path / "p").iterdir()) == []  # not even the temporary file


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "aria_hpc.cli", *map(str, args)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=600)


def test_embed_shards_independently_then_completes(tmp_path, tiny_bert_dir):
    cfg = write_config(tmp_path, tiny_bert_dir, write_pool_files(tmp_path), shards=2)
    res = run_cli("embed", cfg, "--shard", "1/2", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "pool: 400 prompts (dropped 2 empty and 2 duplicate)" in res.stdout  # the user is told
    emb = tmp_path / "emb"
    assert (emb / "shard-00001-of-00002.h5").exists() and not (emb / "shard-00000-of-00002.h5").exists()
    with pytest.raises(UserError, match="lacks 1 of 2 embedding shards"):
        EmbeddingStore(emb, 2)
    res = run_cli("embed", cfg, "--quiet")
    assert res.returncode == 0, res.stderr
    assert "shard 0/2: 200 rows, built" in res.stdout and "shard 1/2: 200 rows, already complete" in res.stdout
    store = EmbeddingStore(emb, 2)
    pooled = store.pooled()
    assert pooled.shape == (400, 32)
    encoder = TextEncoder(tiny_bert_dir, max_length=12)
    ids = np.array([399, 3, 250, 3])
    direct = encoder.encode(store.pool.text(ids))
    np.testing.assert_allclose(pooled[ids], direct.pooled.astype(np.float16), rtol=1e-3, atol=1e-3)
    tokens, mask = store.tokens(ids)
    assert tokens.shape == (4, 12, 32) and tokens.dtype == np.float16
    np.testing.assert_array_equal(mask, direct.mask)


def test_embed_resumes_after_sigkill_and_matches_an_uninterrupted_build(tmp_path, tiny_bert_dir):
    files = write_pool_files(tmp_path, n=900)
    cfg = write_config(tmp_path, tiny_bert_dir, files, batch_size=8)
    proc = subprocess.Popen([sys.executable, "-m", "aria_hpc.cli", "embed", str(cfg), "--quiet"], cwd=ROOT,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress_lines = 0
    for line in proc.stdout:
        if line.startswith("shard 0:"):
            progress_lines += 1
            if progress_lines == 3:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    emb = tmp_path / "emb"
    assert not (emb / "shard-00000-of-00001.h5").exists()  # readers never see a partial shard
    assert (emb / "shard-00000-of-00001.h5.partial").exists()
    with pytest.raises(UserError, match="lacks 1 of 1"):
        EmbeddingStore(emb, 1)

    res = run_cli("embed", cfg, "--quiet")
    assert res.returncode == 0, res.stderr
    assert "resumed at row" in res.stdout, res.stdout[-500:]

    (tmp_path / "clean").mkdir()
    clean_cfg = write_config(tmp_path / "clean", tiny_bert_dir, files, batch_size=8)
    res = run_cli("embed", clean_cfg, "--quiet")
    assert res.returncode == 0, res.stderr
    with h5py.File(emb / "shard-00000-of-00001.h5") as a, h5py.File(tmp_path / "clean" / "emb" / "shard-00000-of-00001.h5") as b:
        for name in ("pooled", "tokens", "mask"):
            np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)


def test_regions_are_deterministic_and_report_split_composition(tmp_path, tiny_bert_dir):
    # The embedded world's pool (labelled by split), embedded with the tiny encoder.
    cfg = write_config(tmp_path, tiny_bert_dir, [], batch_size=512, k=12, store_tokens=False)
    assert run_cli("embed", cfg, "--quiet").returncode == 0
    first = run_cli("regions", cfg)
    assert first.returncode == 0, first.stderr
    assert "seen  under unseen" in first.stdout and "into 12 regions" in first.stdout
    # the held-out group's purity: its prompt count and share, and regions more than 50% / 90% of it
    assert "unseen: 960 prompts (8.3% of the pool); >50% unseen:" in first.stdout and ">90% unseen:" in first.stdout
    a = load_regions(tmp_path / "emb" / "regions.h5")
    second = run_cli("regions", cfg)
    assert second.returncode == 0, second.stderr
    b = load_regions(tmp_path / "emb" / "regions.h5")
    np.testing.assert_array_equal(a.region, b.region)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.sizes.sum() == 11520 and len(a.region) == 11520 and (a.sizes > 0).all()
    assert ((a.representatives[:, 0] >= 0) & (a.region[np.maximum(a.representatives[:, 0], 0)] == np.arange(12))).all()
    other = run_cli("regions", cfg, "seed=1")
    assert other.returncode == 0
    assert not np.array_equal(load_regions(tmp_path / "emb" / "regions.h5").region, a.region)


def test_embed_and_regions_bad_input(tmp_path, tiny_bert_dir, tiny_clip_dir, capsys):
    """Each mistake is one line on stderr and exit code 2 (in-process: the same code path as the CLI)."""
    from aria_hpc.cli import main

    cfg = write_config(tmp_path, tiny_bert_dir, write_pool_files(tmp_path, n=30), shards=2)

    def fails(*args, message):
        capsys.readouterr()
        assert main([*map(str, args)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err

    fails("regions", cfg, message="run `aria-hpc embed CONFIG` first")
    fails("embed", cfg, "--shard", "3/2", message="--shard 3/2")
    fails("embed", cfg, "--shard", "x", message="takes i/n")
    assert main(["embed", str(cfg), "--quiet"]) == 0
    shard = tmp_path / "emb" / "shard-00000-of-00002.h5"
    before = shard.read_bytes()
    fails("embed", cfg, f"text_encoder.dir={tiny_clip_dir}", message="another pool or encoder")
    assert shard.read_bytes() == before  # untouched
    fails("regions", cfg, "regions.k=500", message="larger than the pool")
    assert main(["embed", str(cfg), f"text_encoder.dir={tiny_clip_dir}", "--rebuild", "--quiet"]) == 0
    # And through a real subprocess: exit code 2, no traceback.
    res = run_cli("regions", cfg, "regions.k=500")
    assert res.returncode == 2 and "Traceback" not in res.stderr
