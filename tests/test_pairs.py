"""The paired set as a stage (`aria-hpc pairs`, aria_hpc/pairs.py) and README's shortest real path,
run as written on a tiny SD-1.x pipeline built with plain diffusers and a caption file."""

import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml
from conftest import ROOT, cli_env
from sd_configs import PIXELS, build_tiny_pipeline

from aria_hpc.eval import sd_metrics

pytestmark = pytest.mark.slow

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
CAPTIONS = [f"a photo of a {c} {s}" for c in COLOURS for s in SHAPES]

# README's block as written, but sized for a CPU test: these YAML lines of the block are replaced
SIZES = {
    "pairs: {count: 2000}": "pairs: {count: 12, steps: 2, batch_size: 4, shards: 2}",
    "bank: {dir: runs/sd/bank}": "bank: {dir: runs/sd/bank, entries: 64, shards: 2, batch_size: 32, min_per_region: 2}\n"
                                 "regions: {k: 4, niter: 5}\n"
                                 "train: {steps: 4, micro_batch_per_gpu: 8, log_every: 1, checkpoint_every: 2}\n"
                                 "aria: {warmup_steps: 1, sync_every: 2}\n"
                                 "eval: {per_region: 2, per_group: 6, per_split_group: 8, sample_steps: 2, grid: 4}\n"
                                 "launch: {cpus_per_task: 1}",
}


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- real-path -->\n```bash\n(.*?)```", text, re.S)
    assert match, "README.md has no <!-- real-path --> block"
    return match.group(1)


def test_readme_real_path_runs_from_a_pipeline_and_a_caption_file(tmp_path):
    pipe = build_tiny_pipeline(tmp_path / "sd15", "sd15")
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    block = readme_block()
    for line, tiny in SIZES.items():
        assert line in block, line
        block = block.replace(line, tiny)
    block = block.replace("/models/stable-diffusion-v1-5", str(pipe)).replace("/data/captions.txt",
                                                                              str(tmp_path / "captions.txt"))
    env = {**cli_env(), "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "bike.png").is_file()
    with h5py.File(tmp_path / "runs" / "pairs" / "shard-00000-of-00002.h5", "r") as f:
        assert f["latents"].dtype == np.float16 and f["latents"].shape[1:] == (4, PIXELS // 2, PIXELS // 2)
        assert f.attrs["data_digest"]
    with h5py.File(tmp_path / "runs" / "sd" / "bank" / "x0.h5", "r") as f:  # the bank's x0 is the pairs' latents
        assert f["x0"].shape == (12, 4, PIXELS // 2, PIXELS // 2)
    result = json.loads((tmp_path / "runs" / "sd" / "aria" / "eval.json").read_text())
    if sd_metrics.shipped_inception_path() is not None:  # FID offline, from the fid extra's network
        assert np.isfinite(result["groups"]["all"]["fid_student_vs_teacher"]["mean"])


@pytest.fixture(scope="module")
def sd_world(tmp_path_factory):
    """A tiny pipeline, a caption pool embedded, and a config for the pairs stage."""
    root = tmp_path_factory.mktemp("pairs")
    pipe = build_tiny_pipeline(root / "sd15", "sd15")
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    cfg = {"seed": 0, "teacher": {"dir": str(pipe)}, "pool": {"files": [str(root / "captions.txt")]},
           "embed": {"dir": str(root / "emb")}, "pairs": {"dir": str(root / "pairs"), "count": 8, "steps": 2,
                                                            "batch_size": 4},
           "launch": {"folder": str(root / "submitit"), "cpus_per_task": 1}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from aria_hpc.cli import main

    assert main(["embed", str(path), "--quiet"]) == 0
    return root, path


def make(path, *extra):
    from aria_hpc import pairs
    from aria_hpc.config import load_config

    cfg = load_config(path, list(extra))
    pairs.build_pairs(cfg)
    return pairs.PairedSet(cfg), cfg


def test_a_prompts_latent_does_not_depend_on_its_batch_or_shard(sd_world):
    root, path = sd_world
    one, _ = make(path)
    two, _ = make(path, f"pairs.dir={root / 'pairs2'}", "pairs.shards=2", "pairs.batch_size=3")
    assert np.array_equal(one.prompt_ids, two.prompt_ids) and len(set(one.prompt_ids)) == 8
    a = np.concatenate([r for _, r in one.batches(5)]).astype(np.float32)
    b = np.concatenate([r for _, r in two.batches(5)]).astype(np.float32)
    np.testing.assert_allclose(a, b, atol=2e-3)  # fp16 storage; batch shape may change the last bits
    assert np.isfinite(a).all() and a.std() > 0


def test_images_source_encodes_captioned_images_and_refuses_unknown_captions(sd_world, tmp_path, aria_cli):
    from PIL import Image

    root, path = sd_world
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, caption in enumerate(CAPTIONS[:5]):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    pset, cfg = make(path, f"pairs.images={folder}", f"pairs.dir={tmp_path / 'p'}")
    assert len(pset) == 5 and pset.shape == (4, PIXELS // 2, PIXELS // 2)
    assert [CAPTIONS[i] for i in pset.prompt_ids] == CAPTIONS[:5]
    (folder / "4.txt").write_text("a caption nobody embedded")
    res = aria_cli("pairs", str(path), f"pairs.images={folder}", f"pairs.dir={tmp_path / 'q'}")
    assert res.returncode == 2 and "not prompts of the pool" in res.stderr and "Traceback" not in res.stderr


def test_a_killed_pairs_build_resumes_to_the_same_set_and_a_damaged_shard_is_named(sd_world, tmp_path, aria_cli):
    import signal
    import time

    root, path = sd_world
    # the uninterrupted reference in a process like the killed one (torch's thread count changes the bits)
    assert aria_cli("pairs", str(path), f"pairs.dir={tmp_path / 'ref'}", "pairs.batch_size=2").returncode == 0
    args = [sys.executable, "-m", "aria_hpc.cli", "pairs", str(path), f"pairs.dir={tmp_path / 'p'}", "pairs.batch_size=2",
            "--quiet"]
    proc = subprocess.Popen(args, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stdout:  # killed after its first batch is on disk
        if "rows of the shard written" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert not (tmp_path / "p" / "shard-00000-of-00001.h5").exists()  # a reader never sees a partial shard
    again = aria_cli("pairs", str(path), f"pairs.dir={tmp_path / 'p'}", "pairs.batch_size=2")
    assert again.returncode == 0, again.stderr[-2000:]
    with h5py.File(tmp_path / "p" / "shard-00000-of-00001.h5", "r") as f, \
            h5py.File(tmp_path / "ref" / "shard-00000-of-00001.h5", "r") as g:
        assert f.attrs["data_digest"] == g.attrs["data_digest"]
    # one byte of the latents flipped: the next reader names the shard and the command that rebuilds it
    from test_faults import flip_dataset_bytes

    from aria_hpc import pairs
    from aria_hpc.config import load_config
    from aria_hpc.errors import UserError

    flip_dataset_bytes(tmp_path / "p" / "shard-00000-of-00001.h5", "latents")
    time.sleep(0.01)
    with pytest.raises(UserError, match=r"paired-set shard .*shard-00000-of-00001.h5 is damaged.*aria-hpc pairs CONFIG"):
        pairs.PairedSet(load_config(path, [f"pairs.dir={tmp_path / 'p'}"]))


@pytest.mark.parametrize("chunks", [None, (7, 4, 8, 8)])
def test_x0_rows_read_by_row_equal_the_stored_rows_in_the_order_asked(chunks, tmp_path):
    """X0Rows (what training indexes when x0 is large): preads at row offsets for a contiguous dataset,
    h5py for a chunked one; repeated and unsorted ids come back in the order asked, as float32."""
    from aria_hpc.bank.paired import X0Rows

    rows = np.random.default_rng(0).standard_normal((100, 4, 8, 8)).astype(np.float16)
    with h5py.File(tmp_path / "x0.h5", "w") as f:
        f.create_dataset("x0", data=rows, chunks=chunks)
    x0 = X0Rows(tmp_path / "x0.h5")
    assert (x0.offset is None) == (chunks is not None) and len(x0) == 100
    ids = np.array([[5, 3], [5, 99], [0, 42]])
    got = x0[ids]
    assert got.dtype == np.float32 and got.shape == (3, 2, 4, 8, 8)
    assert np.array_equal(got, rows[ids].astype(np.float32))
