"""Stable Diffusion pipeline directories (what `DiffusionPipeline.save_pretrained` writes), read and written.

    PIPE/model_index.json   the pipeline class and its components
    PIPE/unet/ scheduler/ vae/ text_encoder/ tokenizer/ (+ text_encoder_2/ tokenizer_2/ for SDXL)

A teacher may be such a directory (`teacher.dir=PIPE`); then its text encoder(s), VAE, prediction type,
noise schedule and sample size all come from it (config.resolve_teacher). After training,
`export_pipeline` writes RUN_DIR/pipeline: the teacher's pipeline with the distilled UNet in place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from aria_hpc.errors import UserError
from aria_hpc.fsio import replaced_dir

INDEX = "model_index.json"
XL_CLASSES = ("StableDiffusionXLPipeline",)
SD3_CLASSES = ("StableDiffusion3Pipeline",)  # MMDiT + flow matching (models/flow.py)


@dataclass(frozen=True)
class PipelineLayout:
    path: Path
    class_name: str
    components: tuple[str, ...]  # every component model_index.json names (null entries left out)
    text_encoders: tuple[Path, ...]  # text_encoder[, text_encoder_2]
    tokenizers: tuple[Path, ...]
    vae: Path
    force_zeros_for_empty_prompt: bool  # SDXL: the null text is all zeros (diffusers' default True)
    family: str = "sd"  # sd (1.x / 2.x), sdxl, or sd3 (two CLIPs + an optional T5, an MMDiT transformer)

    @property
    def xl(self) -> bool:
        return self.family == "sdxl"

    @property
    def denoiser(self) -> str:
        """The component a student replaces: the UNet, or an SD3-class pipeline's transformer."""
        return "transformer" if self.family == "sd3" else "unet"

    @property
    def max_length(self) -> int:
        """The tokenizer's model_max_length (77 for every Stable Diffusion CLIP tokenizer)."""
        config = _json(self.tokenizers[0] / "tokenizer_config.json")
        return int(config.get("model_max_length", 77))

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 2 ** (VAE stages - 1), as the diffusers pipelines compute it."""
        return 2 ** (len(_json(self.vae / "config.json")["block_out_channels"]) - 1)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: the pipeline directory is incomplete (save it again with "
                        "`DiffusionPipeline.save_pretrained`)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read as JSON ({exc}): save the pipeline again") from None


def is_pipeline(path: str | Path | None) -> bool:
    return bool(path) and (Path(path) / INDEX).is_file()


def read_layout(path: str | Path) -> PipelineLayout:
    """The layout of a Stable Diffusion pipeline directory, checked for the parts distillation needs."""
    path = Path(path)
    index = _json(path / INDEX)
    components = tuple(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0])
    class_name = str(index.get("_class_name", ""))
    sd3 = class_name in SD3_CLASSES or "transformer" in components
    xl = not sd3 and (class_name in XL_CLASSES or "text_encoder_2" in components)
    if sd3 and class_name not in SD3_CLASSES:
        raise UserError(f"the pipeline {path} is a {class_name or 'transformer pipeline'}: flow-matching teachers "
                        f"are SD3-class ({', '.join(SD3_CLASSES)}) so far; Flux-class ones wait (README)")
    names = ("text_encoder", "text_encoder_2") if xl or sd3 else ("text_encoder",)
    if sd3 and "text_encoder_3" in components:  # T5 is optional, as diffusers allows
        names += ("text_encoder_3",)
    needed = ("transformer" if sd3 else "unet", "scheduler", "vae", *names,
              *(n.replace("text_encoder", "tokenizer") for n in names))
    missing = [n for n in needed if n not in components or not (path / n).is_dir()]
    if missing:
        raise UserError(f"the pipeline {path} ({class_name or 'no _class_name'}) lacks {', '.join(missing)}: "
                        f"a teacher pipeline needs {'transformer' if sd3 else 'unet'}, scheduler, vae, text "
                        "encoder(s) and tokenizer(s)")
    return PipelineLayout(
        path=path, class_name=class_name, components=components,
        text_encoders=tuple(path / n for n in names),
        tokenizers=tuple(path / n.replace("text_encoder", "tokenizer") for n in names),
        vae=path / "vae", force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", xl)),
        family="sd3" if sd3 else "sdxl" if xl else "sd")


def _link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link every file of a component (no extra space, and the export survives the teacher
    directory being moved or deleted); copy where the two are on different file systems."""
    how = "linked"
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dst / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, target)
        except OSError:
            shutil.copy2(file, target)
            how = "copied"
    return how


def export_pipeline(teacher_dir: Path, student_dir: Path, out_dir: Path, card: str) -> dict[str, str]:
    """RUN_DIR/pipeline: the teacher pipeline's components with the student in place of its UNet (or transformer).
    Written under a temporary name and renamed, so a reader never loads a half-written pipeline.
    Returns how each component got there (linked / copied)."""
    layout = read_layout(teacher_dir)
    how = {}
    with replaced_dir(out_dir) as tmp:
        shutil.copy2(layout.path / INDEX, tmp / INDEX)
        for name in layout.components:
            if (layout.path / name).is_dir():
                how[name] = _link_or_copy(student_dir if name == layout.denoiser else layout.path / name, tmp / name)
        (tmp / "README.md").write_text(card)
    return how
