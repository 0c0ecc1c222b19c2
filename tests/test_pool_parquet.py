"""Prompt pools from Parquet (LAION-style metadata) and globs, and what a malformed pipeline or
Parquet file says (one line, exit 2)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aria_hpc.conditioning import pool as pool_mod
from aria_hpc.conditioning.pool import PromptPool, materialise_pool
from aria_hpc.errors import UserError


def write_parquet(path, captions, **extra):
    pq.write_table(pa.table({"caption": captions, **extra}), path)
    return path


def test_parquet_pool_streams_in_row_batches_in_glob_order(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_mod, "PARQUET_BATCH", 3)  # several batches per file
    d = tmp_path / "laion"
    d.mkdir()
    write_parquet(d / "part-00001.parquet", ["b1", "b2", None, "a1", "  "], url=["u"] * 5)
    write_parquet(d / "part-00000.parquet", ["a1", "a2", "a3", "a4"], url=["u"] * 4)
    (d / "extra.txt").write_text("t1\n")
    pool = PromptPool(materialise_pool(tmp_path / "emb", [str(d / "part-*.parquet"), str(d / "extra.txt")],
                                       "prompt", None, "caption"))
    # part-00000 before part-00001 (sorted), duplicates and blanks dropped and counted
    assert pool.texts() == ["a1", "a2", "a3", "a4", "b1", "b2", "t1"]
    assert pool.dropped == {"empty": 2, "duplicate": 1}
    # the digest covers the expanded list: the same prompts from differently named files differ
    other = tmp_path / "other"
    other.mkdir()
    write_parquet(other / "x.parquet", ["a1", "a2", "a3", "a4", "b1", "b2"])
    (other / "y.txt").write_text("t1\n")
    again = PromptPool(materialise_pool(tmp_path / "emb2", [str(other / "x.parquet"), str(other / "y.txt")],
                                        "prompt", None, "caption"))
    assert again.texts() == pool.texts() and again.digest != pool.digest


def test_parquet_faults_are_one_line(tmp_path):
    good = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["p", "q"]}), good)
    with pytest.raises(UserError, match=r"has no column 'caption' \(it has text\): set pool.column"):
        materialise_pool(tmp_path / "e1", [str(tmp_path / "a.parquet")], "prompt", None, "caption")
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(UserError, match="is not a readable Parquet file"):
        materialise_pool(tmp_path / "e2", [str(bad)], "prompt", None, "text")
    with pytest.raises(UserError, match="matches no file"):
        materialise_pool(tmp_path / "e3", [str(tmp_path / "none-*.parquet")], "prompt", None, "caption")
    for name in ("e1", "e2", "e3"):  # nothing half-written
        assert not (tmp_path / name / "prompts.h5").exists()


def test_an_incomplete_pipeline_directory_is_one_line(tmp_path, aria_cli):
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "unet": ["diffusers", "UNet2DConditionModel"]}))
    res = aria_cli("embed", "configs/debug.yaml", f"teacher.dir={pipe}", f"embed.dir={tmp_path / 'emb'}")
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "lacks scheduler, vae, text_encoder, tokenizer" in lines[0], res.stderr
    assert not (tmp_path / "emb").exists()
