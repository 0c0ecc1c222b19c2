"""The model card of an exported student pipeline (RUN_DIR/pipeline/README.md)."""

from __future__ import annotations

from pathlib import Path

from aria_hpc.config import Config
from aria_hpc.models.pipeline import read_layout


def model_card(cfg: Config, result: dict | None = None) -> str:
    """RUN_DIR/pipeline/README.md: where the student came from, and (after `aria-hpc eval`) its eval table."""
    flow = read_layout(cfg.teacher.dir).family == "sd3"
    denoiser, sampler = ("transformer", "flow Euler") if flow else ("UNet", "DDIM")
    lines = [
        "---", "library_name: diffusers", f"base_model: {Path(cfg.teacher.dir).name}",
        "tags: [stable-diffusion, distillation, aria_hpc]", "---", "",
        f"# {Path(cfg.teacher.dir).name}, distilled ({cfg.student.preset}, {cfg.train.policy})", "",
        f"A `{cfg.student.preset}` student {denoiser} distilled from the teacher pipeline `{cfg.teacher.dir}` by "
        f"aria_hpc with the `{cfg.train.policy}` policy for {cfg.train.steps} steps (seed {cfg.seed}); every other "
        "component is the teacher's, hard-linked (copied across file systems).", "",
        "```python", "from diffusers import DiffusionPipeline",
        'pipe = DiffusionPipeline.from_pretrained("PATH/TO/THIS/DIRECTORY")',
        f'image = pipe("a photo of a cat", guidance_scale={cfg.eval.guidance_scale}).images[0]', "```", ""]
    if result is None:
        lines.append("No evaluation yet: `aria-hpc eval RUN_DIR` writes its table here.")
        return "\n".join(lines) + "\n"

    def cell(entry: dict | None, key: str, digits: int = 4) -> str:
        value = (entry or {}).get(key)
        if value is None:
            return "-"
        return f"{value['mean']:.{digits}g} ± {value['se']:.2g}" if isinstance(value, dict) else f"{value:.{digits}g}"

    lines += [f"## Evaluation (`aria-hpc eval`, eval.seed {result['eval']['seed']}, guidance "
              f"{result['eval'].get('guidance_scale', 1.0)}, {result['eval']['sample_steps']} {sampler} steps)", "",
              "| group | output MSE vs teacher | student CLIP score | teacher CLIP score | FID student vs teacher |",
              "|---|---|---|---|---|"]
    for name, entry in result["groups"].items():
        lines.append(f"| {name} | {cell(entry, 'mse')} | {cell(entry, 'student_clip_score')} | "
                     f"{cell(entry, 'teacher_clip_score')} | {cell(entry, 'fid_student_vs_teacher')} |")
    return "\n".join(lines) + "\n"
