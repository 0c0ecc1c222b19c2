"""Every HDF5 file aria_hpc writes explains itself to a person with plain h5py (or `h5dump -H`)."""

import h5py
import pytest


def walk_datasets(f):
    out = {}
    f.visititems(lambda name, obj: out.setdefault(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.slow
def test_every_written_file_describes_its_datasets(tiny_world, tiny_bank, tmp_path):
    path, root = tiny_world
    bank_dir = tiny_bank
    files = sorted((root / "emb").rglob("*.h5")) + sorted(bank_dir.glob("*.h5"))
    kinds = {}
    for p in files:
        with h5py.File(p, "r", locking=False) as f:  # plain h5py: no aria_hpc code reads these
            kind = f.attrs["aria_hpc_file"]
            kinds.setdefault(kind, []).append(p.name)
            assert len(f.attrs["description"]) > 40, p
            for name, ds in walk_datasets(f).items():
                assert len(ds.attrs.get("description", "")) > 10, (p, name)
            if kind == "bank_shard":
                assert f["output"].attrs["prediction_type"] == "v_prediction"  # the tiny teacher's
                assert "-1 = the null (empty) text" in f["cond"].attrs["description"]
                assert "x0.h5" in f["image"].attrs["description"]
                assert "x_t is not stored" in f.attrs["description"] and "seed" in f.attrs["description"]
                assert f["features/mid_block"].attrs["description"]
                assert "timesteps" in f["t"].attrs["units"]
            if kind == "prompts":
                assert "2 = unseen" in f["split"].attrs["description"]
    assert set(kinds) == {"prompts", "embeddings", "regions", "x0", "bank_shard"}, kinds
