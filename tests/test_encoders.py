"""Text encoders load from local directories through transformers and give pooled + token outputs."""

import numpy as np
import pytest

from aria_hpc.conditioning.encoders import TextEncoder
from aria_hpc.errors import UserError
from aria_hpc.fsio import directory_digest

PROMPTS = ["a small red circle in the centre on a black background", "big blue ring, grey backdrop", ""]


def test_default_minilm_from_the_package():
    enc = TextEncoder(max_length=24)
    out = enc.encode(PROMPTS)
    assert enc.dim == 384 and enc.kind == "mean"
    assert out.pooled.shape == (3, 384) and out.tokens.shape == (3, 24, 384) and out.mask.shape == (3, 24)
    np.testing.assert_allclose(np.linalg.norm(out.pooled, axis=1), 1.0, rtol=1e-5)
    assert out.mask[0].sum() > out.mask[2].sum() == 2  # "" is [CLS] [SEP]
    similar = out.pooled[0] @ enc.encode(["a small red circle in the middle, black background"]).pooled[0]
    assert similar > out.pooled[0] @ out.pooled[1]  # a real sentence encoder, not noise


def test_tiny_bert_directory(tiny_bert_dir):
    enc = TextEncoder(tiny_bert_dir, max_length=16)
    out = enc.encode(PROMPTS, batch_size=2)
    assert out.pooled.shape == (3, 32) and out.tokens.shape == (3, 16, 32)
    np.testing.assert_array_equal(out.pooled, enc.encode(PROMPTS, batch_size=3).pooled)  # batching is exact
    assert len(enc.digest) == 64 and enc.digest == directory_digest(tiny_bert_dir)


def test_clip_text_encoder_path(tiny_clip_dir):
    enc = TextEncoder(tiny_clip_dir, max_length=77)
    out = enc.encode(PROMPTS)
    assert enc.kind == "clip"
    assert out.pooled.shape == (3, 32) and out.tokens.shape == (3, 77, 32)
    assert not np.allclose(out.pooled[0], out.pooled[1])


def test_missing_encoder_directory(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        TextEncoder(tmp_path)
