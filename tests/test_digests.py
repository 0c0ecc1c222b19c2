"""Checkpoint digests are computed while writing (aria_hpc/train/digests.py) and equal a re-read's."""

import pytest
import torch


@pytest.mark.parametrize("zipfile", [True, False])
def test_the_streamed_digest_is_the_files_and_the_file_is_torchs(tmp_path, zipfile):
    from aria_hpc.train.digests import file_digest, save_hashed, take

    state = {"big": torch.arange(300_000, dtype=torch.float32), "small": torch.ones(3), "step": 7}
    path = tmp_path / "tag" / "state.pt"
    path.parent.mkdir()
    digest = save_hashed(state, path, _use_new_zipfile_serialization=zipfile)
    assert digest == file_digest(path)
    if not zipfile:  # the legacy format: torch.save's bytes (a zip written to a file object names its
        # records "archive/" instead of the file's stem, which torch.load does not care about)
        torch.save(state, tmp_path / "plain.pt", _use_new_zipfile_serialization=zipfile)
        assert (tmp_path / "plain.pt").read_bytes() == path.read_bytes()
    assert torch.serialization.get_crc32_options()  # torch.save elsewhere still writes CRC-32
    loaded = torch.load(path, weights_only=False)
    assert torch.equal(loaded["big"], state["big"]) and loaded["step"] == 7
    assert take(tmp_path / "tag") == {"state.pt": digest} and take(tmp_path / "tag") == {}
