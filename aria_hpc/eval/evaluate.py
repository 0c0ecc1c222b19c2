"""`aria-hpc eval RUN_DIR`: the exported student against its teacher, per region and per split group.

The evaluation set is fixed by `eval.seed` alone (never the training seed), so every run of a sweep
is measured on the same held-out tuples and prompts:

- output MSE: per region, `eval.per_region` (prompt, paired image, t, noise) tuples with t stratified
  over [0, T) and noise seeds from a stream the bank never uses; per-sample mean squared difference of
  student and teacher predictions, averaged per region, per split group and per timestep bin;
- samples: `eval.per_group` prompts per split group (distinct combinations, repeated in turn when a
  group has fewer), DDIM from the same seeds
  for teacher and student; the judge's attribute accuracy of both against the prompt, and the
  Frechet distance between teacher and student samples in the judge's feature space.

Writes RUN_DIR/eval.json (atomically) and RUN_DIR/eval_samples.npz (image grids for the report).
Teacher samples depend only on the teacher and the evaluation set, so they are cached beside the bank.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from aria_hpc.config import EVAL_OVERRIDES, Config, load_config, matches
from aria_hpc.errors import UserError
from aria_hpc.eval.metrics import frechet_with_se, grouped, mean_se, stratified_timesteps
from aria_hpc.fsio import atomic_path, atomic_write_text, require_writable
from aria_hpc.splits import SPLIT_GROUPS

EVAL_STREAM = 0xE7A1


def group_of(split: np.ndarray) -> np.ndarray:
    """Index into SPLIT_GROUPS of each prompt's split code."""
    split = np.asarray(split, dtype=np.int64)
    return np.where(split < 0, 3, split)


def heldout_tuples(cfg: Config, index, num_images: int, num_timesteps: int) -> dict[str, np.ndarray]:
    """The fixed held-out set: per non-empty region, per_region tuples (prompt, image, t, noise seed)."""
    from aria_hpc.bank.plan import entry_seeds
    from aria_hpc.regions.rng import derive_key

    e = cfg.eval
    rng = np.random.default_rng([e.seed, EVAL_STREAM])
    regions = np.repeat(np.flatnonzero(index.sizes > 0), e.per_region)
    n = len(regions)
    return {"region": regions, "cond": index.pick(regions, rng.random(n)),
            "image": rng.integers(0, num_images, n), "t": stratified_timesteps(rng, n, num_timesteps),
            # 63-bit seeds from a key the bank's (seed, 0x5EED) stream never produces
            "seed": entry_seeds(derive_key(e.seed, EVAL_STREAM) >> 2, np.arange(n))}


GROUP_SEED_OFFSET = 1 << 40  # the group set's noise seeds follow the region set's, never the same


def group_tuples(cfg: Config, prompt_groups: np.ndarray, region_of_prompt: np.ndarray, num_images: int,
                 num_timesteps: int) -> dict[str, np.ndarray]:
    """The fixed held-out set of the split groups: eval.per_split_group tuples per group present in
    the pool, prompts uniform over the group (so a group diluted in the pool still gets its quota),
    t stratified over [0, T). What the group MSE of `aria-hpc eval` and the training curves measure."""
    from aria_hpc.bank.plan import entry_seeds
    from aria_hpc.regions.rng import derive_key

    e = cfg.eval
    rng = np.random.default_rng([e.seed, EVAL_STREAM, 2])
    parts = []
    for g in range(len(SPLIT_GROUPS)):
        ids = np.flatnonzero(prompt_groups == g)
        if len(ids):
            n = e.per_split_group
            parts.append({"group": np.full(n, g), "cond": ids[rng.integers(0, len(ids), n)],
                          "image": rng.integers(0, num_images, n), "t": stratified_timesteps(rng, n, num_timesteps)})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["region"] = np.asarray(region_of_prompt)[out["cond"]]
    out["seed"] = entry_seeds(derive_key(e.seed, EVAL_STREAM) >> 2, GROUP_SEED_OFFSET + np.arange(len(out["cond"])))
    return out


class HeldoutCurve:
    """Output MSE per split group on the group held-out set, no sampling: the teacher's predictions
    are computed once; each call runs the student over the set (what train.curve_every logs)."""

    def __init__(self, cfg: Config, ctx, device=None) -> None:
        from aria_hpc.bank.noise import noised_inputs

        tup = group_tuples(cfg, group_of(ctx.store.pool.split), ctx.conditioning.region_of_prompt, len(ctx.x0),
                           ctx.teacher.num_timesteps)
        self.group, self.t = tup["group"], tup["t"]
        self.batch_size = cfg.eval.batch_size
        self.device = device or torch.device("cpu")
        self.x_t = noised_inputs(ctx.teacher.noise_schedule, torch.from_numpy(ctx.x0[tup["image"]]).float(), tup["t"],
                                 tup["seed"])
        self.cond = ctx.cond(tup["cond"])
        self.teacher = predictions(ctx.teacher.unet, self.x_t, self.t, self.cond, self.batch_size)

    @torch.no_grad()
    def __call__(self, student_fn) -> dict[str, float]:
        """student_fn(x_t, t, cond) -> predictions; the mean MSE of each group present."""
        mse = self.per_sample(student_fn)
        return {SPLIT_GROUPS[g]: float(mse[self.group == g].mean()) for g in np.unique(self.group)}

    @torch.no_grad()
    def per_sample(self, student_fn) -> np.ndarray:
        """(n,) MSE of the student's predictions against the teacher's on every tuple of the set."""
        out = []
        for s in range(0, len(self.t), self.batch_size):
            sl = slice(s, s + self.batch_size)
            t = torch.from_numpy(self.t[sl].astype(np.int64)).to(self.device)
            out.append(student_fn(self.x_t[sl].to(self.device), t, self.cond[sl].to(self.device)).float().cpu())
        return (torch.cat(out) - self.teacher).pow(2).flatten(1).mean(1).double().numpy()


def sample_prompts(cfg: Config, pool) -> dict[str, np.ndarray]:
    """Per split group, per_group prompt ids (fixed by eval.seed): distinct combinations first; a
    group with fewer combinations than per_group goes round them again (each sample draws its own
    noise, so a repeat is a new sample of the same combination). Groups with at least per_group
    combinations get exactly what they got before repeats existed."""
    rng = np.random.default_rng([cfg.eval.seed, EVAL_STREAM, 1])
    groups = group_of(pool.split)
    out = {}
    for g, name in enumerate(SPLIT_GROUPS):
        ids = rng.permutation(np.flatnonzero(groups == g))
        if len(ids) == 0:
            continue
        combos = pool.combination[ids]
        if (combos >= 0).all():  # one prompt per combination, so no combination counts twice
            _, first = np.unique(combos, return_index=True)
            ids = ids[np.sort(first)]
        first = np.sort(ids[:cfg.eval.per_group])
        repeats = -(-cfg.eval.per_group // len(first))
        out[name] = np.tile(first, repeats)[:cfg.eval.per_group]
    return out


@torch.no_grad()
def predictions(unet, x_t: torch.Tensor, t: np.ndarray, cond, batch_size: int) -> torch.Tensor:
    out = []
    for s in range(0, len(t), batch_size):
        sl = slice(s, s + batch_size)
        out.append(unet(x_t[sl], torch.from_numpy(t[sl].astype(np.int64)), **cond[sl].kwargs()).sample.float())
    return torch.cat(out)


def load_student(run_dir: Path):
    """The exported student: a UNet2DConditionModel, or a flow transformer (its config's _class_name);
    `on_teacher` then puts a flow student behind the teacher's FlowDenoiser."""
    import diffusers

    from aria_hpc.models.students import TRANSFORMERS

    student_dir = run_dir / "student"
    if not (student_dir / "config.json").is_file():
        raise UserError(f"{run_dir} has no exported student ({student_dir}): let `aria-hpc train` finish "
                        "(train.export=true; running the same train command again resumes it)")
    try:
        name = json.loads((student_dir / "config.json").read_text()).get("_class_name", "UNet2DConditionModel")
        cls = getattr(diffusers, name if name in TRANSFORMERS else "UNet2DConditionModel")
        student = cls.from_pretrained(student_dir, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:  # a truncated or missing weights file
        cause = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"the student in {student_dir} cannot be loaded ({cause}): run the same `aria-hpc train` "
                        "command again; it resumes from the last checkpoint and exports the student anew") from None
    return student.eval().requires_grad_(False)


def on_teacher(student, teacher):
    """The student as the teacher's stages call it: a flow transformer behind the teacher's FlowDenoiser."""
    return student if teacher.time is None else teacher.unet.around(student)


def load_run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml): pass a run.dir written by "
                        "`aria-hpc train`")
    bad = [o for o in overrides if not matches(o.partition("=")[0].strip(), EVAL_OVERRIDES)]
    if bad:
        raise UserError(f"eval overrides may only change eval.* and judge.* (got {', '.join(bad)}): the run's "
                        "own settings come from its config.yaml")
    return load_config(path, overrides, stored=True)


def sample(cfg: Config, ctx, unet, prompts: np.ndarray) -> torch.Tensor:
    """Samples of a denoiser for prompt ids, the same noise for every one (eval.seed), with
    classifier-free guidance at eval.guidance_scale: DDIM for a UNet, the pipeline's own flow
    scheduler for a flow transformer."""
    from aria_hpc.models.sampling import ddim_sample

    e = cfg.eval
    null = ctx.null_cond() if e.guidance_scale != 1.0 else None
    if ctx.teacher.time is not None:
        from aria_hpc.models.flow import flow_samples

        return flow_samples(unet, ctx.teacher.scheduler, ctx.cond(prompts), steps=e.sample_steps, seed=e.seed,
                            guidance=e.guidance_scale, null=null, batch_size=e.batch_size)
    return ddim_sample(unet, ctx.teacher.scheduler, ctx.cond(prompts), steps=e.sample_steps, seed=e.seed,
                       guidance=e.guidance_scale, null=null, batch_size=e.batch_size, pixels=not cfg.bank.vae_dir)


def _teacher_samples(cfg: Config, ctx, prompts: np.ndarray, log) -> torch.Tensor:
    """Teacher DDIM samples for the prompts, cached in BANK_DIR/eval_cache (same for every run)."""
    key = [ctx.fingerprint["teacher_digest"], ctx.fingerprint["prompt_pool_digest"], prompts.tolist(),
           cfg.eval.sample_steps, cfg.eval.seed]
    if cfg.eval.guidance_scale != 1.0:  # (unguided keys are as before guidance existed: old caches still hit)
        key.append(cfg.eval.guidance_scale)
    key = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]
    cache = Path(cfg.bank.dir) / "eval_cache" / f"teacher-{key}.npy" if cfg.bank.dir else None
    if cache is not None and cache.is_file():
        return torch.from_numpy(np.load(cache))
    images = sample(cfg, ctx, ctx.teacher.unet, prompts)
    if cache is not None:  # a cache only: a read-only bank is sampled again next time
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache, ".npy") as tmp:
                np.save(tmp, images.numpy())
        except OSError:
            pass
        log(f"cached teacher samples in {cache}")
    return images


def evaluate_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), log=print) -> dict:
    from aria_hpc.bank.noise import noised_inputs
    from aria_hpc.conditioning.kmeans import composition
    from aria_hpc.context import load_context
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    require_writable(run_dir, "the run directory")  # eval.json goes there
    student = load_student(run_dir)
    timings = {}
    t0 = time.perf_counter()
    ctx = load_context(cfg, need_bank_dir=False)
    teacher, student = ctx.teacher.unet, on_teacher(student, ctx.teacher)
    num_timesteps = ctx.teacher.num_timesteps
    pool, index = ctx.store.pool, ctx.conditioning.index
    e = cfg.eval
    timings["load_s"] = time.perf_counter() - t0

    # ---- output MSE on the held-out tuples ----------------------------------------------------
    t0 = time.perf_counter()
    tup = heldout_tuples(cfg, index, len(ctx.x0), num_timesteps)
    x_t = noised_inputs(ctx.teacher.noise_schedule, torch.from_numpy(ctx.x0[tup["image"]]).float(), tup["t"],
                        tup["seed"])
    cond = ctx.cond(tup["cond"])
    diff = (predictions(student, x_t, tup["t"], cond, e.batch_size)
            - predictions(teacher, x_t, tup["t"], cond, e.batch_size))
    mse = diff.pow(2).flatten(1).mean(1).double().numpy()
    bins = ctx.teacher.bins(tup["t"], e.timestep_bins)
    per_region = grouped(mse, tup["region"], index.num_regions)
    result = {
        "run_dir": str(run_dir), "policy": cfg.train.policy, "seed": cfg.seed, "steps": cfg.train.steps,
        "eval": {"seed": e.seed, "per_region": e.per_region, "per_group": e.per_group,
                 "per_split_group": e.per_split_group,
                 "sample_steps": e.sample_steps, "timestep_bins": e.timestep_bins},
        "regions": {"mse": [r["mean"] for r in per_region], "n": [r["n"] for r in per_region],
                    "composition": composition(index.region_of_prompt, pool.split, index.num_regions).tolist()},
        "groups": {},
    }
    # per split group: its own quota of held-out tuples (eval.per_split_group), the set the curves use
    curve = HeldoutCurve(cfg, ctx)
    group_mse = curve.per_sample(lambda x, t, c: student(x, t, **c.kwargs()).sample)
    gbins = ctx.teacher.bins(curve.t, e.timestep_bins)
    for g in np.unique(curve.group):
        sel = curve.group == g
        result["groups"][SPLIT_GROUPS[g]] = {
            "mse": mean_se(group_mse[sel]),
            "mse_by_timestep": [mean_se(group_mse[sel & (gbins == b)])["mean"] for b in range(e.timestep_bins)]}
    result["groups"]["all"] = {"mse": mean_se(mse),
                               "mse_by_timestep": [mean_se(mse[bins == b])["mean"] for b in range(e.timestep_bins)]}
    timings["mse_s"] = time.perf_counter() - t0

    # ---- samples, judge accuracy, Frechet distance, CLIP score, FID -----------------------------
    t0 = time.perf_counter()
    prompts = sample_prompts(cfg, pool)
    judge = _judge_for(cfg, pool)
    sd = _sd_metrics(cfg, log)
    result["eval"]["guidance_scale"] = e.guidance_scale
    grids, everything = {}, []
    for name, ids in prompts.items():
        teacher_img = _teacher_samples(cfg, ctx, ids, log)
        student_img = sample(cfg, ctx, student, ids)
        if sd["decode"] is not None:  # latents -> images with the pipeline's VAE
            teacher_img, student_img = sd["decode"](teacher_img), sd["decode"](student_img)
        entry = result["groups"].setdefault(name, {})
        entry.update(_sd_scores(sd, student_img, teacher_img, pool.text(ids), e.seed))
        everything.append((ids, student_img, teacher_img))
        entry["pixel_mse"] = mean_se((student_img - teacher_img).pow(2).flatten(1).mean(1).double().numpy())
        if judge is not None:
            from aria_hpc.worlds.shapes import ALL_COMBINATIONS

            labels = np.array([ALL_COMBINATIONS[c].labels() for c in pool.combination[ids]])
            for who, images in (("student", student_img), ("teacher", teacher_img)):
                correct = judge.predict(images) == labels
                entry[f"{who}_accuracy"] = mean_se(correct.mean(1))
                entry[f"{who}_all_correct"] = mean_se(correct.all(1).astype(np.float64))
            with torch.no_grad():
                entry["frechet"] = frechet_with_se(judge.features(student_img).double().numpy(),
                                                   judge.features(teacher_img).double().numpy(), seed=e.seed)
        grids[name] = (ids[:e.grid], teacher_img[:e.grid].numpy(), student_img[:e.grid].numpy())
    if sd["clip"] is not None or sd["fid"] is not None:  # over every sampled prompt as well
        ids, student_img, teacher_img = (np.concatenate([x[0] for x in everything]),
                                         *(torch.cat([x[i] for x in everything]) for i in (1, 2)))
        result["groups"]["all"].update(_sd_scores(sd, student_img, teacher_img, pool.text(ids), e.seed))
    timings["samples_s"] = time.perf_counter() - t0
    result["timings"] = timings

    _save_grids(run_dir / "eval_samples.npz", grids, pool)
    atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=1))
    if (run_dir / "pipeline" / "model_index.json").is_file():  # the exported pipeline's model card
        from aria_hpc.models.card import model_card

        atomic_write_text(run_dir / "pipeline" / "README.md", model_card(cfg, result))
    return result


def _sd_metrics(cfg: Config, log=print) -> dict:
    """The optional Stable Diffusion metrics' models (and the VAE decoder in latent mode). FID runs for
    a pipeline teacher: on eval.inception_weights, or unset, on the network the `fid` extra ships
    (without it, one line says how to get it); the shapes world has the judge's Frechet distance."""
    from aria_hpc.eval.sd_metrics import FID_EXTRA, ClipScorer, InceptionFeatures, LatentDecoder, shipped_inception_path
    from aria_hpc.models.pipeline import is_pipeline

    e = cfg.eval
    fid = None
    if e.inception_weights:
        fid = InceptionFeatures(e.inception_weights)
    elif is_pipeline(cfg.teacher.dir):
        if shipped_inception_path() is not None:
            fid = InceptionFeatures()
        else:
            log(f"eval: no FID (its Inception network is not installed): {FID_EXTRA}, or set "
                "eval.inception_weights to a local inception-2015-12-05.pt")
    return {"decode": LatentDecoder(cfg.bank.vae_dir) if cfg.bank.vae_dir else None,
            "clip": ClipScorer(e.clip_dir) if e.clip_dir else None, "fid": fid}


def _sd_scores(sd: dict, student_img: torch.Tensor, teacher_img: torch.Tensor, texts: list[str], seed: int) -> dict:
    from aria_hpc.eval.sd_metrics import fid

    out = {}
    if sd["clip"] is not None:
        out["student_clip_score"] = mean_se(sd["clip"](student_img, texts))
        out["teacher_clip_score"] = mean_se(sd["clip"](teacher_img, texts))
    if sd["fid"] is not None and len(texts) >= 2:
        out["fid_student_vs_teacher"] = fid(sd["fid"], student_img, teacher_img, seed)
    return out


def _judge_for(cfg: Config, pool):
    """The shapes-world judge when every prompt carries a combination label; None otherwise."""
    if (pool.combination < 0).any():
        return None
    from aria_hpc.worlds.judge import load_judge

    return load_judge(cfg.judge.dir)


def _save_grids(path: Path, grids: dict, pool) -> None:
    arrays = {}
    for name, (ids, teacher_img, student_img) in grids.items():
        arrays[f"{name}/prompt_ids"] = ids
        arrays[f"{name}/teacher"] = teacher_img.astype(np.float16)
        arrays[f"{name}/student"] = student_img.astype(np.float16)
        arrays[f"{name}/prompts"] = np.array(pool.text(ids), dtype=object).astype(str)
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, **arrays)


def result_lines(run_dir, result: dict) -> list[str]:
    """One evaluated run per split group: output MSE, judge accuracy of student and teacher, Frechet
    distance (what `aria-hpc eval` prints)."""
    lines = [f"{run_dir} ({result['policy']}, seed {result['seed']}, {result['steps']} steps)",
             f"{'group':>10} {'output MSE':>12} {'judge acc':>10} {'teacher acc':>12} {'Frechet':>9}"]
    for group, g in result["groups"].items():
        acc, tacc, fd = (g.get(k, {}).get("mean", float("nan")) for k in
                         ("student_accuracy", "teacher_accuracy", "frechet"))
        lines.append(f"{group:>10} {g['mse']['mean']:>12.5f} {acc:>10.3f} {tacc:>12.3f} {fd:>9.3f}")
    return lines
