"""Teacher signatures (`aria-hpc signatures`, regions.features=teacher): deterministic, the same from
a job array as from one process, refused for another teacher, and regions built and described from them."""

import shutil

import h5py
import numpy as np
import pytest
import yaml
from test_embed_regions import write_pool_files

from aria_hpc.cli import main

SMALL = {"k": 4, "niter": 5, "features": "teacher", "signature_dim": 16, "signature_batch_size": 32,
         "probe_timesteps": [0.9, 0.5], "probe_noises": 1}


def write_config(tmp_path, tiny_world, name, *, shards=2, teacher=None, **regions):
    world, root = tiny_world
    base = yaml.safe_load(world.read_text())
    cfg = {"seed": 0, "pool": {"files": write_pool_files(tmp_path, 90)}, "text_encoder": base["text_encoder"],
           "embed": {"dir": str(tmp_path / name), "shards": shards},
           "regions": {"path": str(tmp_path / name / "regions.h5"), **SMALL, **regions},
           "teacher": {"dir": str(teacher or root / "teacher")}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def signatures(embed_dir, shards=2):
    out = []
    for i in range(shards):
        with h5py.File(embed_dir / "signatures" / f"shard-{i:05d}-of-{shards:05d}.h5", "r") as f:
            out.append(f["signature"][:])
    return np.concatenate(out)


def test_signatures_deterministic_array_equals_single_process_and_other_teacher_refused(tiny_world, tmp_path, capsys):
    one = write_config(tmp_path, tiny_world, "one")
    assert main(["embed", str(one), "--quiet"]) == 0
    shutil.copytree(tmp_path / "one", tmp_path / "arr")  # the same embeddings for the array path
    arr = write_config(tmp_path, tiny_world, "arr")
    assert main(["signatures", str(one)]) == 0
    first = signatures(tmp_path / "one")
    assert first.shape == (len(first), 16) and np.isfinite(first).all() and first.std(0).min() > 0
    assert main(["signatures", str(one), "--rebuild"]) == 0
    assert np.array_equal(signatures(tmp_path / "one"), first)  # deterministic for a seed
    for shard in ("1", "0"):  # two array tasks, in any order
        assert main(["signatures", str(arr), "--shard", shard]) == 0
    assert np.array_equal(signatures(tmp_path / "arr"), first)
    capsys.readouterr()
    assert main(["signatures", str(one)]) == 0 and "every shard already complete" in capsys.readouterr().out

    # a byte flipped in a shard: set aside and computed again, to the same bytes
    from test_faults import flip_dataset_bytes

    flip_dataset_bytes(tmp_path / "one" / "signatures" / "shard-00001-of-00002.h5", "signature")
    assert main(["signatures", str(one)]) == 0
    out = capsys.readouterr().out
    assert "teacher signature shard" in out and "is damaged" in out and "set aside as shard-00001-of-00002.h5.bad" in out
    assert np.array_equal(signatures(tmp_path / "one"), first)

    # another teacher: the same architecture, one weight changed
    import torch
    from diffusers import UNet2DConditionModel

    _, root = tiny_world
    other = tmp_path / "other_teacher"
    shutil.copytree(root / "teacher", other)
    unet = UNet2DConditionModel.from_pretrained(other / "unet")
    with torch.no_grad():
        unet.conv_out.bias.add_(0.1)
    unet.save_pretrained(other / "unet")
    changed = write_config(tmp_path, tiny_world, "one", teacher=other)
    assert main(["signatures", str(changed)]) == 2
    err = capsys.readouterr().err
    assert "computed for another teacher" in err and "teacher_digest" in err and "--rebuild" in err
    assert main(["regions", str(changed)]) == 2  # the regions stage builds signatures first: the same refusal
    assert np.array_equal(signatures(tmp_path / "one"), first)  # nothing written was touched


def test_teacher_regions_print_purity_and_the_sample_path_measures_its_map(tiny_world, tmp_path, capsys):
    world, _ = tiny_world
    base = yaml.safe_load(world.read_text())
    for features in ("text", "teacher"):  # the shapes pool of the tiny world: labelled, so purity is printed
        overrides = [f"regions.path={tmp_path / f'{features}.h5'}", f"regions.features={features}",
                     *(f"regions.{k}={v}" for k, v in SMALL.items() if k != "features"),
                     f"regions.k={base['regions']['k']}", f"embed.dir={tmp_path / 'emb'}"]
        if features == "text":
            shutil.copytree(base["embed"]["dir"], tmp_path / "emb", ignore=shutil.ignore_patterns("signatures", "*.h5.bad"))
        assert main(["regions", str(world), *overrides]) == 0
        out = capsys.readouterr().out
        assert f"k-means ({features} features)" in out and "unseen:" in out and "regions holding" in out
        with h5py.File(tmp_path / f"{features}.h5", "r") as f:
            assert f.attrs["features"] == features and (f["region"][:] >= 0).all()
            assert ("teacher_digest" in f.attrs) == (features == "teacher")

    sample = write_config(tmp_path, tiny_world, "sample", shards=1, signature_sample=60, signature_block="")  # x0_hat
    assert main(["embed", str(sample), "--quiet"]) == 0
    assert main(["regions", str(sample)]) == 0
    out = capsys.readouterr().out
    assert "teacher signatures of 60 sampled prompts" in out and "held-back sampled prompts land" in out
    with h5py.File(tmp_path / "sample" / "regions.h5", "r") as f:
        assert 0 <= f.attrs["map_agreement"] <= 1 and f.attrs["signature_sample"] == 60
        assert len(f["region"]) > 60 and f["sizes"][:].sum() == len(f["region"])
    assert not (tmp_path / "sample" / "signatures").exists()  # the sample path stores no per-prompt shards


@pytest.mark.parametrize("bad", ["regions.features=pixels", "regions.probe_timesteps=[1.5]", "regions.signature_dim=0"])
def test_signature_settings_are_checked(tiny_world, tmp_path, bad, capsys):
    path = write_config(tmp_path, tiny_world, "bad")
    assert main(["signatures", str(path), bad]) == 2
    assert bad.split("=")[0] in capsys.readouterr().err
