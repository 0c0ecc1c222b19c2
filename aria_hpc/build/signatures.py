"""Teacher signatures: what the teacher does with each prompt, as the features of ARIA's regions
(`regions.features: teacher`; README "Regions from the teacher").

A prompt's signature is the teacher's response to a few fixed probe inputs, the same for every prompt:

    probe p = (timestep t_p = round(frac_p * (T - 1)), noise n_p from seed (regions.signature_seed, p))
    x_t = sqrt(1 - abar_t) * n_p                   (x0 = 0: the probe carries no image of its own)
    response_p = the spatial mean of block `regions.signature_block`'s output on (x_t, t_p, prompt)
                 (mid_block by default), or, with signature_block empty, the teacher's clean-image
                 estimate x0_hat (its prediction turned into x0 through its prediction type)
    signature = concat_p(response_p) @ R,  R ~ N(0, 1/dim), seeded; no projection when the
                concatenation has at most regions.signature_dim numbers

The inputs are the same for every prompt, so signatures differ only by what the teacher does with the
prompt. Why the block by default: measured on the study's selection regimes (docs/study/v4/
signatures.md), k-means of x0_hat groups prompts by background and position, which fill most pixels,
while the mid-block's channels, averaged over space, hold what the image is (a shape, a colour). The
projection is data-independent, so every shard is computed alone and a job array gives the
single-process result row for row.

Files: EMBED_DIR/signatures/shard-IIIII-of-NNNNN.h5, one per embedding shard (the same rows), with
`signature` (n, dim) float16 and attrs naming the pool, teacher, encoder and probe settings they
were computed from; written as `.partial` batch by batch and renamed when complete (resumable).

The sample path (`regions.signature_sample` > 0) computes signatures for a seeded sample of the
pool only and assigns every other prompt through a ridge map from its text embedding to the
signature (`fit_text_map`); the map's region agreement with the true signature is measured on a
part of the sample it was not fitted on.
"""

from __future__ import annotations

from aria_hpc.config import Config

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from aria_hpc.errors import UserError

SIGNATURE_FIX = "run `aria-hpc signatures CONFIG` (it builds the missing or damaged shards again)"
SIGNATURE_DIR = "signatures"


def probe_settings(cfg: Config) -> dict:
    rc = cfg.regions
    return {"probe_timesteps": [float(f) for f in rc.probe_timesteps], "probe_noises": int(rc.probe_noises),
            "signature_dim": int(rc.signature_dim), "signature_seed": int(rc.signature_seed),
            "signature_block": rc.signature_block}


def signature_paths(cfg: Config) -> list[Path]:
    from aria_hpc.conditioning.embeddings import shard_name

    root = Path(cfg.embed.dir) / SIGNATURE_DIR
    return [root / shard_name(i, cfg.embed.shards) for i in range(cfg.embed.shards)]


class Prober:
    """The teacher on the fixed probe inputs: signatures of batches of prompt ids."""

    def __init__(self, cfg: Config) -> None:
        from aria_hpc.conditioning.embeddings import EmbeddingStore
        from aria_hpc.context import conditioning_context
        from aria_hpc.fsio import directory_digest
        from aria_hpc.models.teacher import load_teacher

        self.teacher = load_teacher(cfg.teacher.dir)
        if self.teacher.time is not None:
            raise UserError(f"regions.features=teacher probes a DDPM teacher's clean-image estimates; "
                            f"{cfg.teacher.dir} is a flow-matching teacher: use regions.features=text")
        self.store = EmbeddingStore(cfg.embed.dir, cfg.embed.shards)
        self.ctx = conditioning_context(cfg, self.teacher, self.store)
        settings = probe_settings(cfg)
        unet, sched = self.teacher.unet, self.teacher.scheduler
        T = sched.config.num_train_timesteps
        shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        self.t = [int(round(f * (T - 1))) for f in settings["probe_timesteps"] for _ in range(settings["probe_noises"])]
        gen = torch.Generator()
        noise = torch.stack([torch.randn(shape, generator=gen.manual_seed(settings["signature_seed"] * 1000 + p))
                             for p in range(len(self.t))])
        abar = sched.alphas_cumprod[torch.tensor(self.t)].float().view(-1, 1, 1, 1)
        self.x_t = (1 - abar).sqrt() * noise  # x0 = 0: the probe carries no image of its own
        self.abar = abar
        self.block = settings["signature_block"]
        self._captured: dict[str, torch.Tensor] = {}
        if self.block:
            try:
                module = unet.get_submodule(self.block)
            except AttributeError:
                raise UserError(f"regions.signature_block: the teacher has no block '{self.block}' "
                                "(e.g. mid_block, down_blocks.1; empty = the clean-image estimate)") from None
            module.register_forward_hook(lambda _m, _i, out: self._captured.__setitem__(
                "block", out[0] if isinstance(out, tuple) else out))
            with torch.no_grad():  # the block's width: one probe forward on the null text
                null = self.ctx.null_cond()
                unet(self.x_t[:1], torch.tensor([self.t[0]]), **null.kwargs())
            width = len(self.t) * self._captured["block"].shape[1]
        else:
            width = len(self.t) * int(np.prod(shape))
        self.dim = min(width, settings["signature_dim"])
        rng = np.random.default_rng([settings["signature_seed"], 0x516])
        self.projection = None if width <= settings["signature_dim"] else torch.from_numpy(
            (rng.standard_normal((width, self.dim)) / np.sqrt(self.dim)).astype(np.float32))
        self.prediction = sched.config.prediction_type
        self.expect = {"pool_digest": self.store.pool.digest, "encoder_digest": self.store.encoder_digest,
                       "teacher_digest": directory_digest(self.teacher.path / "unet"),
                       "probe": json.dumps(settings, sort_keys=True)}
        self.forwards = 0

    @torch.no_grad()
    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """(n, dim) float32 signatures of prompt ids (the null text for -1)."""
        cond = self.ctx.cond(np.asarray(ids))
        n, parts = len(ids), []
        for p, t in enumerate(self.t):
            x_t = self.x_t[p:p + 1].expand(n, -1, -1, -1)
            out = self.teacher.unet(x_t, torch.full((n,), t, dtype=torch.long), **cond.kwargs()).sample.float()
            if self.block:
                parts.append(self._captured["block"].float().mean(dim=(2, 3)))
            else:
                parts.append(x0_estimate(out, x_t, self.abar[p], self.prediction).flatten(1))
        self.forwards += n * len(self.t)
        joined = torch.cat(parts, 1)
        return (joined if self.projection is None else joined @ self.projection).numpy()


def x0_estimate(pred: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean-image estimate from a prediction of the given type (epsilon, v_prediction, sample)."""
    a, s = abar.sqrt(), (1 - abar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - s * pred) / a.clamp_min(1e-4)
    if prediction_type == "v_prediction":
        return a * x_t - s * pred
    return pred


def shard_expectation(prober: Prober, index: int, shards: int) -> dict:
    from aria_hpc.conditioning.embeddings import shard_range

    start, stop = shard_range(len(prober.store.pool), index, shards)
    return {**prober.expect, "start": start, "stop": stop}


def complete_shard(path: Path, expect: dict) -> bool:
    """True if the shard exists, reads, and matches; a shard computed from another teacher, pool or
    probe is refused with the fields that differ; a damaged one is set aside (built again)."""
    from aria_hpc.conditioning.embeddings import complete_rows_shard

    return complete_rows_shard(path, expect, "teacher signature shard", SIGNATURE_FIX,
                               "was computed for another teacher, pool or probe",
                               "run `aria-hpc signatures CONFIG --rebuild`, or use another embed.dir")


def build_signature_shard(cfg: Config, index: int, prober: Prober | None = None,
                          progress: Callable[[int], None] | None = None) -> int:
    """Signatures of embedding shard `index`'s rows; resumes a partial shard. Returns teacher forwards."""
    from aria_hpc.conditioning.embeddings import write_rows_shard

    prober = prober or Prober(cfg)
    shards = cfg.embed.shards
    if not 0 <= index < shards:
        raise UserError(f"--shard {index} is not one of embed.shards={shards} (0..{shards - 1})")
    path = signature_paths(cfg)[index]
    expect = shard_expectation(prober, index, shards)
    if complete_shard(path, expect):
        return 0
    start, n = expect["start"], expect["stop"] - expect["start"]
    dim, batch = prober.dim, cfg.regions.signature_batch_size
    before = prober.forwards
    write_rows_shard(path, expect, {"signature": ((n, dim), np.float16, (max(1, min(batch, n)), dim))},
                     lambda a, b: {"signature": prober(np.arange(start + a, start + b)).astype(np.float16)},
                     batch, "signatures", progress=progress)
    return prober.forwards - before


def _shard_job(cfg: Config, index: int) -> int:
    return build_signature_shard(cfg, index)


def build_signatures(cfg: Config, executor: str | None = None, log: Callable[[str], None] = print) -> int:
    """Every signature shard (those complete and matching are kept): in this process, or one submitit
    array task per shard. Returns the teacher forwards spent."""
    if executor is None:
        prober = Prober(cfg)
        return sum(build_signature_shard(cfg, i, prober) for i in range(cfg.embed.shards))
    from aria_hpc.jobs import run_array

    return sum(run_array(cfg, executor, _shard_job, list(range(cfg.embed.shards)), "signatures", "signature",
                         "signatures of shard {index}", log))


def signature_rows(cfg: Config):
    """The signatures as a k-means row source (every shard checked complete and matching first)."""
    from aria_hpc.conditioning.embeddings import EmbeddingStore, PooledRows

    store = EmbeddingStore(cfg.embed.dir, cfg.embed.shards)
    paths = signature_paths(cfg)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"regions.features=teacher needs the teacher signatures, but {paths[0].parent} lacks "
                        f"{len(missing)} of {len(paths)} shards ({missing[0]}, ...): run `aria-hpc signatures CONFIG`")
    from aria_hpc.integrity import verify

    for path in paths:  # before any row reaches k-means (cached by stat)
        verify(path, "teacher signature shard", SIGNATURE_FIX)
    return PooledRows(store, "signature", paths, SIGNATURE_FIX)


def signature_identity(cfg: Config) -> dict:
    """What a teacher-feature region map is computed from (its attrs; part of the map's identity): the
    teacher's weights digest and the probe settings, as every signature shard records them."""
    from aria_hpc.fsio import directory_digest
    from aria_hpc.models.teacher import teacher_dir

    return {"features": "teacher", "teacher_digest": directory_digest(teacher_dir(cfg.teacher.dir) / "unet"),
            "probe": json.dumps(probe_settings(cfg), sort_keys=True), "signature_sample": cfg.regions.signature_sample}


# ---- the sample path: signatures of a seeded sample, a ridge map from the text embedding for the rest ----

def sample_ids(n: int, count: int, seed: int) -> np.ndarray:
    """The prompts whose signatures are computed on the sample path (seeded, sorted)."""
    return np.sort(np.random.default_rng([seed, 0x5A3]).choice(n, min(n, count), replace=False))


def fit_text_map(text: np.ndarray, signature: np.ndarray, ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares map (W, b) from text embeddings (n, D) to signatures (n, S), ridge-regularised:
    signature ~ text @ W + b."""
    mu_x, mu_y = text.mean(0), signature.mean(0)
    x, y = (text - mu_x).astype(np.float64), (signature - mu_y).astype(np.float64)
    gram = x.T @ x + ridge * len(x) * np.eye(x.shape[1])
    w = np.linalg.solve(gram, x.T @ y)
    return w.astype(np.float32), (mu_y - mu_x @ w).astype(np.float32)


class MappedRows:
    """Every prompt's signature as a row source: the computed one for the sampled prompts, the text
    map's prediction for the rest (read chunk by chunk from the embeddings)."""

    def __init__(self, pooled, w: np.ndarray, b: np.ndarray, ids: np.ndarray, signatures: np.ndarray) -> None:
        self.pooled, self.w, self.b, self.ids, self.signatures = pooled, w, b, ids, signatures

    def __len__(self) -> int:
        return len(self.pooled)

    def chunks(self, rows: int):
        for start, chunk in self.pooled.chunks(rows):
            out = chunk @ self.w + self.b
            a, z = np.searchsorted(self.ids, [start, start + len(chunk)])
            out[self.ids[a:z] - start] = self.signatures[a:z]
            yield start, out
