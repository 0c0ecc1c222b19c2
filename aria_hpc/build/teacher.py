"""`aria-hpc teacher`: train the shapes-world teacher (and its judge) and measure it.

The teacher sees ALL combinations of the world (it stands in for a large model trained on far more
data than the student gets); the quality check samples it with DDIM on combinations of every split
and reads the attributes back with the judge.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from aria_hpc.conditioning.encoders import TextEncoder
from aria_hpc.models.unet_input import UNetCond
from aria_hpc.config import Config
from aria_hpc.engine import lr_factor
from aria_hpc.errors import UserError
from aria_hpc.models.sampling import ddim_sample
from aria_hpc.models.teacher import build_scheduler, build_unet, load_teacher, save_teacher
from aria_hpc.worlds.judge import attribute_accuracy, load_judge, save_judge, train_judge
from aria_hpc.worlds.shapes import ALL_COMBINATIONS, SPLITS, TEMPLATES, ShapesWorld, render, shapes_world


def encoder_meta(cfg: Config, encoder: TextEncoder) -> dict:
    return {"dir": cfg.text_encoder.dir, "digest": encoder.digest, "max_length": encoder.max_length,
            "dim": encoder.dim, "pooling": encoder.kind}


def render_all_offsets(world: ShapesWorld) -> torch.Tensor:
    """(960, O, 3, H, W): every combination at every pixel offset within the jitter."""
    j = world.jitter_px
    offsets = [(dy, dx) for dy in range(-j, j + 1) for dx in range(-j, j + 1)]
    return torch.from_numpy(np.stack([np.stack([render(c, world.resolution, o) for o in offsets])
                                      for c in ALL_COMBINATIONS]))


def continue_from(path: str, unet, scheduler, log) -> dict:
    """Load a saved teacher's weights into `unet` (same architecture and noise schedule); its recipe."""
    prev = load_teacher(path)
    keys = ("block_out_channels", "layers_per_block", "norm_num_groups", "attention_head_dim",
            "cross_attention_dim", "sample_size")
    def norm(v):
        return list(v) if isinstance(v, (list, tuple)) else v

    differ = [k for k in keys if norm(prev.unet.config[k]) != norm(unet.config[k])]
    differ += [k for k in ("prediction_type", "beta_schedule", "num_train_timesteps")
               if prev.scheduler.config[k] != scheduler.config[k]]
    if differ:
        raise UserError(f"teacher_recipe.init_from={path} differs from this recipe in {', '.join(differ)}: "
                        "set teacher_recipe.* to the values of that teacher, or drop teacher_recipe.init_from")
    unet.load_state_dict(prev.unet.state_dict())
    log(f"continuing from the teacher in {path}")
    return prev.meta.get("recipe", {})


def train_teacher(cfg: Config, out_dir: Path, log=print) -> dict:
    tc = cfg.teacher_recipe
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 0x7EAC])
    world = shapes_world(cfg.world)
    timings = {}

    t0 = time.perf_counter()
    encoder = TextEncoder(cfg.text_encoder.dir, cfg.text_encoder.max_length)
    enc = encoder.encode(world.prompts + [""], cfg.text_encoder.batch_size)
    tokens = torch.from_numpy(enc.tokens).to(torch.float16)  # (N+1, L, D); last row: null text
    masks = torch.from_numpy(enc.mask)
    null = len(world.prompts)
    images = render_all_offsets(world)
    timings["encode_and_render_s"] = time.perf_counter() - t0
    log(f"encoded {len(world.prompts)} prompts and rendered {images.shape[0] * images.shape[1]} images "
        f"in {timings['encode_and_render_s']:.1f}s")

    unet = build_unet(tc.block_out_channels, layers_per_block=tc.layers_per_block,
                      norm_num_groups=tc.norm_num_groups, attention_head_dim=tc.attention_head_dim,
                      resolution=world.resolution, cross_attention_dim=encoder.dim)
    scheduler = build_scheduler(tc.num_train_timesteps, tc.beta_schedule, tc.prediction_type)
    init_recipe = continue_from(tc.init_from, unet, scheduler, log) if tc.init_from else None
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=tc.lr, weight_decay=0.01)
    log(f"teacher: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters")

    t0 = time.perf_counter()
    n_templates = len(TEMPLATES)
    for step in range(tc.steps):
        combo = torch.from_numpy(rng.integers(0, len(ALL_COMBINATIONS), tc.batch_size))
        prompt = combo * n_templates + torch.from_numpy(rng.integers(0, n_templates, tc.batch_size))
        prompt[torch.from_numpy(rng.random(tc.batch_size) < tc.null_text_prob)] = null
        x0 = images[combo, torch.from_numpy(rng.integers(0, images.shape[1], tc.batch_size))]
        noise = torch.randn_like(x0)
        t = torch.randint(0, tc.num_train_timesteps, (tc.batch_size,))
        x_t = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t) if tc.prediction_type == "v_prediction" else noise
        pred = unet(x_t, t, encoder_hidden_states=tokens[prompt].float(), encoder_attention_mask=masks[prompt]).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        for group in opt.param_groups:
            group["lr"] = tc.lr * lr_factor(step, tc.warmup_steps, tc.steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), tc.grad_clip)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - tc.ema_decay)
        if (step + 1) % tc.log_every == 0 or step + 1 == tc.steps:
            rate = (step + 1) / (time.perf_counter() - t0)
            log(f"teacher step {step + 1}/{tc.steps} loss {loss.item():.4f} ({rate:.2f} steps/s)")
    timings["teacher_train_s"] = time.perf_counter() - t0

    meta = {"world": "shapes", "resolution": world.resolution, "text_encoder": encoder_meta(cfg, encoder),
            "recipe": {"seed": cfg.seed, "teacher_recipe": asdict(tc), "world": asdict(cfg.world),
                       "init_from_recipe": init_recipe}}
    save_teacher(out_dir / "teacher", ema, scheduler, meta)

    t0 = time.perf_counter()
    if cfg.judge.dir:
        judge = load_judge(cfg.judge.dir)
    else:
        jc = cfg.judge
        judge = train_judge(world, steps=jc.steps, batch_size=jc.batch_size, lr=jc.lr, noise_max=jc.noise_max,
                            gain=jc.gain, seed=cfg.seed, log=log)
    save_judge(judge, out_dir / "judge")
    timings["judge_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = evaluate_teacher(ema, scheduler, judge, world, tokens, masks, steps=tc.sample_steps,
                              per_split=tc.eval_per_split, seed=cfg.seed)
    timings["evaluate_s"] = time.perf_counter() - t0
    report["timings"] = timings
    (out_dir / "teacher_eval.json").write_text(json.dumps(report, indent=2))
    return report


def eval_combinations(world: ShapesWorld, per_split: int, seed: int) -> dict[str, np.ndarray]:
    """A fixed, seeded choice of combinations per split (all of a split if it has fewer)."""
    rng = np.random.default_rng([seed, 0xE7A1])
    out = {}
    for index, split in enumerate(SPLITS):
        ids = np.flatnonzero(world.combination_splits == index)
        out[split] = np.sort(rng.choice(ids, size=min(per_split, len(ids)), replace=False))
    return out


def evaluate_teacher(unet, scheduler, judge, world: ShapesWorld, tokens: torch.Tensor, masks: torch.Tensor, *,
                     steps: int, per_split: int, seed: int) -> dict:
    """Judge accuracy of the teacher's own samples (one random paraphrase per combination)."""
    rng = np.random.default_rng([seed, 0x5A3B])
    report = {"sample_steps": steps, "guidance": 1.0, "splits": {}}
    for split, combos in eval_combinations(world, per_split, seed).items():
        prompts = combos * len(TEMPLATES) + rng.integers(0, len(TEMPLATES), len(combos))
        samples = ddim_sample(unet, scheduler, UNetCond(tokens[prompts].float(), masks[prompts]), steps=steps,
                              seed=seed)
        labels = np.array([ALL_COMBINATIONS[c].labels() for c in combos])
        report["splits"][split] = attribute_accuracy(judge.predict(samples), labels) | {"n": int(len(combos))}
    return report


def report_lines(report: dict) -> list[str]:
    """The teacher's samples read back by the judge, per split (what `aria-hpc teacher` prints)."""
    from aria_hpc.worlds.shapes import SPLITS

    attrs = ("shape", "colour", "position", "size", "background", "mean", "all")
    lines = [f"teacher samples read back by the judge (DDIM {report['sample_steps']} steps, guidance 1.0)",
             f"{'split':>7} {'n':>4} " + " ".join(f"{a:>10}" for a in attrs)]
    for split in SPLITS:
        r = report["splits"][split]
        lines.append(f"{split:>7} {r['n']:>4} " + " ".join(f"{r[a]:>10.3f}" for a in attrs))
    return lines
